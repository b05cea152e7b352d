"""Surviving interruption: stop cleanly on SIGINT/SIGTERM with a checkpoint, and resume from the last good one.

transformers writes a checkpoint folder file by file, so a job killed while saving leaves a folder that looks
like a checkpoint but is not. Every checkpoint that finished saving gets a ``COMPLETE`` marker (written after
the trainer state, the last file), and resuming only ever picks a marked one.
"""
from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from .files import CLAIM, COMPLETE, latest_checkpoint, latest_run_dir

__all__ = ["GracefulStop", "MarkComplete", "latest_checkpoint", "latest_run_dir", "missing_state", "write_best",
           "CLAIM", "COMPLETE"]

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


def missing_state(folder: Path) -> list[str]:
    """The files an exact resume needs that ``folder`` lacks: the optimizer's moments, the learning-rate schedule,
    the RNG states and the trainer's step counter (DeepSpeed keeps the first two in ``global_step*/``, FSDP its
    optimizer in ``optimizer_0/``)."""
    engine = any(folder.glob("global_step*"))
    needed = {
        "optimizer.pt": engine or any((folder / name).exists()
                                      for name in ("optimizer.pt", "optimizer.bin", "optimizer_0")),
        "scheduler.pt": engine or (folder / "scheduler.pt").exists(),
        "rng_state.pth": any(folder.glob("rng_state*.pth")),
        "trainer_state.json": (folder / "trainer_state.json").exists(),
    }
    return [name for name, present in needed.items() if not present]


class MarkComplete(TrainerCallback):
    """Mark a checkpoint folder complete once everything in it was written: the weights and every file an exact
    resume needs (a checkpoint without them is left unmarked, so ``--resume`` passes over it)."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            return
        missing = missing_state(folder)
        if missing:
            logger.warning("%s lacks %s: not marked complete, a resume will not use it.", folder, ", ".join(missing))
            return
        (folder / COMPLETE).write_text(f"step {state.global_step}\n")


def write_best(trainer, output_dir: Path) -> None:
    """``best.json``: the checkpoint ``metric_for_best_model`` picked (the run folder holds it when
    ``load_best_model_at_end``), for the report and for anyone choosing a checkpoint later."""
    state, args = trainer.state, trainer.args
    if state.best_model_checkpoint and trainer.is_world_process_zero():
        checkpoint = Path(state.best_model_checkpoint)
        (output_dir / "best.json").write_text(json.dumps({
            "checkpoint": checkpoint.name, "step": int(checkpoint.name.rsplit("-", 1)[-1]),
            "metric": args.metric_for_best_model, "value": state.best_metric,
            "loaded_at_end": bool(args.load_best_model_at_end)}, indent=2))
