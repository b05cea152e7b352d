"""Checkpoints that can be trusted: marked complete once whole, and the last good one found for a resume (the stop
on SIGINT/SIGTERM that leaves one is ``runs/stopping.py``).

transformers writes a checkpoint folder file by file, so a job killed while saving leaves a folder that looks
like a checkpoint but is not. Every checkpoint that finished saving gets a ``COMPLETE`` marker (written after
the trainer state, the last file), and resuming only ever picks a marked one.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from ..errors import CorruptFileError
from ..safetensors_check import check_safetensors_in

__all__ = ["MarkComplete", "latest_checkpoint", "latest_run_dir", "missing_state", "write_best", "CLAIM", "COMPLETE"]

logger = logging.getLogger(__name__)
COMPLETE = "COMPLETE"
CLAIM = ".finetune-claim"
"""Created exclusively (``O_EXCL``) inside a run folder by the process that trains there, holding its pid, for the
run's life: checking that a folder is empty and then using it are two steps, and two runs started together with the
same ``training.output_dir`` both passed the check (their ``logs.jsonl`` interleaved). A claim whose process is gone
(killed) is taken over (``runs/folder.py``)."""


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


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest checkpoint of ``run_dir`` that finished saving and whose weights are whole (others are skipped,
    with a warning: a marked checkpoint can still be damaged later, by a copy cut short)."""
    folders = sorted((p for p in Path(run_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
                     key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for folder in folders:
        if not (folder / COMPLETE).exists():
            logger.warning("Skipping %s: it was not completely written (interrupted while saving?).", folder)
            continue
        try:
            check_safetensors_in(folder)
        except CorruptFileError as err:
            logger.warning("Skipping %s: %s", folder, err)
            continue
        return folder
    return None


def latest_run_dir(name: str, root: str | Path = "runs") -> Optional[Path]:
    """The most recent ``runs/<name>-<timestamp>[-n]`` folder (``-n``: a later run started in the same second).
    Empty folders are passed over: a run that stopped on bad data leaves its claimed folder empty."""
    pattern = re.compile(re.escape(name) + r"-(\d{8}-\d{6})(?:-(\d+))?")
    runs = [(match.group(1), int(match.group(2) or 1), p) for p in Path(root).glob(f"{name}-*")
            if (match := pattern.fullmatch(p.name)) and any(f.name != CLAIM for f in p.iterdir())]
    return max(runs)[2] if runs else None


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
