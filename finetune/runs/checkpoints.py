"""Checkpoints that can be trusted: marked complete once whole, and the last good one found for a resume (the stop
on SIGINT/SIGTERM that leaves one is ``runs/stopping.py``).

transformers writes a checkpoint folder file by file, so a job killed while saving leaves a folder that looks
like a checkpoint but is not. Every checkpoint that finished saving gets a ``COMPLETE`` marker (written after
the trainer state, the last file), and resuming only ever picks a marked one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from .files import CLAIM, COMPLETE, latest_checkpoint, latest_run_dir

__all__ = ["MarkComplete", "latest_checkpoint", "latest_run_dir", "missing_state", "write_best", "CLAIM", "COMPLETE"]

logger = logging.getLogger(__name__)


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
