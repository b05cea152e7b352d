"""Runs that share a machine's CPU cores: each training process takes its share of the threads.

Measured on this project's 2-core machine (native bf16, the demo recipe, 12-step runs; ``bench/bench_sharing.py``):
alone, 2 threads, 1.46-1.53 s/step. Two runs started together with 2 threads each: 6.9-7.0 s/step each (4.7x),
because OpenMP threads spin waiting at every parallel region for a core the other run holds. With one thread each:
2.26 s/step each (1.5x: the cores are shared, nothing spins). ``OMP_WAIT_POLICY=PASSIVE`` also gave 2.2-2.3 s/step
together, but 2.1-3.0 s/step alone, so it is not used.

So every CPU training registers itself (``$FINETUNE_CACHE/active-runs/<pid>``) and, before every step, takes
``cores // live runs`` threads (at least one): a run alone keeps every core, drops to its share when another run
starts, and takes the cores back when that run ends. What the user set wins: ``OMP_NUM_THREADS`` (torchrun sets it
for several processes per node) or ``FINETUNE_SHARE_CORES=0`` turn this off; on a GPU the CPU threads do not train.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..paths import cache_dir
from ..runs.files import process_alive

__all__ = ["ShareCores", "live_runs"]

logger = logging.getLogger(__name__)


class ShareCores(TrainerCallback):
    """Sets this process's torch threads to its share of the cores, from the runs live on the machine.

    Args:
        cores: the cores this process may use (default: its CPU affinity).
    """

    def __init__(self, cores: int | None = None):
        self.cores = cores or len(os.sched_getaffinity(0))
        self.enabled = (not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ
                        and os.environ.get("FINETUNE_SHARE_CORES", "1") != "0")
        self.folder = cache_dir("active-runs")
        self.marker = self.folder / str(os.getpid())
        self.original = torch.get_num_threads()

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled:
            self.marker.touch()
            self.share()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.enabled:
            self.share()

    def on_train_end(self, args, state, control, **kwargs):
        if self.enabled:
            self.release()

    def share(self) -> int:
        """Take ``cores // live runs`` threads; returns how many."""
        live = live_runs(self.folder)
        threads = max(1, self.cores // max(1, live))
        if threads != torch.get_num_threads():
            logger.info("%d training runs share this machine's %d cores: %d thread%s for this one.",
                        live, self.cores, threads, "" if threads == 1 else "s")
            torch.set_num_threads(threads)
        return threads

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
        torch.set_num_threads(self.original)


def live_runs(folder: Path) -> int:
    """How many registered runs are alive (the markers of processes that died without removing theirs go)."""
    live = 0
    for marker in folder.iterdir():
        if not marker.name.isdigit():
            continue
        if process_alive(int(marker.name)):
            live += 1
        else:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
    return live
