"""The run folder: claiming and probing it before any compute, checking a resume against the recipe it continues,
the space a run will need, the template and recipe saved beside the weights (``write_run_files``), checkpoints
marked complete and the stop on SIGINT/SIGTERM that leaves one, ``status.json`` (running, finished, stopped,
failed), and the rescue when the final save fails. It builds on the base layer alone, so training, the methods and
the commands above it all reach the folder through here.

``files`` reads a run folder without torch or transformers; the rest imports transformers' ``TrainerCallback``
(seconds). The names below load their module on first use, so ``import finetune.runs.files`` stays light.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .checkpoints import MarkComplete, missing_state, write_best
    from .files import CLAIM, COMPLETE, STATUS_FILE, latest_checkpoint, latest_run_dir, read_status
    from .folder import (
        RunFolder,
        check_free_space,
        expected_bytes,
        open_run_folder,
        save_or_rescue,
        write_run_files,
    )
    from .status import RunStatus
    from .stopping import GracefulStop

_HOME = {
    "files": ["CLAIM", "COMPLETE", "STATUS_FILE", "latest_checkpoint", "latest_run_dir", "read_status"],
    "checkpoints": ["MarkComplete", "missing_state", "write_best"],
    "stopping": ["GracefulStop"],
    "folder": ["RunFolder", "check_free_space", "expected_bytes", "open_run_folder", "save_or_rescue",
               "write_run_files"],
    "status": ["RunStatus"],
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}
__all__ = ["CLAIM", "COMPLETE", "GracefulStop", "MarkComplete", "RunFolder", "RunStatus", "STATUS_FILE",
           "check_free_space", "expected_bytes", "latest_checkpoint", "latest_run_dir", "missing_state",
           "open_run_folder", "read_status", "save_or_rescue", "write_best", "write_run_files"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
