"""Where finetune keeps what it makes once and reuses (converted models, tokenized data), and the rule every
command that writes follows before it writes: never over something it did not make.

At the bottom of the import graph, so models and data can both use it without importing each other.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .errors import UsageError

__all__ = ["cache_dir", "check_target"]


def cache_dir(kind: str) -> Path:
    """``$FINETUNE_CACHE/<kind>`` (default ``~/.cache/finetune/<kind>``), created if missing."""
    root = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_target(path: str | Path, owned: Callable[[Path], bool], overwrite: bool, command: str) -> None:
    """Refuse to write to ``path`` when it holds something ``command`` did not write there itself (its own earlier
    output, which ``owned`` recognises, is replaced as users expect). Measured before this check: ``finetune.merge
    RUN OUT`` replaced a ``model.safetensors`` already in OUT, and ``finetune.report`` wrote into a folder that was
    no run.

    Args:
        owned: whether the existing file or folder is this command's earlier output.
        overwrite: the command's ``--overwrite``: replace whatever is there.

    Raises:
        UsageError: naming what is there and the two ways out.
    """
    path = Path(path)
    if overwrite or not path.exists() or owned(path):
        return
    if path.is_dir():
        held = sorted(p.name for p in path.iterdir())
        if not held:
            return
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise UsageError(f"{path} already holds files {command} did not write ({shown}); choose an empty or new "
                         "folder, or pass --overwrite to write over them.")
    raise UsageError(f"{path} already exists and is not {command}'s output; choose another path, or pass "
                     "--overwrite to replace it.")
