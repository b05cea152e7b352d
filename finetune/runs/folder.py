"""The run folder: claimed and probed before any compute, never shared by two runs, checked before a resume, and
the trained weights kept somewhere even when the final save fails.

Every decision here is made by the first process and shared with the others (under torchrun each process would
otherwise read the clock, or see the folder the first one just made, differently).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from ..errors import CorruptFileError, RunFolderError, UserError
from ..paths import cache_dir
from ..recipe import Recipe, recipe_to_dict
from ..safetensors_check import check_safetensors_in
from .checkpoints import missing_state
from .files import CLAIM, COMPLETE, claim_holder, latest_checkpoint, latest_run_dir, process_alive

__all__ = ["CLAIM", "RunFolder", "open_run_folder", "check_free_space", "expected_bytes", "save_or_rescue",
           "write_run_files"]

logger = logging.getLogger(__name__)

FIXED_ON_RESUME = {"model": {"attn_implementation", "dtype", "trust_remote_code", "allow_pickle"},
                   "data": {"num_proc", "eval"}, "method": set()}
"""Sections a resume cannot change (they shape the weights or the training examples), each with the fields that
may change all the same: kernels, precision, trust flags, held-out data. ``training`` and ``eval`` may change, with
a warning."""


@dataclass
class RunFolder:
    path: Path
    checkpoint: Optional[Path]
    """The checkpoint to resume from; ``None`` for a fresh run."""
    record: dict
    """What ``recipe.json`` says: the recipe the run started with, plus a ``resumed`` entry per resume (the step
    and what changed), so it never claims settings the run did not use."""
    claimed: bool = False
    """Whether this process holds the folder's claim (:data:`CLAIM`), released when the run ends."""

    def release(self) -> None:
        """Give the folder up: the run is over (its files say what it left)."""
        if self.claimed:
            _release(self.path)
            self.claimed = False


def open_run_folder(recipe: Recipe, resume: bool | str = False, dry_run: bool = False,
                    weights_only: bool = False) -> RunFolder:
    """The run's folder, created and probed for writing (for a dry run: only checked, nothing is created).

    Args:
        resume: ``False``, ``True`` (the latest complete checkpoint of ``training.output_dir`` or of the newest
            ``runs/<name>-*``) or a checkpoint folder.
        weights_only: resume from a checkpoint that lacks the optimizer, schedule, RNG or step state, accepting
            that what is missing starts afresh (``--resume-weights-only``).

    Raises:
        RunFolderError: the folder already holds another run, cannot be written, or has nothing to resume (or the
            recipe changed in a way a resume cannot follow).
    """
    return _decided_by_rank_0(lambda: _open(recipe, resume, dry_run, weights_only))


def _open(recipe: Recipe, resume: bool | str, dry_run: bool, weights_only: bool = False) -> RunFolder:
    if resume:
        path, checkpoint = _checkpoint(recipe, resume)
        _check_state(checkpoint, weights_only)
        record = _resumed_record(recipe, checkpoint)
        if not dry_run:
            _claim(path)
        return RunFolder(path, checkpoint, record, claimed=not dry_run)
    output_dir = recipe.training.output_dir
    if output_dir:
        path = Path(output_dir)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"training.output_dir={output_dir} is a file, not a folder; choose another path.")
        _refuse_taken(path)
    else:
        path = Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if dry_run:
        _probe(_nearest_existing(path))
        return RunFolder(path, None, recipe_to_dict(recipe))
    path = _create(path, unique=not output_dir)
    _claim(path)
    try:
        _refuse_taken(path)  # again, now that the folder is ours: another run may have written into it meanwhile
    except RunFolderError:
        _release(path)
        raise
    return RunFolder(path, None, recipe_to_dict(recipe), claimed=True)


def _refuse_taken(path: Path) -> None:
    # The claim, and the write probe of another run checking the same folder this instant, are not a run's files.
    taken = sorted(p.name for p in path.iterdir() if p.name != CLAIM and not p.name.startswith(".finetune-probe-")
                   ) if path.is_dir() else []
    if taken:
        raise RunFolderError(
            f"training.output_dir={path} already holds files ({', '.join(taken[:4])}"
            f"{', ...' if len(taken) > 4 else ''}). Continue that run with --resume, or choose an empty or new "
            "folder (leave training.output_dir empty for a new runs/<name>-<time>).")


def _claim(path: Path) -> None:
    """Take the folder's :data:`CLAIM`, or refuse when a live process holds it."""
    marker = path / CLAIM
    while True:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = claim_holder(path)
            for _ in range(40):  # created an instant ago, its pid not written yet: wait for it (up to 2 s)
                if holder is not None:
                    break
                time.sleep(0.05)
                holder = claim_holder(path)
            if holder is not None and holder != os.getpid() and process_alive(holder):
                raise RunFolderError(f"{path} is in use by another run (process {holder}, training there now); "
                                     "wait for it to end, or choose another training.output_dir.") from None
            with contextlib.suppress(FileNotFoundError):  # ours already, or its process is gone: take it over
                marker.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        atexit.register(_release, path)
        return


