"""Position ids for left-padded batches, shared by the ChatGLM2 port and P-Tuning v2 (which uses them for every
family), so neither has to import the other."""
from __future__ import annotations

import torch

__all__ = ["left_padded_position_ids"]


def left_padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """ChatGLM2's positions for a left-padded batch: real tokens count from 0, pad positions are 0.

    ``GlmForCausalLM`` numbers every column from 0 when no ``position_ids`` are given. Rotary attention only sees
    relative positions, so for the plain model that shift changes nothing; it does matter once keys without
    rotation join in, e.g. a P-Tuning v2 prefix trained with ChatGLM2's own positions.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
