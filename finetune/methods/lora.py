"""LoRA through peft: the base is frozen, low-rank updates train on the chosen linear layers."""
from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model

__all__ = ["apply_lora", "lora_config"]


def lora_config(spec, family) -> LoraConfig:
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules or family.lora_targets),
    )


def apply_lora(model, spec, family):
    return get_peft_model(model, lora_config(spec, family))
