"""``status.json``: what a run is doing, written by the run itself for whoever looks at its folder later.

The web app lists runs from their folders alone (it may have been closed while they trained, or they were started
from a shell), so each run says whether it is running, finished, stopped with a checkpoint, or failed and why.
A ``running`` record whose process is gone (killed, out of memory) reads as failed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from transformers import TrainerCallback

from .checkpoints import CLAIM, latest_checkpoint

__all__ = ["STATUS_FILE", "RunStatus", "read_status", "STATES"]

STATUS_FILE = "status.json"
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


def read_status(folder: str | Path) -> dict:
    """What ``folder``'s run is doing: its ``status.json``, with a dead ``running`` process read as failed.

    A folder without one (a run older than the file, or not started yet) is judged by what it holds.
    """
    folder = Path(folder)
    try:
        record = json.loads((folder / STATUS_FILE).read_text())
    except (OSError, ValueError):
        record = _judged_by_files(folder)
    if record.get("state") == "running" and not _running(folder, record.get("pid")):
        record = {**record, "state": "failed",
                  "error": f"the process ({record.get('pid')}) ended without saying why (killed, or out of memory)"}
    return record


def _running(folder: Path, pid: Optional[int]) -> bool:
    """Whether process ``pid`` still holds the folder's claim (a recycled pid does not hold the claim)."""
    try:
        holder = int((folder / CLAIM).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    if pid is not None and holder != pid:
        return False
    try:
        os.kill(holder, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _judged_by_files(folder: Path) -> dict:
    if (folder / CLAIM).exists():
        return {"state": "running"}
    if (folder / "samples.json").exists() or any(folder.glob("*.safetensors")):
        return {"state": "finished"}
    if folder.is_dir() and latest_checkpoint(folder) is not None:
        return {"state": "stopped"}
    return {"state": "failed", "error": "no weights and no checkpoint in the folder"}
