"""Safetensors files checked whole before anything loads them. In the base layer: the base model's folder (models),
checkpoints (runs) and saved runs (inference) are all checked with it.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CorruptFileError

__all__ = ["check_safetensors", "check_safetensors_in"]


def check_safetensors(path: str | Path) -> None:
    """Open ``path``'s header and check it covers the file: a truncated copy fails here, naming itself, rather than
    as a bare ``SafetensorError`` deep inside a load (reads the header only; the tensors stay on disk).

    Raises:
        CorruptFileError: the file is not a whole safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise CorruptFileError(f"{path} is damaged ({err}); it was probably cut short while being written or "
                               "copied. Copy it again, or use an earlier checkpoint.") from None


def check_safetensors_in(folder: str | Path) -> list[Path]:
    """:func:`check_safetensors` on every ``*.safetensors`` file of ``folder``; returns them, sorted."""
    files = sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        check_safetensors(file)
    return files
