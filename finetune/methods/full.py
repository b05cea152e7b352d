"""Full fine-tuning: every parameter of the base model trains."""
from __future__ import annotations

__all__ = ["apply_full"]


def apply_full(model, spec, family):
    model.requires_grad_(True)
    return model