def _release(path: Path) -> None:
    marker = path / CLAIM
    if claim_holder(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()


def _create(path: Path, unique: bool) -> Path:
    """Make ``path`` (with ``-2``, ``-3`` ... appended when ``unique`` and a run started in the same second took
    it: ``mkdir`` without ``exist_ok`` is atomic, so two runs can never share a folder) and probe it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate, n = path, 1
        while True:
            try:
                candidate.mkdir(exist_ok=not unique)
                break
            except FileExistsError:
                n += 1
                candidate = path.with_name(f"{path.name}-{n}")
    except OSError as err:
        raise RunFolderError(f"Cannot create the run folder {path}: {err.strerror}. Choose another "
                             "training.output_dir.") from None
    _probe(candidate)
    return candidate


def _probe(folder: Path) -> None:
    """Write and remove a small file, so a read-only or full disk stops the run before any compute."""
    probe = folder / f".finetune-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as err:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise RunFolderError(f"Cannot write to {folder}: {err.strerror}. {_advice(err)}") from None


def _advice(err: OSError) -> str:
    """What to do about a folder that cannot be written, by what went wrong (not "free space" for a permission)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free space there or choose another training.output_dir."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "This user may not write there (or the disk is read-only): choose another training.output_dir."
    return "Choose another training.output_dir."


def _nearest_existing(path: Path) -> Path:
    for folder in [path, *path.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise RunFolderError(f"{folder} is a file, so the run folder {path} cannot be made there.")
            return folder
    return Path(".")


def _checkpoint(recipe: Recipe, resume: bool | str) -> tuple[Path, Path]:
    if not isinstance(resume, bool):
        checkpoint = Path(resume)
        if not (checkpoint / COMPLETE).exists():
            raise RunFolderError(f"--resume {checkpoint}: not a complete checkpoint folder (no {COMPLETE} marker); "
                                 "give a runs/<run>/checkpoint-N folder, or --resume alone for the latest one.")
        check_safetensors_in(checkpoint)
        return checkpoint.parent, checkpoint
    output_dir = recipe.training.output_dir
    run_dir = Path(output_dir) if output_dir else latest_run_dir(recipe.name)
    checkpoint = latest_checkpoint(run_dir) if run_dir and run_dir.is_dir() else None
    if checkpoint is None:
        raise RunFolderError(f"--resume: no complete checkpoint in {run_dir or f'runs/{recipe.name}-*'}; set "
                             "training.save_strategy=steps to write checkpoints, or start a fresh run.")
    logger.info("Resuming from %s", checkpoint)
    return run_dir, checkpoint


def _check_state(checkpoint: Path, weights_only: bool) -> None:
    """A resume that cannot be exact says so: without the optimizer's moments or the schedule, the Trainer would
    silently restart them (measured: the learning rate at step 10 jumped from 3.0e-5 back to 1e-3)."""
    missing = missing_state(checkpoint)
    if not missing:
        return
    if "trainer_state.json" in missing:  # it holds the step the run is at: the Trainer cannot resume without it
        raise RunFolderError(f"--resume: {checkpoint} has no trainer_state.json (the step the run reached), so it "
                             "cannot be resumed, not even from its weights alone; resume from an earlier checkpoint "
                             "or start a fresh run.")
    if not weights_only:
        raise RunFolderError(f"--resume: {checkpoint} has no {', '.join(missing)}, so the run cannot continue "
                             "exactly (the optimizer, learning-rate schedule or random state would restart). To "
                             "continue from its weights alone, use --resume-weights-only.")
    logger.warning("Resuming from the weights of %s alone: %s missing, so that state starts afresh.", checkpoint,
                   ", ".join(missing))


def _resumed_record(recipe: Recipe, checkpoint: Path) -> dict:
    """The checkpoint's ``recipe.json`` with this resume appended; refuses changes a resume cannot follow."""
    saved_file = next((f for f in (checkpoint / "recipe.json", checkpoint.parent / "recipe.json") if f.exists()), None)
    now = recipe_to_dict(recipe)
    if saved_file is None:
        return now
    try:
        saved = json.loads(saved_file.read_text())
    except ValueError as err:
        raise CorruptFileError(f"{saved_file} is damaged ({err}); restore it or start a fresh run.") from None
    changed = {key: [old, new] for key, (old, new) in _differences(saved, now).items()
               if key not in ("training.output_dir", "resumed")}
    refused = [key for key in changed if key.split(".")[0] in FIXED_ON_RESUME
               and key.split(".")[1] not in FIXED_ON_RESUME[key.split(".")[0]]]
    if refused:
        shown = "; ".join(f"{key}: {changed[key][0]!r} -> {changed[key][1]!r}" for key in refused[:4])
        raise RunFolderError(f"--resume: this recipe changes what {checkpoint} was trained with ({shown}). The "
                             "method, the model and the data cannot change in a resumed run; undo the change, or "
                             "start a fresh run.")
    if changed:
        shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
        logger.warning("Resuming with changed settings (recipe.json records them under 'resumed'): %s", shown)
    step = int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint.name.rsplit("-", 1)[-1].isdigit() else None
    return {**saved, "resumed": [*saved.get("resumed", []), {"step": step, "changed": changed}]}


def _differences(old: Any, new: Any, prefix: str = "") -> dict[str, tuple]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = {}
        for key in sorted(set(old) | set(new)):
            out.update(_differences(old.get(key), new.get(key), f"{prefix}{key}."))
        return out
    return {} if old == new else {prefix[:-1]: (old, new)}


def write_run_files(output_dir: str | Path, template, recipe) -> None:
    """Save the template and the resolved recipe beside the weights, so inference uses the training format.

    Args:
        recipe: a ``Recipe``, or the dict ``recipe.json`` should hold (a resumed run's ``RunFolder.record``: the
            recipe it started with and what each resume changed).
    """
    output_dir = Path(output_dir)
    if template is not None:
        (output_dir / "template.json").write_text(json.dumps(template.to_dict(), indent=2, ensure_ascii=False))
    if recipe is not None:
        record = recipe if isinstance(recipe, Mapping) else recipe_to_dict(recipe)
        (output_dir / "recipe.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))


REPORT_BYTES = 4 << 20
"""What a run writes beside its weights: logs, plots, ``report.html``, samples, the audit (a few hundred KB on the
demo; bounded with room to spare)."""


def expected_bytes(model, args, whole_model: bool, tokenizer_dir: Optional[Path] = None) -> int:
    """What the run will write: the trained weights (the whole model for full fine-tuning), the tokenizer files
    saved beside them and the report, and per kept checkpoint the weights, AdamW's two moments in float32 and the
    tokenizer again. A save that fails late fails in whichever writer runs out of room, the tokenizer's included
    (a 128k-token ``tokenizer.json`` is 9-17 MB), so everything is counted."""
    params = [p for p in model.parameters() if whole_model or p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokenizer = sum(f.stat().st_size for f in Path(tokenizer_dir).glob("*") if f.is_file() and (
        f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")))) if tokenizer_dir else 0
    final = weights + tokenizer + REPORT_BYTES
    if args.save_strategy == "no":
        return final
    kept = (args.save_total_limit or 3) + 1  # one more exists while the oldest is being rotated out
    return final + kept * (weights + 8 * trainable + tokenizer)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start when ``folder``'s disk cannot hold what the run will write."""
    free = shutil.disk_usage(folder).free
    if free < needed * 1.1 + 2**20:
        raise RunFolderError(f"{folder} has {free / 2**20:,.0f} MiB free; this run will write about "
                             f"{needed / 2**20:,.0f} MiB (weights and checkpoints). Free space, lower "
                             "training.save_total_limit, or choose another training.output_dir.")


def save_or_rescue(save: Callable[[str], None], folder: Path) -> None:
    """``save(folder)``; if that fails (a full disk after hours of training), save into the cache or the temp
    folder instead and stop with where the weights are.

    Raises:
        RunFolderError: the final save failed (the message says where the weights went instead).
    """
    # Whatever the save raises: the tokenizer's Rust writer reports a full disk as a bare ``Exception("No space
    # left on device (os error 28)")``, not an OSError, and hours of training are not lost to a traceback.
    try:
        save(str(folder))
        return
    except Exception as err:  # noqa: BLE001
        failure = _save_failure(err, folder)
    tried = []
    for root in (lambda: cache_dir("rescued"), lambda: Path(tempfile.gettempdir())):
        try:  # making the cache folder can fail on the same full disk: inside the try too
            rescue = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=root()))
            save(str(rescue))
        except Exception as err:  # noqa: BLE001
            tried.append(_save_failure(err, root()))
            continue
        raise RunFolderError(f"The trained weights could not be saved to {folder} ({failure}); they were saved to "
                             f"{rescue} instead. Free space, then move that folder's files into {folder}.")
    raise RunFolderError(f"The trained weights could not be saved to {folder} ({failure}) nor anywhere else "
                         f"({'; '.join(tried)}); checkpoints already written in {folder} are kept.")


def _save_failure(err: BaseException, where: Path) -> str:
    if isinstance(err, OSError):
        return f"{err.filename or where}: {err.strerror or err}"
    return f"{where}: {err}"


def _decided_by_rank_0(decide: Callable[[], RunFolder]) -> RunFolder:
    """``decide()`` on the first process, its result (or its error) on every process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    shared: list = [None]
    if dist.get_rank() == 0:
        try:
            shared[0] = decide()
        except UserError as err:
            shared[0] = err
    dist.broadcast_object_list(shared, src=0)
    if isinstance(shared[0], UserError):
        raise shared[0]
    return shared[0]
