"""Trainer subclasses: the loss hook and the save hook, each short and delegating to ``transformers.Trainer``."""
from __future__ import annotations

import logging
from typing import Optional

import torch
from transformers import Trainer
from typing_extensions import override  # typing.override from Python 3.12

from ..data.tokenize import IGNORE_INDEX
from ..runs import write_run_files
from .divergence import DivergenceGuard
from .loss import FinalHiddenStates, causal_lm_loss, chunked_linear_cross_entropy, fusable_causal_lm

__all__ = ["SFTTrainer"]

logger = logging.getLogger(__name__)


class SFTTrainer(Trainer):
    """``Trainer`` with a supervised-token causal-LM loss and adapter-plus-template checkpoints.

    Args:
        template: the prompt template the data was rendered with (saved as ``template.json``).
        recipe: the resolved recipe (saved as ``recipe.json``).
        generation_eval: answer and score held-out prompts at every evaluation
            (``finetune.evaluation.generation_eval``).
    """

    # compute_loss divides by num_items_in_batch itself, so training_step must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, template=None, recipe=None, generation_eval=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.template, self.recipe, self.generation_eval = template, recipe, generation_eval
        self.divergence = DivergenceGuard(self.args.learning_rate, fp16=self.args.fp16)
        if self.args.fsdp and not self.is_fsdp_enabled:
            logger.warning("training.fsdp is set, but accelerate did not enable FSDP (it never does on CPU: "
                           "accelerate/state.py sets DistributedType.FSDP only for GPU-like devices); this run is "
                           "plain data-parallel, each process holding the whole model.")
        # Make the Trainer count shifted supervised tokens over the accumulated batch for every model class
        # (it otherwise decides from the model's forward signature and loss_type).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    @override
    def _build_accelerator_args(self, **kwargs) -> dict:
        """The Trainer's accelerate arguments; with ``training.torch_compile``, compiled by region and with dynamic
        shapes (private in transformers 5, the one place the dynamo plugin is made; tests/test_compile.py fails if
        either stops applying).

        Regional: each repeated decoder block is compiled once and the graph reused by the others, so compile time
        is one block's rather than the whole model's, and the model around the blocks (embedding, the chunked loss)
        stays eager. Dynamic from the first step: padding-free rows change length every batch and the packed
        attention kernel takes the example lengths as integers, which static shapes would recompile for at every
        new layout, until dynamo's recompile limit sends the rest of the run back to eager.
        """
        args = super()._build_accelerator_args(**kwargs)
        plugin = args.get("dynamo_plugin")
        if plugin is not None and self.args.torch_compile:
            plugin.use_regional_compilation, plugin.dynamic = True, True
        return args

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss over supervised tokens only: the body runs on every token, the LM head only where some row has a
        label, and in training the head's logits are made and dropped a chunk at a time
        (``finetune/training/loss.py``)."""
        inputs = dict(inputs)
        lines = inputs.pop("lines", None)
        targets = inputs.pop("labels")[:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
        smoothing = self.args.label_smoothing_factor
        causal_lm = self._fusable_causal_lm(model) if model.training else None
        # use_cache=False: no cache is needed in training, and one would stop packed rows getting a block mask.
        if causal_lm is not None:
            # The head runs on no position here; the chunked loss applies it to the final hidden states itself.
            with FinalHiddenStates(causal_lm) as final:
                outputs = model(**inputs, logits_to_keep=keep[:0], use_cache=False)
            loss = chunked_linear_cross_entropy(final.value[:, keep], causal_lm.get_output_embeddings(),
                                                targets[:, keep], smoothing, num_items_in_batch,
                                                self._mixed_precision_dtype())
        else:
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            loss = causal_lm_loss(outputs.logits, targets[:, keep], smoothing, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is already global
        if model.training:
            self.divergence.add_loss(loss, lines)
        return (loss, outputs) if return_outputs else loss

    @override
    def _get_grad_norm(self, model, grad_norm=None):
        """The Trainer's gradient norm of each optimiser step, shown to the divergence guard before the optimiser
        applies it (private in transformers 5, and the one place that norm exists every step;
        ``tests/test_reliability.py`` fails if it stops being called)."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self.divergence.step(self.state.global_step + 1, grad_norm)
        return grad_norm

    @override
    def evaluate(self, *args, **kwargs):
        """The Trainer's evaluation; under DDP, one made before ``train()`` (the untrained baseline) no longer
        stops ``train()`` from wrapping the model in DDP.

        accelerate marks a model prepared in evaluation mode as prepared, and its ``prepare`` then returns it
        unwrapped for training: every process trained alone, without gradient sync (measured with 2 processes:
        adapters 0.03-0.05 apart after one step, where one process and DDP agree to 1e-7 otherwise).
        """
        metrics = super().evaluate(*args, **kwargs)
        ddp = self.accelerator.num_processes > 1 and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        if ddp and self.model_wrapped is self.model and getattr(self.model, "_is_accelerate_prepared", False):
            self.model._is_accelerate_prepared = False
            self.accelerator._models = [m for m in self.accelerator._models if m is not self.model]
        return metrics

    @override
    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        """The Trainer's loss evaluation, plus generation metrics (``eval_rouge-l`` ...) logged beside
        ``eval_loss``, so they reach every tracker and ``metric_for_best_model`` can pick a checkpoint by them."""
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        if self.generation_eval is not None:
            model = self.accelerator.unwrap_model(self.model)
            output.metrics.update(self.generation_eval(model, self.processing_class, self.template, self.accelerator,
                                                       self.state.global_step, metric_key_prefix))
        return output

    def _mixed_precision_dtype(self) -> Optional[torch.dtype]:
        """The matmul dtype of mixed precision, or ``None``. Needed because accelerate's autocast ends with the
        model's forward (its outputs are even converted to fp32), while the chunked loss runs the head after it."""
        return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else None

    def _fusable_causal_lm(self, model):
        """The causal LM for the chunked loss; ``None`` where the head's weight is not whole on this device
        (FSDP, DeepSpeed ZeRO shard it) or the head is not a plain Linear (LoRA on it, quantised)."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return None
        return fusable_causal_lm(model)

    @override
    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """Weights as the library writes them (adapter only for PEFT), plus template and recipe.

        transformers calls this in every process (under FSDP/DeepSpeed after gathering the weights); the files
        are written by the one that ``should_save``.
        """
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_run_files(output_dir or self.args.output_dir, self.template, self.recipe)
