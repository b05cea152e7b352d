"""What a run folder holds and how to read it, without importing torch or transformers (the web app lists runs
with these and starts in well under a second): the claim, the checkpoint marker, ``status.json``, the newest
complete checkpoint and the newest run of a recipe."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Optional

from ..errors import CorruptFileError
from ..safetensors_check import check_safetensors_in

__all__ = ["CLAIM", "COMPLETE", "STATUS_FILE", "claim_holder", "latest_checkpoint", "latest_run_dir",
           "process_alive", "read_status"]

logger = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
CLAIM = ".finetune-claim"
"""Created exclusively (``O_EXCL``) inside a run folder by the process that trains there, holding its pid, for the
run's life: checking that a folder is empty and then using it are two steps, and two runs started together with the
same ``training.output_dir`` both passed the check (their ``logs.jsonl`` interleaved). A claim whose process is gone
(killed) is taken over (``runs/folder.py``)."""
STATUS_FILE = "status.json"
"""Written by the run (``status.RunStatus``): running, finished, stopped or failed, with the step and the error."""


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
    holder = claim_holder(folder)
    return holder is not None and (pid is None or holder == pid) and process_alive(holder)


def claim_holder(folder: Path) -> Optional[int]:
    """The pid in ``folder``'s :data:`CLAIM`, or ``None`` when there is none (or it is being written this instant)."""
    try:
        return int((Path(folder) / CLAIM).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
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
