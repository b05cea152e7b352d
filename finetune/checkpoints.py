"""Surviving interruption: stop cleanly on SIGINT/SIGTERM with a checkpoint, and resume from the last good one.

transformers writes a checkpoint folder file by file, so a job killed while saving leaves a folder that looks
like a checkpoint but is not. Every checkpoint that finished saving gets a ``COMPLETE`` marker (written after
the trainer state, the last file), and resuming only ever picks a marked one.
"""
from __future__ import annotations

import logging
import re
import signal
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

__all__ = ["GracefulStop", "MarkComplete", "latest_checkpoint", "latest_run_dir", "COMPLETE"]

logger = logging.getLogger(__name__)
COMPLETE = "COMPLETE"


class GracefulStop(TrainerCallback):
    """On SIGINT/SIGTERM: finish the current step, save a checkpoint, stop. A second signal stops at once."""

    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_train_end(self, args, state, control, **kwargs):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received:  # asked twice: the user means it
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint after this step, then stopping (again to abort).",
                       self.received)

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        return control


class MarkComplete(TrainerCallback):
    """Mark a checkpoint folder complete once everything in it was written."""

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            (folder / COMPLETE).write_text(f"step {state.global_step}\n")


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    """The newest checkpoint of ``run_dir`` that finished saving (incomplete ones are skipped, with a warning)."""
    folders = sorted((p for p in Path(run_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
                     key=lambda p: int(p.name.split("-")[1]), reverse=True)
    for folder in folders:
        if (folder / COMPLETE).exists():
            return folder
        logger.warning("Skipping %s: it was not completely written (interrupted while saving?).", folder)
    return None


def latest_run_dir(name: str, root: str | Path = "runs") -> Optional[Path]:
    """The most recent ``runs/<name>-<timestamp>`` folder."""
    runs = sorted(Path(root).glob(f"{name}-*"), key=lambda p: p.name)
    return runs[-1] if runs else None
