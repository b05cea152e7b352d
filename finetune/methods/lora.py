"""LoRA (and DoRA) through peft: the base is frozen, low-rank updates train on the chosen linear layers.

QLoRA is this same method over a base loaded in 4 bits (``model.quantization``), as in torchtune.
"""
from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, TaskType, get_peft_model

from ..errors import CorruptFileError
from ..recipe import LoraSpec
from .fused_lora import fuse_lora_layers
from .method import Method

__all__ = ["apply_lora", "lora_config", "LORA"]


def lora_config(spec, family) -> LoraConfig:
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules or family.lora_targets), use_dora=spec.use_dora,
    )


def apply_lora(model, spec, family):
    """LoRA on the model; on a 4-bit base this is QLoRA.

    peft's ``prepare_model_for_kbit_training`` is not called: without its checkpointing it only freezes the base
    (``get_peft_model`` does that) and upcasts the unquantised weights to fp32, which would run the LM head — the
    largest matmul of a small model — in fp32 whatever ``compute_dtype`` says (finetune/precision.py).
    """
    model = get_peft_model(model, lora_config(spec, family))
    if spec.fused:
        fuse_lora_layers(model)  # quantised layers are left to peft
    return model


def _load_adapter(model, run_dir):
    missing = [name for name in ("adapter_config.json", "adapter_model.safetensors")
               if not (Path(run_dir) / name).exists()]
    if missing:  # peft would raise a bare ValueError about the config
        raise CorruptFileError(f"{run_dir} has no {' or '.join(missing)}: the adapter was not (completely) saved "
                               "or copied; copy the run folder again, or point at one of its checkpoint-N folders.")
    return PeftModel.from_pretrained(model, run_dir)


def _untrained(model):
    return model.disable_adapter()  # LoRA's B starts at zero, so this only makes the baseline explicit


LORA = Method(spec=LoraSpec, apply=apply_lora, load=_load_adapter, untrained=_untrained, merges=True)
