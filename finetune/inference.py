"""Loading a finished run for inference: base model + what the method trained, tokenizer, and the training
template."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .methods import get_method
from .models import Family, load_model, resolve_model
from .models.loading import quantized_device
from .recipe import Recipe, recipe_from_dict
from .safetensors_check import check_safetensors_in
from .templates import template_from_dict

__all__ = ["LoadedRun", "load_run"]


@dataclass
class LoadedRun:
    """Everything needed to query a trained run the way it was trained."""

    model: object
    tokenizer: object
    template: object
    recipe: Recipe
    path: Path
    base_path: Path
    """Folder of the base model the run was trained from."""
    family: Family


def load_run(run_dir: str | Path, base: bool = False, dtype: Optional[str] = None) -> LoadedRun:
    """Load a run folder written by ``finetune.run``.

    Args:
        run_dir: the run folder (or one of its ``checkpoint-N`` folders).
        base: load the untrained base model instead (same tokenizer and template), for baselines.
        dtype: the base weights' dtype when not the recipe's ``model.dtype`` (``float32`` for a reference).

    Raises:
        FileNotFoundError: when the folder lacks ``recipe.json`` / ``template.json`` (not a finetune run).
        CorruptFileError: a weights file of the run is damaged.
    """
    run_dir = Path(run_dir)
    for name in ("recipe.json", "template.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} has no {name}: not a finetune run folder (or an incomplete one).")
    check_safetensors_in(run_dir)  # a truncated copy names itself, not a SafetensorError deep in the load
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    if dtype:
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, dtype=dtype))
    template = template_from_dict(json.loads((run_dir / "template.json").read_text()))
    resolved = resolve_model(recipe.model, template, tokenizer_from=run_dir, check_window=False)
    method = get_method(recipe.method.name)
    model = load_model(run_dir if method.weights_in_run and not base else resolved.path, resolved.family, recipe.model)
    if not base:
        model = method.load(model, run_dir)
    if recipe.model.quantization is None:  # a 4-bit base was built on its device already
        model = model.to(quantized_device())  # the GPU when there is one: chat, evaluate and serve run there
    return LoadedRun(model.eval(), resolved.tokenizer, template, recipe, run_dir, resolved.path, resolved.family)
