"""A recipe's model, resolved once: folder -> family -> tokenizer -> template.

Training, inference and ``finetune.data stats`` all start here, so a recipe means the same model, tokenizer
(pad token fixed, remote code only when allowed) and template wherever it is read.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..recipe import ModelSpec
from ..templates import TokenizerTemplate, get_template
from .attention import resolve_attention
from .family import Family
from .loading import (
    check_context_window,
    check_weights,
    load_config,
    load_tokenizer,
    read_config,
    resolve_family,
    resolve_model_path,
)

__all__ = ["ResolvedModel", "resolve_model"]


@dataclass(frozen=True)
class ResolvedModel:
    """What a recipe's ``model`` section (and ``data.template``) stand for on this machine."""

    path: Path
    """The base model's folder."""
    family: Family
    tokenizer: Any
    template: Any
    """A ``Template`` or ``TokenizerTemplate``."""
    attention: str = "auto"
    """The attention kernel ``model.attn_implementation`` resolves to for this model (``auto`` decided)."""
    config: Any = None
    """For training (``check_window``): the transformers config, read and checked once (context window, weights);
    ``load_model`` and ``skeleton`` take it instead of reading ``config.json`` and checking again."""


def resolve_model(spec: ModelSpec, template: Any = "auto", tokenizer_from: Optional[Path] = None,
                  check_window: bool = True, thinking: str = "keep") -> ResolvedModel:
    """Resolve ``spec``; for training, check its context window before anything is tokenized.

    Args:
        template: a template name (``auto``: the tokenizer's chat template when it has one, else the family's
            template) or the template itself (a run's own).
        thinking: ``data.thinking``; ``drop`` turns the chat template's ``enable_thinking`` off, so inference
            opens each answer as training did.
        tokenizer_from: where the tokenizer lives when not beside the base model (a run folder).
        check_window: refuse a ``max_length`` (and RoPE scaling) the model cannot train on.

    Raises:
        ModelNotFoundError: the model is not on this machine (the message says how to get it).
    """
    path = resolve_model_path(spec.path)
    raw = read_config(path)
    family = resolve_family(spec, path, raw)
    config = None
    if check_window:  # training: everything about the model that can be wrong is found before any compute
        config = load_config(path, family, spec, raw)
        check_context_window(config, spec)
        check_weights(path, spec)
    tokenizer = load_tokenizer(tokenizer_from or path, family, spec.trust_remote_code)
    if template == "auto":
        template = "tokenizer" if getattr(tokenizer, "chat_template", None) else family.template
    if isinstance(template, str):
        template = get_template(template)
    if isinstance(template, TokenizerTemplate) and thinking == "drop":
        template = dataclasses.replace(template, enable_thinking=False)
    return ResolvedModel(path, family, tokenizer, template, resolve_attention(spec.attn_implementation, raw), config)
