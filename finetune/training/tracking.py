"""Experiment tracking: Weights & Biases, TensorBoard and a plain ``logs.jsonl`` in the run folder.

The trackers named in ``training.report_to`` are added here as callbacks rather than through
``TrainingArguments.report_to``, for two reasons: the Trainer puts its own integrations *before* user callbacks,
so they would miss the real tokens/s and supervised fraction that :class:`RunLog` adds to every log; and
W&B and TensorBoard must write into the run folder (offline W&B unless the user is logged in), which their
stock callbacks only do through process-wide environment variables.
"""
from __future__ import annotations

import json
import logging
import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback
from typing_extensions import override  # typing.override from Python 3.12

from ..errors import UsageError
from ..recipe import PACKED_ROWS, Recipe, recipe_to_dict

__all__ = ["OWN_TRACKERS", "RunLog", "check_trackers", "finish_tracking", "parse_report_to", "tokens_seen_mode",
           "tracking_callbacks", "training_report_to", "wandb_mode"]

logger = logging.getLogger("finetune")

OWN_TRACKERS = ("wandb", "tensorboard")
"""Trackers this module sets up itself; ``all`` means both of them."""
LOGS_FILE = "logs.jsonl"
TENSORBOARD_DIR = "tensorboard"


def parse_report_to(report_to: str) -> list[str]:
    """``"none"``, ``"all"``, one name or a comma list -> tracker names, in order and without duplicates."""
    names = [n.strip().lower() for n in report_to.split(",") if n.strip()]
    out = []
    for name in names:
        for resolved in OWN_TRACKERS if name == "all" else () if name == "none" else (name,):
            if resolved not in out:
                out.append(resolved)
    return out


def training_report_to(report_to: str) -> list[str]:
    """What to pass as ``TrainingArguments.report_to`` for ``training.report_to``: the integrations not added here.

    W&B and TensorBoard come from :func:`tracking_callbacks`; any other name (``mlflow``, ...) goes to the
    Trainer unchanged and sees the Trainer's own metrics only.
    """
    return [n for n in parse_report_to(report_to) if n not in OWN_TRACKERS]


def tokens_seen_mode(batching: str) -> str:
    """``TrainingArguments.include_num_input_tokens_seen`` that counts exactly the real tokens.

    Padded batches are counted through their attention mask; padding-free rows have no padding (and no attention
    mask), so every token is real, whereas "non_padding" would fall back to dropping tokens equal to the pad id,
    which miscounts EOS when pad == EOS.
    """
    return "all" if batching in PACKED_ROWS else "non_padding"


_WANDB_ADVICE = ("fix WANDB_API_KEY, or set WANDB_MODE=offline (the run logs into <run>/wandb for `wandb sync` "
                 "later), or leave wandb out of training.report_to")


def check_trackers(report_to: str) -> None:
    """What W&B would refuse once training has started, found before any compute (and in ``--dry-run``): an API key
    in a format it rejects (measured: an invalid WANDB_API_KEY ended the run in wandb's traceback at the first step).

    Raises:
        UsageError: the key's problem, in W&B's own words, and what to do.
    """
    key = os.environ.get("WANDB_API_KEY")
    if "wandb" not in parse_report_to(report_to) or not key or wandb_mode() != "online":
        return
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # another wandb layout: the check at setup below still turns a refusal into one line
        return
    problem = check_api_key(key)
    if problem:
        raise UsageError(f"training.report_to includes wandb, but W&B refuses the key: {problem} Then "
                         f"{_WANDB_ADVICE}.")


def tracking_callbacks(recipe: Recipe, audit, output_dir: str | Path) -> list[TrainerCallback]:
    """The callbacks for a run: :class:`RunLog` first (it enriches the logs the trackers then receive).

    Args:
        recipe: the resolved recipe; ``training.report_to`` picks the trackers, and W&B stores it as the config.
        audit: the train split's :class:`~finetune.data.LabelAudit` (its supervised-token fraction is logged).
        output_dir: the run folder; everything is written inside it.
    """
    output_dir = Path(output_dir)
    names = parse_report_to(recipe.training.report_to)
    callbacks: list[TrainerCallback] = [RunLog(output_dir / LOGS_FILE, audit.supervised_fraction if audit else None)]
    if "wandb" in names:
        callbacks.append(RunFolderWandb(output_dir, project=os.environ.get("WANDB_PROJECT") or recipe.name,
                                        config=recipe_to_dict(recipe)))
    if "tensorboard" in names:
        tensorboard = TensorBoardCallback()
        tensorboard.logging_dir = str(output_dir / TENSORBOARD_DIR)  # read at its first write, not before
        callbacks.append(tensorboard)
    return callbacks


