"""Where finetune keeps what it makes once and reuses: converted models and tokenized data.

At the bottom of the import graph, so models and data can both use it without importing each other.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(kind: str) -> Path:
    """``$FINETUNE_CACHE/<kind>`` (default ``~/.cache/finetune/<kind>``), created if missing."""
    root = Path(os.environ.get("FINETUNE_CACHE", Path.home() / ".cache" / "finetune"))
    path = root / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
