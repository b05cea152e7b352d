"""The line between a user's mistake and a bug, and what every command does with each.

A mistake the user can make (a typo in a recipe, a bad data line, a missing model, a full disk) raises a
:class:`UserError` whose message is the whole story: which file, line or field, and what to do. Every command
(``finetune.run``, ``evaluate``, ``chat``, ``merge``, ``data``, ``export``) runs its body in :func:`guarded`, which
prints that message as one line and exits with status 2; a traceback is for bugs, or on request (``--verbose``,
``FINETUNE_VERBOSE=1``) for a bug report. At the bottom of the import graph, so every layer can raise these.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable

__all__ = ["UserError", "UsageError", "RunFolderError", "CorruptFileError", "EXIT_USER_ERROR", "EXIT_INTERRUPTED",
           "add_verbose_flag", "guarded"]

EXIT_USER_ERROR = 2
"""What argparse exits with for a bad command line; the same for every other mistake."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a command stopped by Ctrl-C."""
VERBOSE_ENV = "FINETUNE_VERBOSE"


class UserError(Exception):
    """Something the user can fix; ``str(error)`` says what is wrong (file, line, field) and what to do."""


class UsageError(UserError, ValueError):
    """A value the user gave (a name, a file's content, a command-line option) cannot be used as it is."""


class RunFolderError(UserError):
    """The output folder cannot take this run, or ``--resume`` cannot continue it."""


class CorruptFileError(UserError):
    """A file finetune wrote or reads is damaged (truncated copy, full disk while saving)."""


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help=f"show the traceback of an error, for a bug report (or set {VERBOSE_ENV}=1)")


def guarded(body: Callable[[], int], verbose: bool = False) -> int:
    """``body()``'s exit status; a user's mistake becomes one line on stderr and :data:`EXIT_USER_ERROR`.

    ``OSError`` counts as one: a missing or unwritable path, a full disk. Anything else is a bug and keeps its
    traceback.
    """
    verbose = verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    try:
        return body()
    except (UserError, OSError) as err:
        _close_progress_bars()
        if verbose:  # the traceback for a bug report, and the same exit status as without it
            traceback.print_exc()
        print(f"error: {_describe(err)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _close_progress_bars() -> None:
    """End the progress bars the failure left open (training's, tokenizing's), so the message starts a line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _describe(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.strerror and err.filename:
        return f"{err.filename}: {err.strerror}"  # "runs/x: No space left on device", not "[Errno 28] ..."
    return str(err)
