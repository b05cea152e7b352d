"""Collators: turn lists of tokenized examples into padded tensors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..data.tokenize import IGNORE_INDEX

__all__ = ["PaddingCollator", "PaddingFreeCollator"]


@dataclass
class PaddingCollator:
    """Pad ``input_ids`` with the pad id and ``labels`` with -100, as ``DataCollatorForSeq2Seq`` does.

    Written here rather than reusing ``DataCollatorForSeq2Seq`` because that one pads through the tokenizer
    (slow Python per example) and needs one; this works on plain lists with no tokenizer and ignores the
    audit's statistics columns.

    Args:
        pad_token_id: id used for padded input positions (their attention mask is 0).
        pad_to_multiple_of: round the padded length up (8 or 64 helps tensor cores on GPU).
        padding_side: ``right`` for training; ``left`` puts real tokens last, as generation needs.
    """

    pad_token_id: int
    pad_to_multiple_of: Optional[int] = None
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for feature in features:
            ids = list(feature["input_ids"])
            labels = list(feature["labels"]) if "labels" in feature else None
            gap = longest - len(ids)
            rows = {"input_ids": (ids, [self.pad_token_id] * gap), "attention_mask": ([1] * len(ids), [0] * gap)}
            if labels is not None:
                rows["labels"] = (labels, [IGNORE_INDEX] * gap)
            for key, (real, pad) in rows.items():
                batch[key].append(real + pad if self.padding_side == "right" else pad + real)
        if "line" in features[0]:  # source line of each example, so a bad batch can be traced to the data file
            batch["lines"] = [f["line"] for f in features]
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items() if v}


@dataclass
class PaddingFreeCollator:
    """Concatenate a batch into one row with ``position_ids`` restarting at 0 for each example: no padding at all.

    transformers turns restarting position ids into a block-diagonal attention mask (SDPA) or variable-length
    kernels (flash-attention), so examples never attend to each other and the loss equals the padded batch's.
    The first label of every example is set to -100: in a padded batch position 0 is never a target either, and
    here it would otherwise be predicted from the previous example's last token. The number of optimiser steps
    does not change (one batch is still ``per_device_train_batch_size`` examples). Given bins of examples
    (``data.batching=packed``) it packs their examples the same way.

    Args:
        flash_attn_kwargs: also emit ``cu_seq_lens_q/k`` (int32 example boundaries) and ``max_length_q/k``, as
            transformers' ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` does. With them
            flash-attention's variable-length kernel gets the layout directly; without them transformers infers it
            from ``position_ids`` in every layer, a host-device sync each time.
    """

    flash_attn_kwargs: bool = False

    def __call__(self, features: list[dict] | list[list[dict]]) -> dict[str, torch.Tensor]:
        if features and isinstance(features[0], list):  # bins of a token budget (finetune/training/packing.py)
            features = [example for bin_ in features for example in bin_]
        input_ids, labels, positions, bounds = [], [], [], [0]
        for feature in features:
            ids = list(feature["input_ids"])
            input_ids += ids
            labels += [IGNORE_INDEX] + list(feature["labels"])[1:]
            positions += range(len(ids))
            bounds.append(len(input_ids))
        # int64 whatever the cache stores (token ids are int32 there): embeddings and the loss take int64
        batch = {"input_ids": torch.tensor([input_ids], dtype=torch.long),
                 "labels": torch.tensor([labels], dtype=torch.long), "position_ids": torch.tensor([positions]),
                 # The row's layout as host integers, for the packed SDPA kernel (finetune/models/attention.py): it
                 # reaches every attention layer as a keyword argument, so no layer reads it back from the device.
                 "packed_lengths": [[b - a for a, b in zip(bounds, bounds[1:])]]}
        if self.flash_attn_kwargs:
            longest = max(b - a for a, b in zip(bounds, bounds[1:]))
            cumulative = torch.tensor(bounds, dtype=torch.int32)
            batch.update(cu_seq_lens_q=cumulative, cu_seq_lens_k=cumulative, max_length_q=longest,
                         max_length_k=longest)
        if "line" in features[0]:
            batch["lines"] = torch.tensor([f["line"] for f in features])
        return batch
