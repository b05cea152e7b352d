"""Fine-tuning methods: each turns a loaded base model into the model the trainer optimises.

A method is a function ``apply(model, spec, family) -> model`` registered under its spec's ``name``; it freezes
what must not train and adds what should. New methods (QLoRA, P-Tuning v2) plug in with ``register_method``.
"""
from __future__ import annotations

from typing import Callable

from .full import apply_full
from .lora import apply_lora
from .ptuning import apply_ptuning

__all__ = ["apply_method", "register_method", "count_parameters"]

_REGISTRY: dict[str, Callable] = {}


def register_method(name: str, apply: Callable) -> None:
    if name in _REGISTRY:
        raise ValueError(f"Method {name!r} is already registered.")
    _REGISTRY[name] = apply


def apply_method(model, spec, family):
    if spec.name not in _REGISTRY:
        raise ValueError(f"Unknown method {spec.name!r}; known methods: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[spec.name](model, spec, family)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


register_method("lora", apply_lora)
register_method("full", apply_full)
register_method("ptuning", apply_ptuning)
