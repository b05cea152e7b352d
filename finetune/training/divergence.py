"""Stopping a run that has blown up, before it is saved as if it had trained.

Measured here: with ``training.learning_rate=1e6`` a LoRA run's loss goes to ln|V| (the uniform guess) and its
gradients to exactly 0 within a few steps, and the run used to save that adapter and exit 0; with 1e38 Adam
overflows the weights. The Trainer only logs (``logging_nan_inf_filter`` even hides non-finite losses). The guard
sees every optimiser step's loss and gradient norm (``SFTTrainer`` feeds it) and raises :class:`TrainingDiverged`
with the step, the data lines of the last batch and what to change. The run folder keeps the checkpoints written
before; the diverged weights are not saved.
"""
from __future__ import annotations

import math
from typing import Any, Optional

from ..errors import UserError

__all__ = ["DivergenceGuard", "TrainingDiverged"]


class TrainingDiverged(UserError):
    """The loss or the gradients say the run is no longer learning; the message says where and what to change."""


class DivergenceGuard:
    """Decides after each optimiser step, from the step's loss and its gradient norm (before clipping).

    Args:
        learning_rate: for the advice.
        fp16: float16 mixed precision, where a non-finite gradient is the loss scaler's business (it skips the step
            and lowers the scale), so only ``patience`` of them in a row count.
        patience: consecutive steps of zero gradients, or of a loss far above its start, that count as diverged.

    "Far above its start" is above ``start + max(2, start)`` nats, ``start`` being the mean loss of the first
    ``patience`` steps: at least double and 2 nats more, which noisy batches of a run that is learning do not
    reach, while a blown-up run goes to ln|V| (~10-12) or beyond.
    """

    def __init__(self, learning_rate: float, fp16: bool = False, patience: int = 5):
        self.learning_rate, self.fp16, self.patience = learning_rate, fp16, patience
        self.lines: Any = None
        self._loss, self._first = 0.0, []
        self._zero = self._high = self._non_finite = 0

    def add_loss(self, loss, lines=None) -> None:
        """One micro-batch's loss (the step's loss is their sum) and the data lines it held. Tensors are kept as
        they are (on the GPU): the loss is read back once per optimiser step, the lines only for the message."""
        self._loss = self._loss + (loss.detach() if hasattr(loss, "detach") else loss)
        if lines is not None:
            self.lines = lines

    def step(self, step: int, grad_norm: Optional[float]) -> None:
        """Called with each optimiser step's gradient norm, before the optimiser applies it.

        Raises:
            TrainingDiverged: the step's loss or gradients are non-finite, or zero gradients or a loss far above
                its start lasted ``patience`` steps.
        """
        loss, self._loss = float(self._loss), 0.0
        norm = None if grad_norm is None else float(grad_norm)
        if not math.isfinite(loss):
            self._stop(step, f"the loss is {loss}")
        if norm is not None and not math.isfinite(norm):
            self._non_finite += 1
            if not self.fp16 or self._non_finite >= self.patience:  # raised before the optimiser applies it
                times = f" for {self._non_finite} steps" if self.fp16 else ""
                self._stop(step, f"the gradient norm is {norm}{times}")
        else:
            self._non_finite = 0
        self._zero = self._zero + 1 if norm == 0.0 else 0
        if self._zero >= self.patience:
            self._stop(step, f"the gradients have been exactly 0 for {self._zero} steps (loss {loss:.2f}): the model "
                             "has stopped learning")
        if len(self._first) < self.patience:
            self._first.append(loss)
            return
        start = sum(self._first) / len(self._first)
        self._high = self._high + 1 if loss > start + max(2.0, start) else 0
        if self._high >= self.patience:
            self._stop(step, f"the loss has been far above its start for {self._high} steps ({loss:.2f}, it started "
                             f"at {start:.2f})")

    def finish(self, step: int) -> None:
        """Called when training ends: a run that ends while a rule is firing (its last steps had zero gradients, or
        a loss far above its start) has not trained, however short it was, and is not saved as if it had.

        Raises:
            TrainingDiverged: the last step had zero gradients or a loss far above its start.
        """
        if self._zero:
            self._stop(step, f"the gradients were exactly 0 for the last {self._zero} steps of the run: the model "
                             "had stopped learning")
        if self._high:
            self._stop(step, f"the loss was far above its start for the last {self._high} steps of the run")

    def _stop(self, step: int, what: str) -> None:
        held = self.lines.tolist() if hasattr(self.lines, "tolist") else self.lines
        lines = f" The last batch held the examples at lines {held} of the training data." if held else ""
        raise TrainingDiverged(
            f"Training diverged at step {step}: {what}.{lines} Lower training.learning_rate (now "
            f"{self.learning_rate:g}; LoRA usually trains at 1e-4 to 3e-4, full fine-tuning at 1e-5) or "
            "training.max_grad_norm, check those examples, and prefer bf16 or fp32 to fp16. The diverged weights "
            "were not saved; checkpoints written before this step are kept.")
