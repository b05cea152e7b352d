"""Command line: ``python -m finetune.run RECIPE.py [section.key=value ...] [--dry-run]``.

Loads the recipe file by path (it is Python: only run recipe files you trust), applies the overrides, prints
the resolved recipe and trains.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import EXIT_INTERRUPTED, add_verbose_flag, guarded
from .recipe import recipe_to_dict
from .recipe_file import load_recipe

__all__ = ["load_recipe", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="recipe file, e.g. recipes/smollm2_lora.py")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.learning_rate=1e-4")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue the run in training.output_dir (default: the newest runs/<name>-*) from its "
                             "latest complete checkpoint, or from CHECKPOINT")
    parser.add_argument("--resume-weights-only", action="store_true",
                        help="with --resume: accept a checkpoint without its optimizer, schedule or RNG state "
                             "(what is missing starts afresh)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the model, the data, the settings and the output folder, tokenize, audit labels "
                             "and count trainable parameters, then exit without training")
    add_verbose_flag(parser)
    # Flags anywhere: before, between or after the overrides.
    args = parser.parse_intermixed_args(argv)
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        # `--resume training.x=1`: argparse took the override as the checkpoint; it is an override.
        args.overrides, args.resume = [*args.overrides, args.resume], True
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return guarded(lambda: _run(args), args.verbose)


def _run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.overrides)
    print("Resolved recipe:\n" + json.dumps(recipe_to_dict(recipe), indent=2, ensure_ascii=False))
    from .train import train  # heavy imports only after the recipe is known to be valid

    try:
        result = train(recipe, dry_run=args.dry_run, resume=args.resume or args.resume_weights_only,
                       resume_weights_only=args.resume_weights_only)
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM (finetune.runs.stopping.GracefulStop): stop now
        print("error: aborted by a second signal; checkpoints already written are kept (resume with --resume).",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_INTERRUPTED if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
