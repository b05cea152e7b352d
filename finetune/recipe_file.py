"""Reading a recipe file: ``recipe = Recipe(...)`` in a Python file, plus ``section.key=value`` overrides.

Below every command line (``finetune.run``, ``finetune.data stats --recipe``), so each reads recipes the same way.
"""
from __future__ import annotations

import json
import runpy
import traceback
from pathlib import Path

from .overrides import apply_overrides
from .recipe import Recipe, RecipeError, recipe_from_dict

__all__ = ["load_recipe"]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Run a recipe file and return its module-level ``recipe`` with ``overrides`` applied.

    The file is Python: only run recipe files you trust. A run folder's ``recipe.json`` is read as data instead
    (what a run was trained with, so ``python -m finetune.run runs/X/recipe.json training.output_dir=runs/X
    --resume`` continues it without its recipe file).

    Raises:
        RecipeError: when the file is missing, raises (the message gives its line), or defines no ``Recipe``
            named ``recipe``.
    """
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path} is a folder; give a recipe file in it, e.g. {path / 'smollm2_lora.py'} (a run "
                          "folder is resumed with --resume, checked with finetune.check).")
    if not path.is_file():
        raise RecipeError(f"Recipe file {path} not found; recipes live in recipes/, e.g. recipes/smollm2_lora.py")
    if path.suffix == ".json":
        return apply_overrides(_recipe_json(path), list(overrides))
    try:
        namespace = runpy.run_path(str(path))
    except SyntaxError as err:
        raise RecipeError(f"{path}:{err.lineno}: {err.msg}; the recipe file is not valid Python.") from None
    except Exception as err:  # noqa: BLE001 - anything a recipe file's own code raises is the user's to fix
        kind = "" if isinstance(err, RecipeError) else f"{type(err).__name__}: "  # a RecipeError says it all
        raise RecipeError(f"{path}:{_line_in(path, err)}: {kind}{err}") from None
    recipe = namespace.get("recipe")
    if not isinstance(recipe, Recipe):
        raise RecipeError(f"{path} must define `recipe = Recipe(...)` at module level (found {type(recipe).__name__}).")
    return apply_overrides(recipe, list(overrides))


def _recipe_json(path: Path) -> Recipe:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return recipe_from_dict(record)
    except ValueError as err:  # bad JSON, or a field a Recipe refuses (RecipeError is a ValueError)
        raise RecipeError(f"{path}: {err}") from None
    except (KeyError, TypeError) as err:
        raise RecipeError(f"{path} is not a run's recipe.json ({type(err).__name__}: {err}).") from None


def _line_in(path: Path, err: BaseException) -> str:
    """The line of the recipe file the error came from (its last frame in that file)."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return str(frames[-1].lineno) if frames else "?"
