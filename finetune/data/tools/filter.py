"""Self-instruct filtering: exact and near duplicates, unanswerable keywords, bad lengths, repetitive answers.

Near-duplicates follow self-instruct (Wang et al. 2022): an example is dropped when the ROUGE-L F-measure of its
prompt against the prompt of an example already kept reaches the threshold (0.7). The prompt is every user turn
joined by newlines (text-format data, which has no prompt, compares its answer). Alpaca inputs are compared on
their own: a near-duplicate must also have an input with ROUGE-L >= the threshold (or both none), because the same
instruction on another input is another example (self-instruct filters instructions before generating their
instances). Chinese is segmented with jieba as rouge-chinese does, minus punctuation tokens (so the "#" and "*" of
ADGEN-style prompts cannot make them alike); other text becomes lower-cased letter/digit words, which on ASCII is
exactly ``rouge_score``'s tokenizer (it drops other letters: "ũ"). The F-measure is ``rouge_score``'s, so the
numbers agree with its scorer.

The ROUGE-L machinery (tokens, LCS, the pruned index) is in ``rouge.py``.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from ..readers import DataError
from .convert import load, write_records
from .rouge import NearDuplicateIndex, SearchStats, rouge_l, tokenize

__all__ = ["DEFAULT_KEYWORDS", "FilterConfig", "FilterReport", "filter_file", "input_text", "prompt_text",
           "repetition"]

DEFAULT_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
                    "图片", "图像", "视频", "音频", "画图")
"""Self-instruct's blacklist (requests a text model cannot satisfy), plus the Chinese equivalents."""

_UNITS = re.compile(r"[\u4e00-\u9fff]|[^\W_\u4e00-\u9fff]+")


@dataclass(frozen=True)
class FilterConfig:
    """What to drop. Checks run cheapest first; an example is dropped for the first reason that applies."""

    rouge_threshold: float = 0.7
    """Drop when the prompt's ROUGE-L F against a kept prompt is at least this (self-instruct: 0.7)."""
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    """Drop prompts naming these; ASCII keywords match whole words, case-insensitively; others match anywhere."""
    min_chars: int = 1
    """Drop answers (all assistant turns) shorter than this many characters."""
    max_chars: int | None = None
    """Drop answers longer than this many characters (``None``: no limit)."""
    max_repeat: float = 0.5
    """Drop answers where n-grams seen more than once cover at least this share of the words (Han characters)."""
    repeat_n: int = 8
    """n-gram size for ``max_repeat``: long enough that code and lists that reuse short phrases are not hit."""

    def __post_init__(self):
        if not 0 < self.rouge_threshold <= 1:
            raise DataError(f"rouge_threshold={self.rouge_threshold} must be in (0, 1]")


@dataclass
class FilterReport(SearchStats):
    """What a filter run kept and dropped, and how much work the candidate pruning saved."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)


def prompt_text(messages: list[dict]) -> str:
    """The text compared for near-duplicates: the user turns, or the answer for text data (no prompt)."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return "\n".join(users) if users else answer_text(messages)


def input_text(messages: list[dict]) -> str:
    """The Alpaca inputs, compared on their own."""
    return "\n".join(m["input"] for m in messages if m.get("input"))


def answer_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] == "assistant")


def repetition(text: str, n: int = 8) -> float:
    """Share of words (Han characters count one each) covered by n-grams that occur more than once.

    Degenerate answers that loop ("好的好的好的…", a sentence over and over) score near 1; ordinary prose stays far
    below one half. Texts under ``2n`` words are too short to judge and score 0.
    """
    units = _UNITS.findall(text.lower())
    if len(units) < 2 * n:
        return 0.0
    grams = [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]
    seen = Counter(grams)
    covered = bytearray(len(units))
    for i, gram in enumerate(grams):
        if seen[gram] > 1:
            covered[i:i + n] = b"\x01" * n
    return sum(covered) / len(units)


