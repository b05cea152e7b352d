"""Full fine-tuning: every parameter of the base model trains, and the run folder holds the whole model."""
from __future__ import annotations

from ..recipe import FullSpec
from .method import Method

__all__ = ["apply_full", "FULL"]


def apply_full(model, spec, family):
    model.requires_grad_(True)
    return model


def _trained_weights(model, run_dir):
    return model  # already loaded from the run folder (weights_in_run)


FULL = Method(spec=FullSpec, apply=apply_full, load=_trained_weights, weights_in_run=True)
