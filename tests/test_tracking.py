"""Tracking on tiny random models: logs.jsonl, TensorBoard events, offline W&B, and no secret in the run folder."""
import dataclasses
import json
from pathlib import Path

import pytest

from finetune.train import train
from finetune.training.tracking import parse_report_to, tokens_seen_mode, training_report_to, wandb_mode

SECRET = "fake-secret-123"


def tracked_run(monkeypatch, recipe) -> Path:
    """``train(recipe)``: train.py wires the tracking callbacks, report_to, token count and audit.json itself."""
    return train(recipe).output_dir


def tiny_tracked_recipe(model_path, train_file, tmp_path, report_to="none", **training):
    from test_trainer import tiny_recipe

    recipe = tiny_recipe(model_path, train_file, tmp_path)
    training = {"report_to": report_to, "eval_strategy": "steps", "eval_steps": 2, **training}
    return dataclasses.replace(recipe, training=dataclasses.replace(recipe.training, **training),
                               eval=dataclasses.replace(recipe.eval, samples=1))


@pytest.fixture()
def isolated_wandb(tmp_path, monkeypatch):
    """W&B with its config, cache and login lookups inside tmp_path: nothing reaches the user's home or network."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "WANDB_BASE_URL", "NETRC", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "home" / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "home" / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "home").mkdir()


@pytest.mark.parametrize("text, expected", [
    ("none", []), ("wandb", ["wandb"]), ("all", ["wandb", "tensorboard"]),
    ("tensorboard, wandb,tensorboard", ["tensorboard", "wandb"]), ("wandb,mlflow", ["wandb", "mlflow"]),
])
def test_report_to_is_parsed(text, expected):
    assert parse_report_to(text) == expected


def test_only_foreign_integrations_go_to_training_arguments():
    assert training_report_to("all,mlflow") == ["mlflow"] and training_report_to("tensorboard") == []
    assert tokens_seen_mode("padding_free") == "all" and tokens_seen_mode("padded") == "non_padding"


def test_wandb_is_offline_without_a_login_and_online_with_one(isolated_wandb, tmp_path, monkeypatch):
    assert wandb_mode() == "offline"
    (tmp_path / "home" / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    (tmp_path / "home" / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_tensorboard_and_logs_jsonl_get_loss_lr_grad_norm_tokens_per_second_and_eval(
        tiny_llama, alpaca_file, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked_run(monkeypatch, tiny_tracked_recipe(tiny_llama, alpaca_file, tmp_path, report_to="tensorboard"))
    logs = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
    steps = [entry for entry in logs if "loss" in entry]
    assert [entry["step"] for entry in steps] == [1, 2, 3, 4]
    audit = json.loads((run / "audit.json").read_text())
    for entry in steps:
        assert entry["tokens_per_second"] > 0 and entry["grad_norm"] > 0 and "learning_rate" in entry
        assert entry["supervised_fraction"] == audit["supervised_fraction"]
    # eval before training (step 0) and every 2 steps; the one at the last step is also the after-training one
    assert [entry["step"] for entry in logs if "eval_loss" in entry] == [0, 2, 4]

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
            "train/supervised_fraction", "eval/loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_tokens_seen_are_the_real_tokens(tiny_llama, alpaca_file, tmp_path, monkeypatch):
    recipe = tiny_tracked_recipe(tiny_llama, alpaca_file, tmp_path, report_to="none", num_train_epochs=1.0,
                                 max_steps=-1, eval_strategy="no", per_device_train_batch_size=8)
    for batching in ("padded", "padding_free"):
        run_recipe = dataclasses.replace(
            recipe, data=dataclasses.replace(recipe.data, batching=batching),
            training=dataclasses.replace(recipe.training, output_dir=str(tmp_path / batching)))
        run = tracked_run(monkeypatch, run_recipe)
        audit = json.loads((run / "audit.json").read_text())
        logs = [json.loads(line) for line in (run / "logs.jsonl").read_text().splitlines()]
        # one epoch over the train split: every real token once, whatever the padding
        assert max(e.get("num_input_tokens_seen", 0) for e in logs) == audit["tokens"], batching


def test_wandb_runs_offline_in_the_run_folder_with_the_recipe_and_writes_no_secret(
        isolated_wandb, tiny_llama, alpaca_file, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")  # a key means online; there is no network here
    calls, real_init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or real_init(**kwargs))
    run = tracked_run(monkeypatch, tiny_tracked_recipe(tiny_llama, alpaca_file, tmp_path, report_to="all"))

    assert len(calls) == 1
    assert {k: calls[0][k] for k in ("project", "name", "dir", "mode")} == {
        "project": "tiny", "name": "run", "dir": str(run), "mode": "offline"}
    assert calls[0]["config"]["recipe"]["training"]["report_to"] == "all"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = next(offline[0].glob("*.wandb")).read_bytes()  # what `wandb sync` uploads
    assert b'"report_to":"all"' in records and b"eval/loss" in records and b"train/tokens_per_second" in records
    assert (run / "tensorboard").is_dir() and wandb.run is None  # finished
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def finished_run(folder: Path, model_path: Path, report_to: str = "tensorboard") -> Path:
    """A finished tiny tracked run in ``folder`` with its report written (for the report and dashboard tests)."""
    from finetune.report import write_report

    source = Path(__file__).resolve().parents[1] / "data" / "unicode_names" / "train.jsonl"
    train_file = folder / "train.jsonl"
    train_file.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:32]) + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = tracked_run(monkeypatch, tiny_tracked_recipe(model_path, train_file, folder, report_to=report_to))
    if not (run / "report.html").exists():  # train.py writes it once wired
        write_report(run)
    return run
