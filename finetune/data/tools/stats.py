"""Data statistics: sizes, multi-turn share, sources, lengths in characters and, given a recipe, in tokens.

Token lengths use the recipe's own tokenizer, template and system prompt through the training
:class:`~finetune.data.tokenize.Encoder`, with no length limit, so "over max_length" counts exactly the examples
that ``data.overlong`` will truncate or drop, and the supervised fraction is the share of tokens that carry loss.
"""
from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path

from .convert import load

__all__ = ["compute_stats", "describe", "format_stats", "plot_histogram"]

logger = logging.getLogger(__name__)


def describe(values: list[int]) -> dict:
    """Min, mean, median, 95th percentile (nearest rank) and max; enough to pick max_length and spot outliers."""
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0, "p95": 0, "max": 0}
    ordered = sorted(values)

    def rank(q: int) -> int:
        return ordered[max(0, -(-q * len(ordered) // 100) - 1)]

    return {"min": ordered[0], "mean": round(sum(ordered) / len(ordered), 2), "median": rank(50), "p95": rank(95),
            "max": ordered[-1]}


def compute_stats(path: str | Path, fmt: str, recipe=None, model=None) -> dict:
    """Statistics of one data file.

    Args:
        path: The data file.
        fmt: Its format (any the readers take).
        recipe: A :class:`~finetune.recipe.Recipe`: its data options, and its max_length for the token counts.
        model: The recipe's :class:`~finetune.models.ResolvedModel`; adds token lengths with its tokenizer and
            template.

    Returns:
        A JSON-ready dict; the raw lists ``char_lengths`` and ``tokens.token_lengths`` feed the histogram.
    """
    options = {}
    if recipe is not None:
        options = {"prompt_column": recipe.data.prompt_column, "response_column": recipe.data.response_column,
                   "text_column": recipe.data.text_column}
    loaded = load(path, fmt, **options)
    conversations = [ex.messages for ex in loaded.examples]
    answers = [sum(len(m["content"]) for m in c if m["role"] == "assistant") for c in conversations]
    prompts = [sum(len(m["content"]) + len(m.get("input", "")) for m in c if m["role"] != "assistant")
               for c in conversations]
    multi = sum(1 for c in conversations if sum(m["role"] == "assistant" for m in c) > 1)
    stats: dict = {"file": str(path), "format": fmt, "examples": len(conversations),
                   "skipped": dict(loaded.skipped), "multi_turn": multi,
                   "multi_turn_share": round(multi / len(conversations), 4) if conversations else 0.0,
                   "answer_chars": describe(answers), "prompt_chars": describe(prompts),
                   "char_lengths": [a + p for a, p in zip(answers, prompts)]}
    if any("source" in ex.record for ex in loaded.examples):
        stats["sources"] = dict(Counter(str(ex.record.get("source", "(none)")) for ex in loaded.examples).most_common())
    if recipe is not None and model is not None:
        stats["tokens"] = token_stats(conversations, recipe, model.tokenizer, model.template)
    return stats


def token_stats(conversations: list[list[dict]], recipe, tokenizer, template) -> dict:
    """Token lengths as training would see them, before truncation."""
    from ..tokenize import Encoder

    encoder = Encoder(tokenizer, template, max_length=sys.maxsize)
    system = recipe.data.system
    if system is not None:
        conversations = [c if c[0]["role"] == "system" else [{"role": "system", "content": system}] + c
                         for c in conversations]
    lengths, supervised = [], []
    for start in range(0, len(conversations), 256):
        batch = encoder({"messages": conversations[start:start + 256]})
        lengths += batch["num_tokens"]
        supervised += batch["num_supervised"]
    limit = recipe.model.max_length
    over = sum(n > limit for n in lengths)
    return {"model": str(recipe.model.path), "template": template.name, "max_length": limit,
            "lengths": describe(lengths), "total": sum(lengths),
            "supervised_fraction": round(sum(supervised) / max(1, sum(lengths)), 4),
            "over_max_length": over, "over_max_length_share": round(over / max(1, len(lengths)), 4),
            "token_lengths": lengths}


def plot_histogram(stats: dict, png: str | Path) -> Path:
    """Histogram of token lengths (characters, prompt + answer, without a recipe), with max_length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = stats.get("tokens")
    if tokens:
        values, label = tokens["token_lengths"], f"tokens ({tokens['model']}, template {tokens['template']})"
    else:
        values, label = stats["char_lengths"], "characters (prompt + answer)"
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=min(50, max(1, len(set(values)))), color="tab:blue")
    if tokens:
        ax.axvline(tokens["max_length"], color="tab:red", linestyle="--",
                   label=f"max_length {tokens['max_length']} ({tokens['over_max_length']} over)")
        ax.legend()
    ax.set(xlabel=label, ylabel="examples", title=f"{Path(stats['file']).name}: {stats['examples']} examples")
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def format_stats(stats: dict) -> str:
    """The report as the CLI prints it."""
    lines = [f"{stats['file']} ({stats['format']}): {stats['examples']} examples, "
             f"{stats['multi_turn']} multi-turn ({stats['multi_turn_share']:.1%})"]
    if stats["skipped"]:
        lines.append("skipped: " + ", ".join(f"{k} {v}" for k, v in stats["skipped"].items()))
    for name, key in (("answer chars", "answer_chars"), ("prompt chars", "prompt_chars")):
        lines.append(f"{name:>13}: " + "  ".join(f"{k} {v}" for k, v in stats[key].items()))
    if "sources" in stats:
        lines.append("sources: " + ", ".join(f"{k} {v}" for k, v in stats["sources"].items()))
    tokens = stats.get("tokens")
    if tokens:
        lines.append(f"{'tokens':>13}: " + "  ".join(f"{k} {v}" for k, v in tokens["lengths"].items())
                     + f"  total {tokens['total']:,}  (model {tokens['model']}, template {tokens['template']})")
        lines.append(f"supervised fraction {tokens['supervised_fraction']:.1%}; "
                     f"{tokens['over_max_length']} examples ({tokens['over_max_length_share']:.1%}) exceed "
                     f"max_length {tokens['max_length']}")
    return "\n".join(lines)
