"""Fine-tuning methods: each turns a loaded base model into the model the trainer optimises.

Every method is one :class:`Method` record (spec class, ``apply``, trainer, baseline, loader, merge support) in
one module, registered here with one line. Nothing else in the framework branches on a method's name.
"""
from __future__ import annotations

from ..errors import UsageError
from ..recipe import register_method_spec
from .full import FULL
from .lora import LORA
from .method import Method
from .ptuning import PTUNING

__all__ = ["Method", "apply_method", "count_parameters", "get_method", "method_names", "register_method"]

_REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> None:
    """Make ``method`` usable in recipes (``method=MySpec(...)``) and in saved runs' ``recipe.json``."""
    if method.name in _REGISTRY:
        raise ValueError(f"Method {method.name!r} is already registered.")
    register_method_spec(method.spec)
    _REGISTRY[method.name] = method


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise UsageError(f"Unknown method {name!r}; known methods: {', '.join(method_names())}.")
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def apply_method(model, spec, family):
    return get_method(spec.name).apply(model, spec, family)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


for _method in (LORA, FULL, PTUNING):
    register_method(_method)