def finish_tracking(callbacks: list[TrainerCallback]) -> None:
    """Close the trackers after the last evaluation (the Trainer's ``on_train_end`` comes before it)."""
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            callback.tb_writer.close()
            callback.tb_writer = None
        elif isinstance(callback, RunFolderWandb) and callback.run is not None:
            callback.run.finish()
            callback.run = None


class RunLog(TrainerCallback):
    """Adds real tokens/s and the supervised-token fraction to training logs, and appends every log to a file.

    Tokens/s is measured between two training logs from ``state.num_input_tokens_seen`` (set
    ``include_num_input_tokens_seen``, see :func:`tokens_seen_mode`), minus the time spent in evaluation, so
    it is the training throughput of that interval rather than the run's average so far.

    Args:
        path: the JSON-lines file, one object per log with its ``step``; reports are drawn from it.
        supervised_fraction: share of the train tokens that carry a label, from the label audit.
    """

    def __init__(self, path: Path, supervised_fraction: float | None = None):
        self.path, self.supervised_fraction = Path(path), supervised_fraction
        self._tokens, self._time, self._eval_seconds = 0, None, 0.0

    @override
    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens, self._time, self._eval_seconds = state.num_input_tokens_seen, time.perf_counter(), 0.0

    @override
    def on_log(self, args, state, control, logs=None, **kwargs):
        """Enrich the shared ``logs`` dict in place (later callbacks see it), then write it down."""
        if logs is None:
            return
        if "eval_runtime" in logs:
            self._eval_seconds += logs["eval_runtime"]
        if "loss" in logs and self._time is not None:
            now = time.perf_counter()
            seconds = now - self._time - self._eval_seconds
            if args.include_num_input_tokens_seen not in ("no", False) and seconds > 0:
                logs["tokens_per_second"] = round((state.num_input_tokens_seen - self._tokens) / seconds, 2)
            if self.supervised_fraction is not None:
                logs["supervised_fraction"] = round(self.supervised_fraction, 4)
            self._tokens, self._time, self._eval_seconds = state.num_input_tokens_seen, now, 0.0
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({**logs, "step": state.global_step}, default=str) + "\n")


class RunFolderWandb(WandbCallback):
    """``WandbCallback`` whose run lives in the run folder, with the recipe as config.

    Offline unless the user is logged in (:func:`wandb_mode`), so a run never blocks on a login prompt or a
    missing network; ``wandb sync <run>/wandb/offline-run-*`` uploads it later.

    Args:
        output_dir: the run folder; W&B writes ``<output_dir>/wandb/``, and the run is named after the folder.
        project: the W&B project.
        config: the resolved recipe, stored as the run's config.
    """

    def __init__(self, output_dir: Path, project: str, config: dict):
        super().__init__()
        self.output_dir, self.project, self.config, self.run = Path(output_dir), project, config, None

    @override
    def setup(self, args, state, model, **kwargs):
        """Start our run first, so the library's setup adds its arguments to it instead of starting its own."""
        if state.is_world_process_zero and self.run is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            mode = wandb_mode()
            try:
                self.run = self._wandb.init(project=self.project, name=self.output_dir.name,
                                            dir=str(self.output_dir), mode=mode, config={"recipe": self.config},
                                            reinit="finish_previous")
            except Exception as err:  # noqa: BLE001 - wandb's own errors (authentication, network): one line
                if not type(err).__module__.startswith("wandb"):
                    raise
                raise UsageError(f"W&B did not start ({type(err).__name__}: {err}); {_WANDB_ADVICE}.") from None
            logger.info("W&B run %s (%s) in %s", self.output_dir.name, mode, self.output_dir / "wandb")
        super().setup(args, state, model, **kwargs)


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; else online when an API key is configured (env or netrc), offline otherwise."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return "online" if netrc.netrc(path).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"
