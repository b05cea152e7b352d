"""Surviving interruption: on SIGINT/SIGTERM, finish the step, save a checkpoint and stop, on every process alike."""
from __future__ import annotations

import logging
import signal
import time
from typing import Optional

from transformers import TrainerCallback

__all__ = ["GracefulStop"]

logger = logging.getLogger(__name__)


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second signal, a second or more
    after the first, stops at once (sooner it is the same stop delivered twice: a scheduler signals the whole
    process group, and torchrun forwards the signal it got to its workers, which got it too).

    With several processes the decision is shared at every step end (one all-reduce of a flag): a signal that
    reaches the ranks in different steps, or only some of them, still stops all of them after the same step, so
    they save one checkpoint together instead of one rank waiting forever in a collective the others left.
    """

    REPEAT_SECONDS = 1.0

    def __init__(self):
        self.received: Optional[str] = None
        self._previous, self._first = {}, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received:
            if time.monotonic() - self._first >= self.REPEAT_SECONDS:  # asked twice: the user means it
                raise KeyboardInterrupt
            return
        self.received, self._first = signal.Signals(signum).name, time.monotonic()
        logger.warning("%s received: saving a checkpoint after this step, then stopping (again to abort).",
                       self.received)

    def on_step_end(self, args, state, control, **kwargs):
        if _on_any_rank(self.received is not None):
            self.received = self.received or "a signal to another process"
            control.should_save = True
            control.should_training_stop = True
        return control


def _on_any_rank(flag: bool) -> bool:
    """``flag`` or-ed over every process of the job (just ``flag`` without torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
