"""ROUGE-L for near-duplicate detection: tokens, LCS, the F-measure, and an index that avoids most LCS work.

Comparing every pair is quadratic, so candidates are pruned before any LCS is computed (prefix filtering, as in
set-similarity joins). ROUGE-L F = 2·LCS/(m+n), and LCS <= the token-multiset overlap, so F >= t needs an overlap of
at least t·n/(2-t) tokens for an n-token prompt. With tokens ordered rarest first, two multisets sharing that many
tokens must share one within the first n - ceil(t·n/(2-t)) + 1 of each; only those prefixes are indexed and probed.
Each match also bounds what the rest of both prompts can still share (PPJoin's positional filter); survivors
are checked against the exact overlap bound from token counts, and only the rest reach the LCS.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import jieba

from ...language import detect_language

__all__ = ["NearDuplicateIndex", "SearchStats", "lcs_length", "rouge_l", "tokenize"]

_WORDS = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """ROUGE tokens: jieba words for Chinese, lower-cased letter/digit words (``rouge_score``'s on ASCII) otherwise."""
    if detect_language([text]) == "zh":
        return [w for w in " ".join(jieba.cut(text)).split() if _WORDS.search(w)]
    return _WORDS.findall(text.lower())


def lcs_length(a: list, b: list) -> int:
    """LCS length by the LCS dynamic programme in bit-parallel form (Hyyrö 2004): one DP row is one Python int,
    so a row costs a few big-int operations instead of a loop over the other sequence."""
    if len(a) < len(b):
        a, b = b, a
    masks: dict = {}
    for i, token in enumerate(b):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    row = full
    for token in a:
        match = row & masks.get(token, 0)
        row = ((row + match) | (row - match)) & full
    return len(b) - bin(row).count("1")


def rouge_l(target: list, prediction: list) -> float:
    """ROUGE-L F-measure, computed as ``rouge_score.rouge_scorer._score_lcs`` does."""
    if not target or not prediction:
        return 0.0
    lcs = lcs_length(target, prediction)
    precision, recall = lcs / len(prediction), lcs / len(target)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


@dataclass
class SearchStats:
    """How much work the pruning saved."""

    pairs: int = 0
    """Prompt pairs a brute-force pass would score (each look-up against everything kept before it)."""
    candidates: int = 0
    """Pairs found through the prefix index (before the positional, length and overlap bounds)."""
    lcs: int = 0
    """Exact LCS computations run (candidates that passed the length and token-overlap bounds)."""


class NearDuplicateIndex:
    """Prompts kept so far, indexed by the rarest tokens of each, for ROUGE-L >= threshold look-ups.

    Args:
        threshold: The ROUGE-L F-measure at which two prompts count as near-duplicates.
        rank: Token id -> position in the global rarest-first order (any fixed order is correct; rare first
            keeps the posting lists short).
    """

    def __init__(self, threshold: float, rank: dict[int, int]):
        self.t, self.rank = threshold, rank
        self.tokens: list[list[int]] = []
        self.elements: list[frozenset] = []
        self.postings: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        self.stats = SearchStats()

    def _elements(self, ids: list[int]) -> tuple[list[tuple[int, int]], int]:
        """Token multiset as sorted elements (the k-th copy of a token is its own element), and its prefix length.

        Only the first n - ceil(t·n/(2-t)) + 1 elements, rarest first, need to be indexed or probed.
        """
        elements = sorted((self.rank[w], k) for w, c in Counter(ids).items() for k in range(c))
        alpha = max(1, math.ceil(self.t * len(ids) / (2 - self.t) - 1e-9))
        return elements, len(ids) - alpha + 1

    def find(self, ids: list[int], accept: Callable[[int], bool] | None = None) -> tuple[int, float] | None:
        """The first kept prompt with ROUGE-L >= threshold against ``ids`` (and ``accept``-ed), as ``(position, F)``."""
        n, t, postings = len(ids), self.t, self.postings
        self.stats.pairs += len(self.tokens)
        shortest, longest = t * n / (2 - t) - 1e-9, (2 - t) * n / t + 1e-9
        elements, prefix = self._elements(ids)
        overlap: dict[int, int] = {}  # candidate -> shared elements seen so far; -1 once it cannot reach t
        for i, element in enumerate(elements[:prefix]):
            for c, j, m in postings.get(element, ()):
                seen = overlap.get(c, 0)
                if seen < 0:
                    continue
                # Positional filter (PPJoin): elements are sorted the same way in both prompts, so what is left
                # after this match can add at most min(n-i-1, m-j-1) shared elements.
                if shortest <= m <= longest and 2 * (seen + 1 + min(n - i - 1, m - j - 1)) >= t * (m + n) - 1e-9:
                    overlap[c] = seen + 1
                else:
                    overlap[c] = -1
        self.stats.candidates += len(overlap)
        bounded, mine = [], frozenset(elements)
        for c, seen in overlap.items():
            if seen > 0:
                shared = len(mine & self.elements[c])  # the token-multiset overlap, an upper bound on the LCS
                if 2 * shared >= t * (len(self.tokens[c]) + n) - 1e-9:
                    bounded.append((-shared, c))
        for _, c in sorted(bounded):  # most promising first: the first hit ends the search
            self.stats.lcs += 1
            score = rouge_l(ids, self.tokens[c])
            if score >= t and (accept is None or accept(c)):
                return c, score
        return None

    def add(self, ids: list[int]) -> int:
        """Keep a prompt; returns its position."""
        position, (elements, prefix) = len(self.tokens), self._elements(ids)
        self.tokens.append(ids)
        self.elements.append(frozenset(elements))
        for j, element in enumerate(elements[:prefix]):
            self.postings.setdefault(element, []).append((position, j, len(ids)))
        return position
