"""Interruption and resume, incomplete checkpoints, and the non-finite loss guard, on a tiny model."""
import dataclasses
import os
import re
import shutil
import signal

import pytest
import torch

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.errors import RunFolderError
from finetune.run import main as run_main
from finetune.runs import read_status
from finetune.runs.checkpoints import COMPLETE, latest_checkpoint
from finetune.train import train
from finetune.training.divergence import TrainingDiverged


def recipe(model_path, train_file, out, **training):
    return Recipe(
        name="tiny", model=ModelSpec(path=str(model_path), max_length=96),
        data=DataSpec(train=str(train_file), format="alpaca", template="chatml"),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(out), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                              logging_steps=1, save_strategy="steps", save_steps=2, save_total_limit=None,
                              **training),
        eval=EvalSpec(samples=0))


def adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter_model.safetensors")


def test_sigterm_saves_a_checkpoint_and_resume_matches_the_uninterrupted_run(
        tiny_llama, alpaca_file, tmp_path, monkeypatch):
    full = train(recipe(tiny_llama, alpaca_file, tmp_path / "full"))
    import finetune.train as train_module

    original = train_module.GracefulStop

    class Interrupting(original):
        """Sends SIGTERM to this process after step 3, as a cluster scheduler would."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().on_step_end(args, state, control, **kwargs)

    monkeypatch.setattr(train_module, "GracefulStop", Interrupting)
    stopped = train(recipe(tiny_llama, alpaca_file, tmp_path / "resumed"))
    assert stopped.interrupted
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-3"
    monkeypatch.setattr(train_module, "GracefulStop", original)
    status = read_status(tmp_path / "resumed")
    assert (status["state"], status["step"], status["max_steps"]) == ("stopped", 3, 6)

    # The resume command the run printed and recorded, run as given: the recipe comes from the run's recipe.json.
    command = status["resume"].split()
    assert command[:3] == ["python", "-m", "finetune.run"] and command[3].endswith("recipe.json")
    assert run_main(command[3:]) == 0
    assert read_status(tmp_path / "resumed")["state"] == "finished"
    for name, value in adapter(full.output_dir).items():
        assert torch.allclose(value, adapter(tmp_path / "resumed")[name], atol=1e-6), name


def test_a_checkpoint_interrupted_while_saving_is_skipped(tiny_llama, alpaca_file, tmp_path):
    run = train(recipe(tiny_llama, alpaca_file, tmp_path / "run"))
    assert latest_checkpoint(run.output_dir).name == "checkpoint-6"
    broken = run.output_dir / "checkpoint-8"  # a save killed half-way: files, but no COMPLETE marker
    shutil.copytree(run.output_dir / "checkpoint-6", broken)
    (broken / COMPLETE).unlink()
    (broken / "adapter_model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(run.output_dir).name == "checkpoint-6"
    resumed = train(dataclasses.replace(
        recipe(tiny_llama, alpaca_file, tmp_path / "run"),
        training=dataclasses.replace(recipe(tiny_llama, alpaca_file, tmp_path / "run").training, max_steps=8)),
        resume=True)
    assert latest_checkpoint(resumed.output_dir).name == "checkpoint-8"


def test_resume_without_checkpoints_says_what_to_do(tiny_llama, alpaca_file, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="no complete checkpoint .*save_strategy=steps"):
        train(recipe(tiny_llama, alpaca_file, tmp_path / "empty"), resume=True)


def test_non_finite_loss_stops_with_step_lines_and_advice(tiny_llama, alpaca_file, tmp_path):
    bad = recipe(tiny_llama, alpaca_file, tmp_path / "nan")
    # An absurd learning rate without clipping overflows the weights within a few steps.
    bad = dataclasses.replace(bad, training=dataclasses.replace(bad.training, learning_rate=1e30, max_grad_norm=0.0))
    diverged = r"at step \d+: the (loss|gradient norm) is (nan|inf).*lines \[\d+.*learning_rate"
    with pytest.raises(TrainingDiverged, match=diverged):
        train(bad)
    status = read_status(bad.training.output_dir)
    assert status["state"] == "failed" and re.search(diverged, status["error"])
