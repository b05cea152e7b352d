"""The precision policy: what is stored in bf16, what stays fp32, and in which dtype the matmuls run.

The rules are those LLaMA-Factory and Axolotl users expect:

- **Frozen base weights** are stored in ``model.dtype``; ``auto`` is bf16 wherever the hardware multiplies bf16
  natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp32 elsewhere.
- **Trainable parameters** (LoRA/DoRA adapters, the P-Tuning prefix encoder) are fp32, so their gradients and
  the optimiser's moments are fp32 too: bf16's 8-bit mantissa would round small updates away.
- **Full fine-tuning keeps fp32 master weights**: the model is loaded in fp32 and bf16 comes from autocast. Pure
  bf16 AdamW loses updates smaller than half a bf16 ulp of the weight (with lr 1e-5 most of them).
- **Matmuls run in bf16** under ``training.bf16`` (autocast), on by default when the compute dtype is bf16.
- **The loss** (log-sum-exp and the token sum) is computed in fp32.

Kernels written here (the chunked loss, the fused LoRA layer, the prefix encoder) ask :func:`compute_dtype` which
dtype their matmuls should use, so they follow autocast the way ``nn.Linear`` does.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

__all__ = ["native_bf16", "machine_kind", "resolve_dtype", "compute_dtype", "upcast_trainable", "weights_dtype"]

logger = logging.getLogger(__name__)

_NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def native_bf16(device_type: str | None = None) -> bool:
    """Whether bf16 matmuls run natively (faster than fp32) on the device training will use.

    CUDA: ``torch.cuda.is_bf16_supported()`` (Ampere and later). CPU: the AVX512-BF16 or AMX-BF16 instructions
    (``/proc/cpuinfo``), and torch allowed to use them: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (how
    ``make test-avx2`` stands in for an AVX2-only CPU) turns oneDNN's bf16 kernels off, and bf16 then runs in
    torch's emulation, slower than fp32, exactly as on a CPU without the instructions.
    """
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(_cpu_bf16_flags()) and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _cpu_bf16_flags() -> list[str]:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to tell, so no bf16 by default
        return []
    return sorted({flag for flag in flags if flag in _NATIVE_BF16_FLAGS})


def machine_kind(device_type: str | None = None) -> str:
    """Which kind of machine a measurement was taken on, for every benchmark result and documented number: a bf16
    figure from a CPU with native bf16 says nothing about one without (and the reverse)."""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return f"GPU {torch.cuda.get_device_name()} ({'native' if native_bf16('cuda') else 'no'} bf16)"
    if native_bf16("cpu"):
        return f"CPU with native bf16 ({', '.join(_cpu_bf16_flags())}), {torch.get_num_threads()} threads"
    emulated = " (instructions present, turned off by ATEN_CPU_CAPABILITY/ONEDNN_MAX_CPU_ISA)" if _cpu_bf16_flags() \
        else ""
    return (f"CPU without native bf16{emulated}: bf16 emulated, ISA {torch.backends.cpu.get_cpu_capability()}, "
            f"{torch.get_num_threads()} threads")


def resolve_dtype(name: str) -> torch.dtype:
    """A ``model.dtype`` name as a torch dtype, with ``auto`` decided by :func:`native_bf16`."""
    if name == "auto":
        return torch.bfloat16 if native_bf16() else torch.float32
    return getattr(torch, name)


def weights_dtype(model_dtype: str, trains_base: bool) -> torch.dtype:
    """The dtype to load the base in: ``model.dtype``, but fp32 master weights when the base itself trains."""
    dtype = resolve_dtype(model_dtype)
    if trains_base and dtype != torch.float32:
        logger.info("Full fine-tuning: weights kept in float32 (master weights), matmuls in %s via autocast",
                    str(dtype).replace("torch.", ""))
        return torch.float32
    return dtype


def compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    """The dtype a matmul should run in here: autocast's when it is on for ``device_type``, else ``default``."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


def upcast_trainable(model: nn.Module) -> nn.Module:
    """Store every trainable floating-point parameter in fp32 (see the module doc); returns the model.

    peft already creates adapters in fp32 over a bf16 base (``autocast_adapter_dtype``); this makes the rule hold
    for every method, including ones registered by users.
    """
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model
