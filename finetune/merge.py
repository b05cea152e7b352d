"""Merge a LoRA run into its base: ``python -m finetune.merge RUN_DIR OUT``.

Writes a standalone model (safetensors + config + tokenizer + template + recipe) that loads with
``AutoModelForCausalLM.from_pretrained(OUT)``. A QLoRA run is merged into the base loaded in its compute dtype
(dequantised, since 4-bit weights cannot absorb the update exactly); the logit difference against the adapter
over the 4-bit base it was trained on is measured and reported.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from .errors import UsageError, add_verbose_flag, guarded
from .inference import load_run
from .methods import get_method
from .models import load_model
from .paths import check_target
from .runs import write_run_files

__all__ = ["merge_run", "main"]

logger = logging.getLogger(__name__)

PROBE = "The quick brown fox jumps over the lazy dog. Fine-tuning changes a model's answers; merging must not."


def merge_run(run_dir: str | Path, out: str | Path, dtype: str | None = None, overwrite: bool = False) -> dict:
    """Merge the adapter of ``run_dir`` into its base, save to ``out`` and return the error report.

    Args:
        dtype: merge into a base loaded in this dtype instead of the run's (the GGUF export merges in float32,
            so a bf16 run's update is not rounded to bf16 before it is written as f16 or quantised).
        overwrite: write into ``out`` even when it holds files an earlier merge did not write.

    Raises:
        ValueError: when the run's method does not merge (only LoRA/DoRA/QLoRA adapters do).
        UsageError: ``out`` holds other files and ``overwrite`` is off.
    """
    from peft import PeftModel

    run_dir, out = Path(run_dir), Path(out)
    check_target(out, lambda path: (path / "merge_report.json").exists(), overwrite, "finetune.merge")
    # Exactly what was trained: the adapter over the (possibly 4-bit) base; in ``dtype`` when the merge is made in
    # it, so the probe below measures the merge, not bf16 rounding of the reference (1.2 logits on SmolLM2).
    trained = load_run(run_dir, dtype=dtype)
    if not get_method(trained.recipe.method.name).merges:
        raise UsageError(f"{run_dir}: only LoRA/QLoRA runs can be merged (this one used {trained.recipe.method.name}).")
    spec = trained.recipe.model
    dtype_spec = spec if spec.quantization is None else _with_dtype(spec, spec.quantization.compute_dtype)
    if dtype is not None:
        dtype_spec = _with_dtype(spec, dtype)
    base = load_model(trained.base_path, trained.family, dtype_spec, quantize=False)
    # On the device the trained model answers on (a run loads onto the GPU when there is one): one kind of kernel.
    merged = PeftModel.from_pretrained(base, run_dir).merge_and_unload().eval().to(_device(trained.model))

    probe = trained.tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        reference = trained.model(**probe.to(_device(trained.model))).logits.float().cpu()
        result = merged(**probe.to(_device(merged))).logits.float().cpu()
    diff = (reference - result).abs()
    agree = reference.argmax(-1) == result.argmax(-1)
    # Where the reference's best two logits are closer than twice the largest difference, rounding alone may
    # swap them (bf16 rounds differently with and without native instructions); elsewhere a swap is a bug.
    top2 = reference.topk(2, dim=-1).values
    decisive = (top2[..., 0] - top2[..., 1]) > 2 * diff.max()
    report = {"max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
              "top1_agreement": float(agree.float().mean()),
              "top1_agreement_decisive": float(agree[decisive].float().mean()) if decisive.any() else 1.0,
              "decisive_tokens": int(decisive.sum()),
              "quantized_base": spec.quantization is not None, "probe_tokens": int(probe["input_ids"].shape[1])}

    merged.save_pretrained(out)
    trained.tokenizer.save_pretrained(out)
    write_run_files(out, trained.template, trained.recipe)
    (out / "merge_report.json").write_text(json.dumps(report, indent=2))
    return report


def _with_dtype(spec, dtype: str):
    import dataclasses

    return dataclasses.replace(spec, dtype=dtype, quantization=None)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a LoRA or QLoRA run folder")
    parser.add_argument("out", help="where to write the merged model")
    parser.add_argument("--overwrite", action="store_true", help="write over files already in OUT")
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return guarded(lambda: _merge(args), args.verbose)


def _merge(args: argparse.Namespace) -> int:
    report = merge_run(args.run_dir, args.out, overwrite=args.overwrite)
    kind = "QLoRA (dequantised base)" if report["quantized_base"] else "LoRA"
    print(f"Merged {kind} run into {args.out}: max |logit diff| {report['max_abs_logit_diff']:.3g}, mean "
          f"{report['mean_abs_logit_diff']:.3g}, top-1 agreement {report['top1_agreement']:.1%} "
          f"on {report['probe_tokens']} probe tokens (merge_report.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
