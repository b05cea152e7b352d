"""A run's parts, built from its recipe: the model with its method in the precision policy, the collator, the
``TrainingArguments`` and the trainer.

``finetune.train``, ``bench/`` and ``bench/gpu_check.py`` build their trainers with these functions, so a benchmark
measures exactly what a run executes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, TrainingArguments

from .evaluation import GenerationEval
from .methods import Method, get_method
from .models import ResolvedModel, load_config, load_model
from .precision import resolve_dtype, upcast_trainable, weights_dtype
from .recipe import PACKED_ROWS, ModelSpec, Recipe, RecipeError, TrainingSpec, resolved_batching, token_budget
from .training import PaddingCollator, PaddingFreeCollator, TokenBudgetBins, tokens_seen_mode, training_report_to

__all__ = ["build_trainer", "make_collator", "method_model", "run_arguments", "skeleton", "training_arguments",
           "training_batches"]

logger = logging.getLogger("finetune")


def method_model(path: Path, family, model_spec: ModelSpec, method_spec, *, method: Optional[Method] = None,
                 config=None):
    """The base model loaded in the dtype the method trains it in, with the method applied and its trainable
    parameters in fp32 (finetune/precision.py).

    Args:
        method: the registered ``Method`` of ``method_spec``, when the caller has it.
        config: the base model's config as ``resolve_model`` read and checked it (``ResolvedModel.config``).
    """
    method = method or get_method(method_spec.name)
    dtype = weights_dtype(model_spec.dtype, method_spec.trains_base)
    base = load_model(path, family, model_spec, dtype=dtype, config=config)
    return upcast_trainable(method.apply(base, method_spec, family))


def skeleton(path: Path, family, model_spec: ModelSpec, method_spec, *, config=None):
    """The model's architecture with the method applied, on the meta device: parameter counts without reading any
    weights (``--dry-run``); ``config`` as for :func:`method_model`."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config or load_config(path, family, model_spec))
    return get_method(method_spec.name).apply(model, method_spec, family)


def make_collator(batching: str, tokenizer, attn_implementation: str = "auto"):
    """The collator for a resolved ``data.batching``; padding rounds to 8 only on GPUs (tensor cores); packed rows
    carry flash-attention's varlen arguments when that kernel runs."""
    if batching in PACKED_ROWS:
        return PaddingFreeCollator(flash_attn_kwargs=attn_implementation.startswith("flash_attention"))
    return PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None)


def training_arguments(spec: TrainingSpec, output_dir: Path, batching: str = "padded",
                       compute: torch.dtype = torch.float32) -> TrainingArguments:
    """``TrainingArguments`` from the recipe, with defaults that suit this framework.

    bf16 mixed precision when the compute dtype is bf16 (``model.dtype``, finetune/precision.py) unless
    ``training.bf16`` says otherwise; the GPU when there is one; loss-only evaluation (full-vocabulary eval logits
    are never gathered); columns kept because the collator picks what it needs.
    """
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("extra", "output_dir")}
    fields["bf16"] = compute == torch.bfloat16 if spec.bf16 is None else spec.bf16
    if batching == "packed":  # one bin of the token budget per batch (finetune/training/packing.py)
        fields["per_device_train_batch_size"] = 1
    defaults = {
        "use_cpu": not torch.cuda.is_available(), "prediction_loss_only": True,
        "remove_unused_columns": False, "label_names": ["labels"], "disable_tqdm": False,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if spec.activation_checkpointing else None,
        "length_column_name": "num_tokens", "include_num_input_tokens_seen": tokens_seen_mode(batching),
        # Every trainable parameter gets a gradient in every step (frozen ones are not DDP's concern), and the
        # chunked loss uses the LM head after the forward: searching the graph for unused parameters would mark
        # an untied head "unused" in the forward and then see its gradient arrive ("marked ready twice").
        "ddp_find_unused_parameters": False,
    }
    if batching == "group_by_length":
        defaults["train_sampling_strategy"] = "group_by_length"
    accepted = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs = {k: v for k, v in {**defaults, **fields, **spec.extra}.items() if k in accepted}
    if kwargs.get("use_liger_kernel"):
        kwargs["liger_kernel_config"] = liger_kernel_config(kwargs.get("liger_kernel_config"))
    kwargs["report_to"] = training_report_to(spec.report_to)  # W&B and TensorBoard come as tracking callbacks
    try:
        return TrainingArguments(output_dir=str(output_dir), **kwargs)
    except (ValueError, TypeError) as err:  # an unknown lr_scheduler_type, optim, strategy ...: before any compute
        reason = " ".join(str(err).split())
        raise RecipeError(f"transformers.TrainingArguments refused the training settings: {reason}") from None


LIGER_KERNELS = {"rope": True, "swiglu": True, "rms_norm": True, "cross_entropy": False,
                 "fused_linear_cross_entropy": False}
"""Liger's kernels under ``training.use_liger_kernel``: its RoPE, SwiGLU and RMSNorm; not its losses, because the
chunked loss (``finetune/training/loss.py``) already makes the head's logits a chunk at a time at supervised
positions only, and the model is never given labels, so Liger's fused linear cross-entropy would not run anyway."""


