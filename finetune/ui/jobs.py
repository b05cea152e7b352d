"""Runs as the web app sees them: launched as ``python -m finetune.run`` processes of their own, found again in
the runs folder, stopped the way a scheduler stops them, resumed and exported by the same commands a user types.

A run launched here outlives the web app (its own session, its output in ``runs/.ui/<run>.log``); everything the
app shows is read back from the run folder (``status.json``, ``logs.jsonl``, ``samples.json``), so runs started
from a shell appear too, and closing and reopening the app loses nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ..errors import RunFolderError, UsageError
from ..runs.files import CLAIM, claim_holder, latest_checkpoint, read_status

__all__ = ["Jobs"]

LAUNCHES = ".ui"
"""Inside the runs folder: one ``<run>.log`` per run launched from the web app (its output, every launch)."""


class Jobs:
    """The runs under ``runs`` and the processes this app started.

    Args:
        project: the folder runs are launched from (recipes' relative data paths resolve against it).
        runs: the runs folder.
    """

    def __init__(self, project: Path, runs: Path):
        self.project, self.runs = project.resolve(), runs.resolve()
        self.processes: dict[str, subprocess.Popen] = {}

    def launch(self, recipe_file: Path, overrides: list[str], name: str) -> str:
        """Start training ``recipe_file`` with ``overrides`` into a new ``runs/<name>-<time>`` (or the folder
        ``training.output_dir`` names, which must be under the runs folder and not in use).

        Returns:
            The run's folder name.
        """
        chosen = [o.partition("=")[2] for o in overrides if o.startswith("training.output_dir=")]
        if chosen and chosen[-1]:
            folder = (self.project / chosen[-1]).resolve()
            if folder.parent != self.runs:
                raise UsageError(f"training.output_dir={chosen[-1]}: runs launched here go into a folder of "
                                 f"{self.runs}; leave it empty for a new one.")
            self._refuse_in_use(folder)
            if folder.is_dir() and any(folder.iterdir()):  # the run would refuse it too, after loading for seconds
                raise RunFolderError(f"{folder.name} already holds a run; resume it from the Runs page, or leave "
                                     "training.output_dir empty for a new folder.")
            overrides = [o for o in overrides if not o.startswith("training.output_dir=")]
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder, n = self.runs / f"{name}-{stamp}", 1
            while folder.exists() or self._log(folder.name).exists():
                n += 1
                folder = self.runs / f"{name}-{stamp}-{n}"
        self._start(folder.name, [str(recipe_file), *overrides, f"training.output_dir={folder}"])
        return folder.name

    def stop(self, run: str) -> None:
        """SIGTERM, as a scheduler or Ctrl-C stops a run: it finishes the step, saves a checkpoint and says how to
        resume (``finetune.runs.stopping.GracefulStop``)."""
        folder = self.folder(run)
        pid = claim_holder(folder)
        if pid is None or read_status(folder).get("state") != "running":
            raise RunFolderError(f"{run} is not running; nothing to stop.")
        os.kill(pid, signal.SIGTERM)

    def resume(self, run: str) -> None:
        """Continue a stopped run from its latest complete checkpoint, with the recipe that checkpoint saved."""
        folder = self.folder(run)
        self._refuse_in_use(folder)
        checkpoint = latest_checkpoint(folder)
        if checkpoint is None:
            raise RunFolderError(f"{run} has no complete checkpoint to resume from.")
        self._start(run, [str(checkpoint / "recipe.json"), f"training.output_dir={folder}", "--resume"])

    def export(self, run: str, quant: str = "f16") -> dict:
        """``python -m finetune.export`` into ``<run>/export/<run>.gguf`` (and its Ollama Modelfile)."""
        folder = self.folder(run)
        out = folder / "export" / f"{run}-{quant}.gguf"
        out.parent.mkdir(exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "finetune.export", str(folder), str(out), "--quant", quant,
                               "--overwrite"], cwd=self.project, capture_output=True, text=True,
                              env=_child_env())
        if done.returncode != 0:
            raise UsageError((done.stderr.strip().splitlines() or ["export failed"])[-1].removeprefix("error: "))
        return {"gguf": str(out.relative_to(self.runs)), "bytes": out.stat().st_size, "output": done.stdout.strip()}

    def list(self) -> list[dict]:
        """Every run, newest first, with its state (a launch that died before it made its folder included)."""
        for name, process in list(self.processes.items()):
            if process.poll() is not None:  # reap it: a zombie would still answer to kill(pid, 0)
                del self.processes[name]
        names = {p.name for p in self.runs.iterdir() if p.is_dir() and p.name != LAUNCHES} if self.runs.is_dir() \
            else set()
        names |= {p.stem for p in (self.runs / LAUNCHES).glob("*.log")}
        rows = [self.describe(name) for name in names]
        return sorted((r for r in rows if r is not None), key=lambda r: r["started"], reverse=True)

    def describe(self, run: str) -> Optional[dict]:
        folder, log = self.runs / run, self._log(run)
        if not folder.is_dir() and not log.exists():
            return None
        if (folder / "status.json").exists() or (folder / "recipe.json").exists() or (folder / CLAIM).exists():
            status = read_status(folder)
        elif run in self.processes:
            status = {"state": "starting"}
        elif log.exists():
            status = {"state": "failed", "error": _error_line(log)}
        else:
            return None  # a folder that is no run (nothing of finetune's in it)
        if status.get("state") == "failed" and log.exists() and not status.get("error"):
            status["error"] = _error_line(log)
        # A stopped run, or one without a recipe.json yet, is described by its latest checkpoint (looked up once: it
        # reads every checkpoint's safetensors header, and the page asks every 2 s).
        resumable = status.get("state") in ("stopped", "failed")
        needs_checkpoint = folder.is_dir() and (resumable or not (folder / "recipe.json").exists())
        checkpoint = latest_checkpoint(folder) if needs_checkpoint else None
        record = _json(folder / "recipe.json") or (_json(checkpoint / "recipe.json") if checkpoint else None) or {}
        started = min((p.stat().st_mtime for p in (folder, log) if p.exists()), default=0.0)
        return {"name": run, **status, "started": started, "recipe": record.get("name"),
                "method": (record.get("method") or {}).get("name"), "model": (record.get("model") or {}).get("path"),
                "chat": status.get("state") == "finished" and (folder / "template.json").exists(),
                "resumable": resumable and checkpoint is not None,
                "log": str(log.relative_to(self.runs)) if log.exists() else None}

    def logs(self, run: str) -> list[dict]:
        """``logs.jsonl``: one record per logging step or evaluation (a line being written is skipped)."""
        path = self.folder(run) / "logs.jsonl"
        records = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def samples(self, run: str) -> Optional[dict]:
        return _json(self.folder(run) / "samples.json")

    def finished(self) -> dict[str, Path]:
        """The runs that can answer (the web app's chat and ``/v1/models``)."""
        if not self.runs.is_dir():
            return {}
        return {p.name: p for p in sorted(self.runs.iterdir()) if p.is_dir() and (p / "template.json").exists()
                and (p / "recipe.json").exists() and read_status(p).get("state") == "finished"}

    def folder(self, run: str) -> Path:
        """``runs/<run>``, refused when the name leaves the runs folder."""
        folder = (self.runs / run).resolve()
        if folder.parent != self.runs or run in ("", ".", "..", LAUNCHES):
            raise UsageError(f"{run!r} is not a run folder name under {self.runs}.")
        return folder

    def _refuse_in_use(self, folder: Path) -> None:
        """A folder a live run holds is refused here already; the run's own claim refuses it even if two
        launches race past this check (``finetune.runs.folder``)."""
        if folder.is_dir() and read_status(folder).get("state") == "running":
            raise RunFolderError(f"{folder.name} is in use by another run (process {claim_holder(folder)}); wait for "
                                 "it to end or stop it first.")

    def _start(self, run: str, args: list[str]) -> None:
        log = self._log(run)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as out:
            out.write(f"$ python -m finetune.run {' '.join(args)}\n")
            out.flush()
            # No shell: the form's values are arguments, each parsed by the recipe parser, never by a shell.
            self.processes[run] = subprocess.Popen(
                [sys.executable, "-m", "finetune.run", *args], cwd=self.project, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=_child_env())

    def _log(self, run: str) -> Path:
        return self.runs / LAUNCHES / f"{run}.log"


def _child_env() -> dict:
    # The package as this process imported it (a checkout without an install included).
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root, "PYTHONUNBUFFERED": "1"}


def _error_line(log: Path) -> str:
    """The one-line message a failed command printed (``error: ...``), or its last line."""
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["the process ended without output"])[-1].removeprefix("error: ")


def _json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