def _cheap_reason(messages: list[dict], config: FilterConfig, keywords: re.Pattern | None) -> tuple[str, str] | None:
    prompt, answer = prompt_text(messages), answer_text(messages)
    if keywords is not None and (hit := keywords.search(prompt)):
        return "keyword", hit.group(0)
    size = sum(len(m["content"].strip()) for m in messages if m["role"] == "assistant")
    if size < config.min_chars:
        return "too short", f"{size} answer characters < {config.min_chars}"
    if config.max_chars is not None and size > config.max_chars:
        return "too long", f"{size} answer characters > {config.max_chars}"
    share = repetition(answer, config.repeat_n)
    if share >= config.max_repeat:
        return "repetition", f"{share:.0%} of the answer is repeated {config.repeat_n}-grams"
    return None


def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern | None:
    parts = [rf"\b{re.escape(k)}\b" if k.isascii() else re.escape(k) for k in keywords if k.strip()]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _same_input(a: tuple[str, list], b: tuple[str, list], threshold: float) -> bool:
    """Inputs match when both are absent, or their ROUGE-L reaches the threshold (equal if neither has words)."""
    if a[1] or b[1]:
        return rouge_l(a[1], b[1]) >= threshold
    return a[0].strip() == b[0].strip()


def dropped_path(out: str | Path) -> Path:
    """``clean.jsonl`` -> ``clean.dropped.jsonl``: the side file with each dropped record and its reason."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix else out.name}.dropped.jsonl")


def filter_file(src: str | Path, out: str | Path, fmt: str, config: FilterConfig = FilterConfig()) -> FilterReport:
    """Filter ``src`` into ``out`` (records written back as they came) and the dropped ones into the side file.

    Returns:
        Counts kept and dropped per reason, and the candidate-pruning counters.
    """
    loaded = load(src, fmt)
    dropped: list[tuple[int, dict]] = [(-1, {"reason": "empty answer", "where": where, "record": record})
                                       for where, record in loaded.unreadable]
    keywords, seen, survivors = _keyword_pattern(config.keywords), {}, []
    for i, ex in enumerate(loaded.examples):
        reason = _cheap_reason(ex.messages, config, keywords)
        key = json.dumps([(m["role"], " ".join(m["content"].split()), m.get("input", "")) for m in ex.messages],
                         ensure_ascii=False)
        if reason is None and key in seen:
            reason = "exact duplicate", f"same as {loaded.examples[seen[key]].where}"
        if reason is not None:
            dropped.append((i, {"reason": reason[0], "detail": reason[1], "where": ex.where, "record": ex.record}))
            continue
        seen[key] = i
        survivors.append(i)

    vocab: dict[str, int] = {}
    token_ids, inputs = {}, {}
    for i in tqdm(survivors, desc="tokenize", unit="ex", disable=None):
        messages = loaded.examples[i].messages
        token_ids[i] = [vocab.setdefault(w, len(vocab)) for w in tokenize(prompt_text(messages))]
        inputs[i] = (input_text(messages), tokenize(input_text(messages)))
    df = Counter(w for ids in token_ids.values() for w in set(ids))
    rank = {w: r for r, w in enumerate(sorted(df, key=lambda w: (df[w], w)))}
    index, kept_at, kept = NearDuplicateIndex(config.rouge_threshold, rank), [], []
    for i in tqdm(survivors, desc="near-duplicates", unit="ex", disable=None):
        ids, ex = token_ids[i], loaded.examples[i]
        hit = index.find(ids, lambda c: _same_input(inputs[i], inputs[kept_at[c]], config.rouge_threshold)) \
            if ids else None
        if hit is not None:
            other = loaded.examples[kept_at[hit[0]]]
            dropped.append((i, {"reason": "near-duplicate", "detail": f"ROUGE-L {hit[1]:.4f} with {other.where}",
                                "rouge_l": hit[1], "similar_to": other.record, "where": ex.where,
                                "record": ex.record}))
            continue
        if ids:
            index.add(ids)
            kept_at.append(i)
        kept.append(ex.record)

    write_records(out, kept)
    write_records(dropped_path(out), [entry for _, entry in sorted(dropped, key=lambda d: d[0])])
    return FilterReport(**dataclasses.asdict(index.stats), total=len(loaded.examples) + len(loaded.unreadable),
                        kept=len(kept), dropped=Counter(entry["reason"] for _, entry in dropped))
