"""Command line: ``python -m finetune.run RECIPE.py [section.key=value ...] [--dry-run]``.

Loads the recipe file by path (it is Python: only run recipe files you trust), applies the overrides, prints
the resolved recipe and trains.
"""
from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
from pathlib import Path

from .overrides import apply_overrides
from .recipe import Recipe, RecipeError, recipe_to_dict

__all__ = ["load_recipe", "main"]


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Run a recipe file and return its module-level ``recipe`` with ``overrides`` applied.

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe file, e.g. recipes/smollm2_lora.py")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.learning_rate=1e-4")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue the run in training.output_dir (default: the newest runs/<name>-*) from its "
                             "latest complete checkpoint, or from CHECKPOINT")
    parser.add_argument("--dry-run", action="store_true",
                        help="tokenize, audit labels and count trainable parameters, then exit without training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("Resolved recipe:\n" + json.dumps(recipe_to_dict(recipe), indent=2, ensure_ascii=False))
    from .train import train  # heavy imports only after the recipe is known to be valid

    result = train(recipe, dry_run=args.dry_run, resume=args.resume)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
