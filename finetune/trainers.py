"""Trainer subclasses: the loss hook and the save hook, each short and delegating to ``transformers.Trainer``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from transformers import Trainer

try:
    from typing import override
except ImportError:  # Python < 3.12
    from typing_extensions import override

from .data.tokenize import IGNORE_INDEX
from .recipe import recipe_to_dict

__all__ = ["SFTTrainer", "PrefixTrainer", "trainer_class", "causal_lm_loss", "write_run_files"]


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                   num_items_in_batch: Optional[torch.Tensor | int] = None) -> torch.Tensor:
    """Summed token loss over supervised targets divided by ``num_items_in_batch``.

    ``logits[:, i]`` predicts ``targets[:, i]`` (already shifted). Dividing the sum by the number of supervised
    tokens in the whole accumulated batch, not per micro-batch, makes bs 1 x accumulation 4 equal bs 4.
    With ``label_smoothing`` = e the token loss is (1 - e) * NLL + e * mean over the vocabulary of -log p,
    transformers' ``LabelSmoother`` definition (PyTorch's ``label_smoothing`` computes exactly that).
    """
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return total / torch.clamp(torch.as_tensor(count, device=total.device), min=1)


def write_run_files(output_dir: str | Path, template, recipe) -> None:
    """Save the template and the resolved recipe beside the weights, so inference uses the training format."""
    output_dir = Path(output_dir)
    if template is not None:
        (output_dir / "template.json").write_text(json.dumps(template.to_dict(), indent=2, ensure_ascii=False))
    if recipe is not None:
        (output_dir / "recipe.json").write_text(json.dumps(recipe_to_dict(recipe), indent=2, ensure_ascii=False))


class SFTTrainer(Trainer):
    """``Trainer`` with a supervised-token causal-LM loss and adapter-plus-template checkpoints.

    Args:
        template: the prompt template the data was rendered with (saved as ``template.json``).
        recipe: the resolved recipe (saved as ``recipe.json``).
    """

    # compute_loss divides by num_items_in_batch itself, so training_step must not divide again.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, template=None, recipe=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.template, self.recipe = template, recipe
        # Make the Trainer count shifted supervised tokens over the accumulated batch for every model class
        # (it otherwise decides from the model's forward signature and loss_type).
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True

    @override
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss over supervised tokens only; logits are computed just where some row has a label."""
        inputs = dict(inputs)
        lines = inputs.pop("lines", None)
        targets = inputs.pop("labels")[:, 1:]
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
        # use_cache=False: no cache is needed in training, and one would stop packed rows getting a block mask.
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        loss = causal_lm_loss(outputs.logits, targets[:, keep], self.args.label_smoothing_factor, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the count is already global
        if model.training and not torch.isfinite(loss):
            raise FloatingPointError(
                f"Loss is {loss.item()} at step {self.state.global_step + 1} on the examples at lines "
                f"{lines.tolist() if lines is not None else '?'} of the training file. Lower "
                "training.learning_rate or max_grad_norm, check those examples, and prefer bf16/fp32 to fp16.")
        return (loss, outputs) if return_outputs else loss

    @override
    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """Weights as the library writes them (adapter only for PEFT), plus template and recipe."""
        super()._save(output_dir, state_dict)
        write_run_files(output_dir or self.args.output_dir, self.template, self.recipe)


class PrefixTrainer(SFTTrainer):
    """SFTTrainer for P-Tuning v2, whose checkpoints hold only the prefix encoder."""

    @override
    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """Write the prefix encoder alone: the base model is frozen, so saving it again would only cost disk."""
        output_dir = output_dir or self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_prefix(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        write_run_files(output_dir, self.template, self.recipe)


def trainer_class(method_name: str) -> type[SFTTrainer]:
    """The trainer a method needs."""
    return PrefixTrainer if method_name == "ptuning" else SFTTrainer
