"""A run folder in, a GGUF file and an Ollama Modelfile out: check, merge, write, describe."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from ..models import resolve_family, resolve_model_path
from ..paths import check_target
from ..recipe import recipe_from_dict
from ..templates import template_from_dict
from .chat_template import PromptFormat, jinja_chat_template
from .checks import GGUF_ARCHITECTURES, ExportRefused, check_exportable, quant_type
from .gguf_file import write_gguf
from .modelfile import write_modelfile
from .vocab import add_tokenizer

__all__ = ["export_run"]

logger = logging.getLogger(__name__)


def export_run(run_dir: str | Path, out: str | Path, quant: str = "f16", overwrite: bool = False) -> dict:
    """Export a run whose method merges (LoRA/DoRA/QLoRA: merged first) or whose folder holds the whole model (full
    fine-tuning) to ``out`` (GGUF) and a Modelfile.

    Returns:
        A report: tensor types, file size, the merge's logit error (adapter runs), and the Modelfile path or the
        reason there is none.

    Raises:
        ExportRefused: when the run, its family or ``quant`` cannot be exported (the message says what to do).
    """
    run_dir, out = Path(run_dir), Path(out)
    # An earlier export is replaced; any other file is not (a GGUF file starts with its magic, a Modelfile we wrote
    # names its GGUF file).
    check_target(out, lambda path: path.is_file() and path.open("rb").read(4) == b"GGUF", overwrite,
                 "finetune.export")
    check_target(out.with_suffix(".Modelfile"), lambda path: f"FROM ./{out.name}" in path.read_text(errors="replace"),
                 overwrite, "finetune.export")
    qtype = quant_type(quant)
    recipe, template = _read_run(run_dir)
    base_path = resolve_model_path(recipe.model.path)
    family = resolve_family(recipe.model, base_path)
    from ..methods import get_method  # imported late, as merge_run below: peft prints bitsandbytes noise on import

    method = get_method(recipe.method.name)
    check_exportable(recipe, family.name, method)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        if method.weights_in_run:
            model_dir, merge_report = run_dir, None
        else:
            from ..merge import merge_run

            model_dir = Path(tmp) / "merged"
            merge_report = merge_run(run_dir, model_dir, dtype="float32")  # every GGUF type is <= f32
        report = _write(model_dir, out, qtype, recipe, template, (run_dir, base_path),
                        GGUF_ARCHITECTURES[family.name])
    return {**report, "merge": merge_report}


def _read_run(run_dir: Path):
    for name in ("recipe.json", "template.json"):
        if not (run_dir / name).exists():
            raise ExportRefused(f"{run_dir} has no {name}: not a finetune run folder (or an incomplete one)")
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    return recipe, template_from_dict(json.loads((run_dir / "template.json").read_text()))


def _write(model_dir: Path, out: Path, qtype, recipe, template, tokenizer_dirs: tuple[Path, ...], arch) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fmt = PromptFormat.for_tokenizer(template, tokenizer, recipe.data.system)
    chat_template = jinja_chat_template(fmt, getattr(tokenizer, "chat_template", None))
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]

    def tokenizer_keys(writer):
        add_tokenizer(writer, model_dir, tokenizer, vocab_size, add_bos=bool(fmt.bos), chat_template=chat_template,
                      sentencepiece_dirs=(model_dir, *tokenizer_dirs))

    report = write_gguf(model_dir, out, qtype, recipe.name, tokenizer_keys, rope=_rope(recipe), arch=arch)
    try:
        report["modelfile"] = str(write_modelfile(out, fmt))
    except ExportRefused as reason:  # the GGUF file is still right for llama.cpp / LM Studio
        logger.warning("No Ollama Modelfile: %s", reason)
        report["modelfile"], report["modelfile_refused"] = None, str(reason)
    return report


def _rope(recipe):
    spec = recipe.model
    return {"rope_type": spec.rope_scaling, "factor": spec.rope_factor} if spec.rope_scaling else None
