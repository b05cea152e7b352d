"""``status.json``: what a run is doing, written by the run itself for whoever looks at its folder later.

The web app lists runs from their folders alone (it may have been closed while they trained, or they were started
from a shell), so each run says whether it is running, finished, stopped with a checkpoint, or failed and why
(read back by ``files.read_status``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from .files import STATUS_FILE

__all__ = ["RunStatus", "STATES"]

STATES = ("running", "finished", "stopped", "failed")


class RunStatus(TrainerCallback):
    """Writes ``status.json`` into the run folder: the state, the process, the step reached of how many.

    Args:
        folder: the run folder.
        enabled: whether this process writes (the first process only, as for every file of the folder).
    """

    def __init__(self, folder: Path, enabled: bool = True):
        # Under torchrun every process holds the first one's folder decision; only the first writes.
        self.path, self.enabled = Path(folder) / STATUS_FILE, enabled and os.environ.get("RANK", "0") == "0"
        self.record: dict = {}

    def set(self, state: str, **fields) -> None:
        """Record ``state`` (one of :data:`STATES`) and ``fields``, keeping what earlier calls recorded."""
        self.record.update(state=state, pid=os.getpid(), updated=time.time(), **fields)
        if not self.enabled:
            return
        partial = self.path.with_name(f".{STATUS_FILE}.partial")
        partial.write_text(json.dumps(self.record, indent=2, ensure_ascii=False))
        partial.replace(self.path)  # a reader never sees half a file

    def failed(self, err: BaseException) -> None:
        """Record why the run ended early: the one-line message a user error prints, or the exception's type."""
        if isinstance(err, KeyboardInterrupt):
            self.set("stopped", error="aborted by a second signal; checkpoints already written are kept")
            return
        from ..errors import UserError

        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        self.set("failed", error=message.strip().splitlines()[0] if message.strip() else type(err).__name__)

    def on_train_begin(self, args, state, control, **kwargs):
        self.set("running", step=state.global_step, max_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.set(self.record.get("state", "running"), step=state.global_step)
