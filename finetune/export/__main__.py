"""``python -m finetune.export RUN_DIR OUT.gguf [--quant TYPE]``: a run as a GGUF file plus an Ollama Modelfile."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import add_verbose_flag, guarded
from .checks import QUANT_TYPES, ExportRefused


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("run_dir", help="a run folder (LoRA, DoRA, QLoRA or full fine-tuning of a Llama, Mistral, "
                        "Qwen2, Qwen3 or Phi-3 model)")
    parser.add_argument("out", help="the GGUF file to write; NAME.Modelfile is written beside it")
    parser.add_argument("--quant", default="f16", metavar="TYPE",
                        help=f"type of the weight matrices: {', '.join(QUANT_TYPES)} (default f16)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT (and its Modelfile) whatever they are")
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # Reading a recipe imports peft, whose bitsandbytes import warns about an optional CPU kernel: noise here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from .pipeline import export_run

    def export() -> int:
        try:
            _print_report(args, export_run(args.run_dir, args.out, args.quant, overwrite=args.overwrite))
        except ExportRefused as reason:
            raise ExportRefused(f"cannot export {args.run_dir}: {reason}") from None
        return 0

    return guarded(export, args.verbose)


def _print_report(args, report: dict) -> None:
    types = ", ".join(f"{n} {t}" for t, n in sorted(report["tensor_types"].items()))
    print(f"Wrote {args.out}: {report['bytes'] / 2**20:.1f} MiB, {report['tensors']} tensors ({types})")
    if report["merge"]:
        merge = report["merge"]
        print(f"Merged the adapter first: max |logit diff| {merge['max_abs_logit_diff']:.3g}, top-1 agreement "
              f"{merge['top1_agreement']:.1%} on {merge['probe_tokens']} probe tokens")
    if report["modelfile"]:
        print(f"Ollama: ollama create NAME -f {report['modelfile']} && ollama run NAME")
    else:
        print(f"No Ollama Modelfile: {report['modelfile_refused']}")
    print(f"llama.cpp: llama-cli -m {args.out} --jinja  (the trained template is the file's chat template)")


if __name__ == "__main__":
    sys.exit(main())
