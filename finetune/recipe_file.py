"""Reading a recipe file: ``recipe = Recipe(...)`` in a Python file, plus ``section.key=value`` overrides.

Below every command line (``finetune.run``, ``finetune.data stats --recipe``), so each reads recipes the same way.
"""
from __future__ import annotations

import runpy
from pathlib import Path

from .overrides import apply_overrides
from .recipe import Recipe, RecipeError

__all__ = ["load_recipe"]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Run a recipe file and return its module-level ``recipe`` with ``overrides`` applied.

    The file is Python: only run recipe files you trust.

    Raises:
        RecipeError: when the file is missing or defines no ``Recipe`` named ``recipe``.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} not found; recipes live in recipes/, e.g. recipes/smollm2_lora.py")
    namespace = runpy.run_path(str(path))
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"{path} must define `recipe = Recipe(...)` at module level (found {type(recipe).__name__}).")
    return apply_overrides(recipe, list(overrides))
