"""Checks a user runs before training or after exporting: ``python -m finetune.check template RECIPE_OR_RUN``.

``template``: for the first ``--n`` examples of ``--data`` (default: the recipe's eval file, else its training
file), the ids and labels training uses against ``apply_chat_template`` at inference and the chat template the GGUF
export embeds (see ``finetune/template_check.py``). Prints the first difference of each kind with its context and
exits 1 on any mismatch, 0 when everything agrees.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import UsageError, add_verbose_flag, guarded

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["template"], help="template: training ids and masks vs inference's")
    parser.add_argument("target", help="a recipe file (recipes/qwen3_lora.py) or a run folder (runs/...)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, as for finetune.run (recipe files only)")
    parser.add_argument("--data", help="examples to check (default: the recipe's eval data, else its train data)")
    parser.add_argument("--n", type=int, default=50, help="how many examples (default 50)")
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    return guarded(lambda: _template(args), args.verbose)


def _template(args: argparse.Namespace) -> int:
    from .models import resolve_model
    from .template_check import check_template

    if args.n < 1:
        raise UsageError(f"--n {args.n}: check at least one example.")
    target = Path(args.target)
    if target.is_dir():
        from .recipe import recipe_from_dict
        from .templates import template_from_dict

        if not (target / "recipe.json").exists():
            raise UsageError(f"{target} is neither a recipe file nor a run folder (no recipe.json).")
        if args.overrides:
            raise UsageError("overrides apply to recipe files; a run folder is checked as it was trained.")
        recipe = recipe_from_dict(json.loads((target / "recipe.json").read_text()))
        saved = template_from_dict(json.loads((target / "template.json").read_text()))
        resolved = resolve_model(recipe.model, saved, tokenizer_from=target, check_window=False)
    else:
        from .recipe_file import load_recipe

        recipe = load_recipe(target, args.overrides)
        resolved = resolve_model(recipe.model, recipe.data.template, check_window=False,
                                 thinking=recipe.data.thinking)
    data = args.data or recipe.data.eval or recipe.data.train
    result = check_template(resolved.tokenizer, resolved.template, recipe.data, data, args.n)
    print(f"template {resolved.template.name} of {resolved.path}, data {data}:")
    print(result.format())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