def liger_kernel_config(explicit: Optional[dict]) -> dict:
    """``training.liger_kernel_config`` with :data:`LIGER_KERNELS` as defaults, after checking Liger can run here.

    Raises:
        RecipeError: no CUDA GPU (Liger's kernels are Triton, GPU only), liger-kernel not installed, or a config
            asking for Liger's losses (they would replace the chunked loss this trainer computes).
    """
    if not torch.cuda.is_available():
        raise RecipeError("training.use_liger_kernel=true needs a CUDA GPU: Liger's kernels are written in Triton, "
                          "which runs on GPUs only. Leave it off on this machine.")
    if importlib.util.find_spec("liger_kernel") is None:
        raise RecipeError("training.use_liger_kernel=true needs the liger-kernel package: pip install liger-kernel")
    config = {**LIGER_KERNELS, **(explicit or {})}
    losses = [k for k in ("cross_entropy", "fused_linear_cross_entropy") if config.get(k)]
    if losses:
        raise RecipeError(f"training.liger_kernel_config turns on Liger's {' and '.join(losses)}: finetune computes "
                          "the loss itself (a chunk of the LM head at a time, supervised positions only), so it would "
                          "never run; leave them false.")
    return config


def run_arguments(recipe: Recipe, output_dir: Path, attention: Optional[str] = None,
                  batching: Optional[str] = None) -> TrainingArguments:
    """The run's ``TrainingArguments``, made before the model is loaded (and kept by the caller): DeepSpeed ZeRO-3's
    ``zero.Init`` and FSDP's low-memory loading apply in ``from_pretrained`` only when they already exist.

    Args:
        batching: ``data.batching`` as the caller resolved it (``resolved_batching``), when it did.
    """
    extra = recipe.training.extra
    if extra.get("fsdp"):
        # transformers' is_fsdp_enabled() reads these; only `accelerate launch` sets them, and torchrun does not.
        os.environ.setdefault("ACCELERATE_USE_FSDP", "true")
        os.environ.setdefault("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    if extra.get("deepspeed") and not torch.cuda.is_available() and torch.distributed.is_available():
        # Without a GPU, TrainingArguments takes its CPU branch and accelerate never starts DeepSpeed's
        # communication (accelerate/state.py: `if not cpu`), so ZeRO-3's zero.Init would size the job as one
        # process. Starting it here (gloo) first is what DeepSpeed's CPU accelerator needs.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    return training_arguments(recipe.training, output_dir, batching or resolved_batching(recipe, attention),
                              resolve_dtype(recipe.model.dtype))


def build_trainer(recipe: Recipe, resolved: ResolvedModel, model, data, args: TrainingArguments, callbacks: list,
                  record: Optional[dict] = None, *, method: Optional[Method] = None, batching: Optional[str] = None):
    """The method's trainer over ``data`` (an ``SFTData``), with generation metrics at each evaluation when
    ``eval.generate`` asks for them.

    Args:
        record: what the run's ``recipe.json`` says when not just ``recipe`` (a resumed run's history).
        method, batching: the recipe's ``Method`` and resolved ``data.batching``, when the caller has them.
    """
    output_dir = Path(args.output_dir)
    method = method or get_method(recipe.method.name)
    batching = batching or resolved_batching(recipe, resolved.attention)
    return method.trainer(
        model=model, args=args, train_dataset=training_batches(recipe, data.train, batching), eval_dataset=data.eval,
        data_collator=make_collator(batching, resolved.tokenizer, resolved.attention),
        processing_class=resolved.tokenizer, template=resolved.template, recipe=record or recipe, callbacks=callbacks,
        generation_eval=_generation_eval(recipe, data.eval, output_dir))


def training_batches(recipe: Recipe, train, batching: str):
    """The training examples as the Trainer should draw them: as they are, or in bins of the token budget under
    ``data.batching=packed`` (one bin per batch)."""
    if batching != "packed":
        return train
    bins = TokenBudgetBins(train, token_budget(recipe))
    logger.info("Packed %d examples into %d batches of at most %d tokens (%.1f %% of the budget used)", len(train),
                len(bins), bins.budget, 100 * bins.fill())
    return bins


def _generation_eval(recipe: Recipe, eval_data, output_dir: Path) -> Optional[GenerationEval]:
    """Scored generations at every evaluation when ``eval.generate`` asks for them and there is held-out data."""
    if not recipe.eval.generate or eval_data is None:
        return None
    spec = recipe.eval
    limit = min(spec.generate_limit or len(eval_data), len(eval_data))
    sampling = {"do_sample": True, "top_p": spec.top_p, "temperature": spec.temperature} if spec.do_sample else {}
    shown = eval_data.select(range(limit))
    return GenerationEval(list(shown["messages"]), spec.max_new_tokens,
                          recipe.training.per_device_eval_batch_size, generate_kwargs=sampling, output_dir=output_dir,
                          tools=shown["tools"] if "tools" in shown.column_names else None)
