"""The record that makes a fine-tuning method: one object the rest of the framework asks, instead of branching
on the method's name.

A method is its recipe dataclass (the spec) plus what training, inference and merging need from it. The spec's
class attributes carry the facts a recipe is checked against before torch loads (``name``, ``trains_base``,
``padding_free_attention``); this record carries the behaviour.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager

from ..training import SFTTrainer

__all__ = ["Method"]


def _as_is(model) -> ContextManager:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Method:
    """One fine-tuning method, registered with :func:`finetune.methods.register_method`."""

    spec: type
    """The frozen dataclass a recipe's ``method=`` holds, with a ``name`` class attribute."""
    apply: Callable[[Any, Any, Any], Any]
    """``(base model, spec, family) -> model to train``: freeze what must not train, add what should."""
    load: Callable[[Any, Path], Any]
    """``(base model, run folder) -> trained model`` for inference (``finetune.evaluate``, ``chat``, ``merge``)."""
    trainer: type = SFTTrainer
    """The ``SFTTrainer`` (subclass) that trains and saves it."""
    untrained: Callable[[Any], ContextManager] = _as_is
    """A context in which the trained model answers as its untrained base: the before-training baseline."""
    weights_in_run: bool = False
    """The run folder holds the whole model (full fine-tuning), so inference loads it from there, not the base."""
    merges: bool = False
    """``finetune.merge`` can fold the trained part into the base weights."""
    not_exported: str = ""
    """Why ``finetune.export`` refuses a run of this method, and what to do instead; a method whose run holds the
    whole model (``weights_in_run``) or merges exports without one."""

    @property
    def name(self) -> str:
        return self.spec.name
