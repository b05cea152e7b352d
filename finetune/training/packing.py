"""Token-budget batches (``data.batching=packed``): each training batch is a bin of whole examples holding at most
``data.max_tokens_per_batch`` tokens, filled by best-fit decreasing.

Padding-free batches of a fixed number of examples vary in tokens with the examples' lengths (on the bench data
8 examples are 260 to 4,000 tokens), so a GPU's step memory follows the longest batch the sampler happens to draw.
A token budget makes every step's activations the same size and fills it: best-fit decreasing (as TRL's ``bfd``
packing strategy) puts each example, longest first, into the bin it leaves least room in, which uses at most
11/9 of the fewest bins possible; the run logs how much of the budget the bins fill (over 85 % on the demo's
examples in 128-token bins, tests/test_packing.py).

The bins are made once from the ``num_tokens`` column and stay the same across epochs (their order is shuffled by
the Trainer's sampler each epoch, as for any dataset): the Trainer, accelerate's sharding across processes,
resuming mid-epoch and the step count all see an ordinary map-style dataset of bins with one bin per batch. The
loss stays the mean over supervised tokens of the whole optimiser step: the Trainer counts them across gradient
accumulation and processes (``num_items_in_batch``), and ``SFTTrainer.compute_loss`` divides by that count, so
batches of different sizes weigh exactly as in one large padded batch (tests/test_packing.py).
"""
from __future__ import annotations

import bisect
from typing import Sequence

import torch

__all__ = ["TokenBudgetBins", "best_fit_decreasing"]


def best_fit_decreasing(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of total length at most ``budget``, best-fit decreasing.

    Every index appears in exactly one bin; within a bin the indices keep the data's order. A length above the
    budget raises (the recipe check refuses a budget below ``model.max_length`` before this can happen).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (space left, bin), sorted: the best fit is the first with enough space
    for i in order:
        size = lengths[i]
        if size > budget:
            raise ValueError(f"example {i} has {size} tokens, more than the budget of {budget} per batch")
        at = bisect.bisect_left(room, (size, -1))
        if at == len(room):
            bins.append([i])
            left, b = budget - size, len(bins) - 1
        else:
            left, b = room.pop(at)
            bins[b].append(i)
            left -= size
        if left:
            bisect.insort(room, (left, b))
    return [sorted(members) for members in bins]


class TokenBudgetBins(torch.utils.data.Dataset):
    """A dataset of bins: item ``i`` is the list of examples of bin ``i`` (``PaddingFreeCollator`` packs a list of
    bins into one row). ``len`` is the number of bins, hence of batches per epoch with one bin per batch."""

    def __init__(self, examples, budget: int, length_column: str = "num_tokens"):
        self.examples, self.budget = examples, budget
        self.lengths = [int(n) for n in examples[length_column]]
        self.bins = best_fit_decreasing(self.lengths, budget)

    def __len__(self) -> int:
        return len(self.bins)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.examples[i] for i in self.bins[index]]

    def fill(self) -> float:
        """Tokens in the bins / tokens the bins could hold: how much of the budget the packing uses."""
        return sum(self.lengths) / (len(self.bins) * self.budget)
