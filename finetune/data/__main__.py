"""Data tools: ``python -m finetune.data {filter,mix,convert,stats} ...`` (``--help`` on each for its options).

    filter  IN OUT [--format alpaca]       drop duplicates, near-duplicates, unanswerable, bad-length, looping answers
    mix     OUT --source FILE:FMT[:N|:R]   combine data sets into one format, by counts or shares, tagged by source
    convert IN OUT --from FMT --to FMT     between alpaca, sharegpt, firefly, adgen and messages, losslessly or --lossy
    stats   IN --format FMT [--recipe R]   counts, lengths, sources; token lengths with a recipe's tokenizer
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import add_verbose_flag, guarded
from ..paths import check_target
from .formats import format_names, writable_format_names
from .readers import DataError

__all__ = ["main"]


def _check_output(args) -> None:
    """A data file is never replaced unless asked: an earlier output cannot be told from a user's own data."""
    outputs = [args.output]
    if args.command == "filter":
        from .tools.filter import dropped_path

        outputs.append(dropped_path(args.output))
    for output in outputs:
        check_target(output, lambda path: False, args.overwrite, f"finetune.data {args.command}")


def _filter(args) -> None:
    _check_output(args)
    from .tools.filter import DEFAULT_KEYWORDS, FilterConfig, dropped_path, filter_file

    keywords = DEFAULT_KEYWORDS if args.keywords is None else tuple(k.strip() for k in args.keywords.split(","))
    config = FilterConfig(rouge_threshold=args.rouge_threshold, keywords=keywords, min_chars=args.min_chars,
                          max_chars=args.max_chars, max_repeat=args.max_repeat)
    report = filter_file(args.input, args.output, args.format, config)
    print(f"kept {report.kept:,} of {report.total:,} examples -> {args.output}")
    print(f"dropped {sum(report.dropped.values()):,} -> {dropped_path(args.output)}")
    for reason, count in report.dropped.most_common():
        print(f"  {reason:<16} {count:>8,}")
    avoided = 1 - report.lcs / report.pairs if report.pairs else 0.0
    print(f"near-duplicate search (ROUGE-L >= {config.rouge_threshold}): {report.pairs:,} prompt pairs, "
          f"{report.candidates:,} found by the index, {report.lcs:,} exact LCS computed ({avoided:.2%} avoided)")


def _mix(args) -> None:
    _check_output(args)
    from .tools.mix import mix_files, parse_source

    rows, lost = mix_files([parse_source(s) for s in args.source], args.output, args.format, args.seed, args.total,
                           args.lossy)
    print(f"wrote {sum(r.taken for r in rows):,} examples ({args.format}, seed {args.seed}) -> {args.output}")
    for row in rows:
        note = "  (with replacement: more asked than available)" if row.with_replacement else ""
        print(f"  {row.name:<24} {row.fmt:<9} {row.taken:>8,} of {row.size:,}{note}")
    for what, count in lost.items():
        print(f"  lossy: dropped {what} in {count:,} examples")


def _convert(args) -> None:
    _check_output(args)
    from .tools.convert import convert_file

    counts = convert_file(args.input, args.output, args.src, args.dst, args.lossy)
    print(f"wrote {counts.pop('written'):,} records ({args.src} -> {args.dst}) -> {args.output}")
    skipped = counts.pop("skipped")
    if skipped:
        print(f"  skipped {skipped:,} records with no answer")
    for what, count in counts.items():
        print(f"  lossy: dropped {what} in {count:,} examples")


def _stats(args) -> None:
    from .tools.stats import compute_stats, format_stats, plot_histogram

    recipe = model = None
    if args.recipe:
        from ..models import resolve_model
        from ..recipe_file import load_recipe

        recipe = load_recipe(args.recipe)
        model = resolve_model(recipe.model, recipe.data.template, check_window=False, thinking=recipe.data.thinking)
    fmt = args.format or (recipe.data.format if recipe else None)
    if fmt is None:
        raise DataError("stats needs --format (or a --recipe whose data.format is used)")
    stats = compute_stats(args.input, fmt, recipe, model)
    print(format_stats(stats))
    if args.png:
        print(f"histogram -> {plot_histogram(stats, args.png)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("filter", help="self-instruct style filtering; dropped records go to OUT's .dropped.jsonl")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--format", default="alpaca", choices=format_names())
    p.add_argument("--rouge-threshold", type=float, default=0.7,
                   help="drop when the prompt's ROUGE-L F against a kept prompt is at least this (default 0.7)")
    p.add_argument("--keywords", default=None,
                   help="comma-separated; replaces the default list (self-instruct's image, graph, file, ... "
                        "plus 图片, 图像, 视频, 音频, 画图); '' disables")
    p.add_argument("--min-chars", type=int, default=1, help="shortest answer kept, in characters (default 1)")
    p.add_argument("--max-chars", type=int, default=None, help="longest answer kept, in characters (default none)")
    p.add_argument("--max-repeat", type=float, default=0.5,
                   help="drop answers whose repeated 8-grams cover at least this share of the words (default 0.5)")
    p.set_defaults(run=_filter)

    p = commands.add_parser("mix", help="combine data sets into one format, tagged with a source field")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--source", action="append", required=True, metavar="FILE:FORMAT[:N|:RATIO]",
                   help="repeat per data set; N = examples, RATIO (with a point, e.g. 0.3) = share of the output; "
                        "no amount = all")
    p.add_argument("--format", default="messages", choices=writable_format_names(),
                   help="output format (default messages)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--total", type=int, default=None, help="output size when every source is a RATIO")
    p.add_argument("--lossy", action="store_true", help="drop what --format cannot hold instead of failing")
    p.set_defaults(run=_mix)

    p = commands.add_parser("convert", help="convert between formats, losslessly unless --lossy")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.add_argument("--from", dest="src", required=True, choices=writable_format_names())
    p.add_argument("--to", dest="dst", required=True, choices=writable_format_names())
    p.add_argument("--lossy", action="store_true", help="drop what the target cannot hold, and count it")
    p.set_defaults(run=_convert)

    p = commands.add_parser("stats", help="counts and lengths; token lengths with --recipe")
    p.add_argument("input", metavar="IN")
    p.add_argument("--format", default=None, choices=format_names(), help="default: the recipe's data.format")
    p.add_argument("--recipe", default=None, help="recipe file whose model tokenizer and template count tokens")
    p.add_argument("--png", default=None, help="write a length histogram here")
    p.set_defaults(run=_stats)
    for name, command in commands.choices.items():
        add_verbose_flag(command)
        if name != "stats":  # the commands that write OUT
            command.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one data tool; returns the exit status (2 for a data, recipe or argument error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return guarded(lambda: args.run(args) or 0, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
