"""Loading a finished run for inference: base model + adapter or prefix, tokenizer, and the training template."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .methods.ptuning import PREFIX_CONFIG, load_prefix_model
from .models import Family, load_model, load_tokenizer, resolve_family, resolve_model_path
from .recipe import Recipe, recipe_from_dict
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


def load_run(run_dir: str | Path, base: bool = False) -> LoadedRun:
    """Load a run folder written by ``finetune.run``.

    Args:
        run_dir: the run folder (or one of its ``checkpoint-N`` folders).
        base: load the untrained base model instead (same tokenizer and template), for baselines.

    Raises:
        FileNotFoundError: when the folder lacks ``recipe.json`` / ``template.json`` (not a finetune run).
    """
    run_dir = Path(run_dir)
    for name in ("recipe.json", "template.json"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} has no {name}: not a finetune run folder (or an incomplete one).")
    recipe = recipe_from_dict(json.loads((run_dir / "recipe.json").read_text()))
    template = template_from_dict(json.loads((run_dir / "template.json").read_text()))
    path = resolve_model_path(recipe.model.path)
    family = resolve_family(recipe.model, path)
    tokenizer = load_tokenizer(run_dir, family)
    full_run = recipe.method.name == "full" and not base
    model = load_model(run_dir if full_run else path, family, recipe.model)
    if not (base or full_run):  # else the weights loaded are already the ones asked for
        if (run_dir / PREFIX_CONFIG).exists():
            model = load_prefix_model(model, run_dir)
        else:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, run_dir)
    return LoadedRun(model.eval(), tokenizer, template, recipe, run_dir, path, family)
