"""Mixing data sets of different formats into one file, by example counts or by shares of the output.

Every source is read through the readers and written in one format (``messages`` by default, which holds
everything the others can), with a ``source`` field naming the file it came from, so a later ``stats`` can count
per source and a bad batch can be traced back. Sampling is seeded and without replacement; a source asked for
more examples than it has is taken whole and topped up with replacement, which is reported, never hidden.
"""
from __future__ import annotations

import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..formats import writable_format_names
from ..readers import DataError
from .convert import carry_extras, load, to_record, write_records

__all__ = ["MixRow", "Source", "mix_files", "parse_source", "plan_counts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One ``--source FILE:FORMAT[:N|:RATIO]``: take ``count`` examples, a ``ratio`` of the output, or all."""

    path: str
    fmt: str
    count: int | None = None
    ratio: float | None = None


@dataclass
class MixRow:
    """What was taken from one source."""

    name: str
    fmt: str
    size: int
    taken: int
    with_replacement: bool


def parse_source(spec: str) -> Source:
    """Parse ``FILE:FORMAT``, ``FILE:FORMAT:N`` (an integer: examples) or ``FILE:FORMAT:0.3`` (a share of the output).

    Raises:
        ValueError: for an unknown format or an amount that is neither a positive integer nor a share in (0, 1].
    """
    head, _, last = spec.rpartition(":")
    amount = None
    if last not in writable_format_names():
        amount, (head, _, last) = last, head.rpartition(":")
    if not head or last not in writable_format_names():
        raise DataError(f"--source {spec!r}: expected FILE:FORMAT[:N|:RATIO] with FORMAT one of "
                        f"{', '.join(writable_format_names())}")
    if amount is None:
        return Source(head, last)
    if re.fullmatch(r"\d+", amount) and int(amount) > 0:
        return Source(head, last, count=int(amount))
    try:
        ratio = float(amount)
    except ValueError:
        ratio = -1.0
    if not 0 < ratio <= 1 or "." not in amount:
        raise DataError(f"--source {spec!r}: {amount!r} must be a number of examples (e.g. 500) or a share of the "
                        "output in (0, 1] written with a point (e.g. 0.3)")
    return Source(head, last, ratio=ratio)


def plan_counts(sources: list[Source], sizes: list[int], total: int | None = None) -> list[int]:
    """How many examples to take from each source.

    Sources with a count (or no amount: all of it) are fixed; the ratio sources then fill their shares of the
    output, T = fixed / (1 - sum of ratios). When every source is a ratio the ratios must sum to 1 and T is
    ``total``, or else the largest output that needs no source repeated.

    Raises:
        ValueError: when the shares cannot add up (sum over 1, or not 1 with nothing fixed), or ``total`` is given
            with fixed sources.
    """
    counts = [s.count if s.count is not None else (size if s.ratio is None else 0) for s, size in zip(sources, sizes)]
    shares = [(i, s.ratio) for i, s in enumerate(sources) if s.ratio is not None]
    if not shares:
        return counts
    fixed, share = sum(counts), sum(r for _, r in shares)
    if fixed:
        if total is not None or share >= 1:
            raise DataError(f"ratios sum to {share:g} next to fixed-size sources; they must sum to less than 1 "
                            "(the fixed sources fill the rest), and --total cannot be combined with fixed sizes")
        total = round(fixed / (1 - share))
    else:
        if abs(share - 1) > 1e-6:
            raise DataError(f"ratios sum to {share:g}; when every source is a ratio they must sum to 1")
        total = total if total is not None else min(math.floor(sizes[i] / r + 1e-9) for i, r in shares)
    scale = total if fixed else total / share  # all-ratio shares are normalised to sum to exactly 1
    raw = [(scale * r, i) for i, r in shares]
    for value, i in raw:
        counts[i] = math.floor(value)
    left = total - sum(counts)
    for _, i in sorted(raw, key=lambda v: (-(v[0] - math.floor(v[0])), v[1]))[:max(left, 0)]:
        counts[i] += 1
    return counts


def mix_files(sources: list[Source], out: str | Path, fmt: str = "messages", seed: int = 0,
              total: int | None = None, lossy: bool = False) -> tuple[list[MixRow], Counter]:
    """Sample each source, convert to ``fmt``, tag with ``source`` and write the shuffled mix to ``out``.

    Returns:
        One row per source, and what ``lossy`` conversion dropped.

    Raises:
        DataError: for an unreadable source, or a conversation ``fmt`` cannot hold (unless ``lossy``).
    """
    if fmt not in writable_format_names():
        raise DataError(f"--format {fmt!r}: choose one of {', '.join(writable_format_names())}")
    stems = Counter(Path(s.path).stem for s in sources)
    loaded = [load(s.path, s.fmt) for s in sources]
    sizes = [len(data.examples) for data in loaded]
    for source, size in zip(sources, sizes):
        if size == 0:
            raise DataError(f"{source.path}: no usable examples to mix.")
    counts = plan_counts(sources, sizes, total)
    rng = random.Random(seed)
    rows, records, lost = [], [], Counter()
    for source, data, n in zip(sources, loaded, counts):
        size = len(data.examples)
        name = Path(source.path).stem if stems[Path(source.path).stem] == 1 else source.path
        if n <= size:
            picks = rng.sample(range(size), n)
        else:
            picks = list(range(size)) + [rng.randrange(size) for _ in range(n - size)]
            logger.warning("%s: %d examples asked, %d available: all taken once, %d drawn again with replacement",
                           source.path, n, size, n - size)
        rows.append(MixRow(name, source.fmt, size, n, n > size))
        for i in picks:
            ex = data.examples[i]
            record = carry_extras(ex.record, source.fmt, fmt, to_record(ex.messages, fmt, ex.where, lossy, lost))
            record.setdefault("source", name)
            records.append(record)
    rng.shuffle(records)
    write_records(out, records)
    return rows, lost
