"""Model families: the per-architecture facts a run needs, as data.

A family names its fallback prompt template (for tokenizers without a chat template), its LoRA target modules,
how to fix a missing or EOS-equal pad token, and the padding side. ``auto`` picks the family from the checkpoint's
``config.model_type``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

__all__ = ["Family", "register_family", "get_family", "detect_family", "family_names"]


@dataclass(frozen=True)
class Family:
    """What differs between model families."""

    name: str
    model_types: tuple[str, ...]
    """``config.model_type`` values that belong to this family."""
    template: str
    """Prompt template when the tokenizer has no chat template of its own."""
    lora_targets: tuple[str, ...]
    """Linear layers adapted by LoRA unless the recipe says otherwise."""
    pad_candidates: tuple[str, ...] = ()
    """Existing tokens to use as pad when the tokenizer has none or pads with EOS (so EOS stays learnable)."""
    padding_side: str = "right"
    """Padding side for training batches; generation always pads left."""


_REGISTRY: dict[str, Family] = {}


def register_family(family: Family) -> None:
    if family.name in _REGISTRY:
        raise ValueError(f"Model family {family.name!r} is already registered.")
    _REGISTRY[family.name] = family


def get_family(name: str) -> Family:
    if name not in _REGISTRY:
        raise UsageError(f"Unknown model family {name!r}; known families: {', '.join(family_names())}.")
    return _REGISTRY[name]


def family_names() -> list[str]:
    return sorted(_REGISTRY)


def detect_family(model_type: str) -> Family:
    """The family whose ``model_types`` include ``model_type``."""
    for family in _REGISTRY.values():
        if model_type in family.model_types:
            return family
    raise UsageError(f"No model family handles model_type {model_type!r}; set model.family to one of "
                     f"{', '.join(family_names())} or register a Family for it.")


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# The template named here is the fallback for a tokenizer without a chat template (``data.template=auto`` takes the
# tokenizer's own whenever it has one, models/resolve.py): what the family's base checkpoints were released with.
register_family(Family(
    name="llama", model_types=("llama",), template="llama2", lora_targets=LLAMA_LINEAR,
    # Llama 3.1+ reserves <|finetune_right_pad_id|> for exactly this; Llama 3.0 has reserved special tokens.
    pad_candidates=("<unk>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|endoftext|>", "<pad>",
                    "<|finetune_pad|>")))
register_family(Family(
    name="mistral", model_types=("mistral",), template="mistral", lora_targets=LLAMA_LINEAR,
    pad_candidates=("<unk>", "<pad>", "<|endoftext|>")))
# Qwen's base tokenizers end text with <|endoftext|> and pad with it too; the instruct ones end turns with <|im_end|>.
_QWEN_PAD = ("<|endoftext|>", "<|fim_pad|>")
register_family(Family(name="qwen2", model_types=("qwen2",), template="chatml", lora_targets=LLAMA_LINEAR,
                       pad_candidates=_QWEN_PAD))
register_family(Family(name="qwen3", model_types=("qwen3",), template="chatml", lora_targets=LLAMA_LINEAR,
                       pad_candidates=_QWEN_PAD))
register_family(Family(
    name="gemma", model_types=("gemma", "gemma2", "gemma3_text"), template="gemma", lora_targets=LLAMA_LINEAR,
    pad_candidates=("<pad>",)))
# Phi-3 fuses q, k and v into one projection and gate and up into another.
register_family(Family(
    name="phi3", model_types=("phi3",), template="phi3",
    lora_targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    pad_candidates=("<|endoftext|>", "<unk>", "<pad>")))
register_family(Family(
    name="opt", model_types=("opt",), template="alpaca",
    lora_targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), pad_candidates=("<pad>",)))
# ChatGLM2 runs on transformers' native GlmForCausalLM (see models/chatglm2.py); its tokenizer pads on the left
# with <unk> (id 0), which differs from EOS (id 2).
register_family(Family(
    name="chatglm2", model_types=("glm", "chatglm"), template="chatglm2",
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    pad_candidates=("<unk>",), padding_side="left"))
