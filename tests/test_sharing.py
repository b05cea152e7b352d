"""Runs on one CPU take their share of the cores: the count of live runs, the threads each takes, and what the user
set winning. (How much this is worth is measured by bench/bench_sharing.py, not timed here.)"""
import subprocess
import sys

import pytest
import torch

from finetune.training.sharing import ShareCores, live_runs


@pytest.fixture()
def sharing(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("FINETUNE_SHARE_CORES", raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def other_run():
    """A live process registered as a training run."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_live_run_halves_the_threads_and_its_end_gives_them_back(sharing):
    share = ShareCores(cores=4)
    share.on_train_begin(None, None, None)
    assert (live_runs(share.folder), torch.get_num_threads()) == (1, 4)
    other = other_run()
    try:
        (share.folder / str(other.pid)).touch()
        share.on_step_begin(None, None, None)
        assert (live_runs(share.folder), torch.get_num_threads()) == (2, 2)
    finally:
        other.kill()
        other.wait()
    share.on_step_begin(None, None, None)  # its marker is left behind: a dead process no longer counts
    assert (live_runs(share.folder), torch.get_num_threads()) == (1, 4)
    assert sorted(p.name for p in share.folder.iterdir()) == [share.marker.name]
    share.on_train_end(None, None, None)
    assert not share.marker.exists()


def test_never_fewer_than_one_thread(sharing):
    share = ShareCores(cores=2)
    others = [other_run() for _ in range(3)]
    try:
        for other in others:
            (share.folder / str(other.pid)).touch()
        share.on_train_begin(None, None, None)
        assert torch.get_num_threads() == 1
    finally:
        for other in others:
            other.kill()
            other.wait()


@pytest.mark.parametrize("variable, value", [("OMP_NUM_THREADS", "2"), ("FINETUNE_SHARE_CORES", "0")])
def test_what_the_user_set_wins(sharing, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    share = ShareCores(cores=4)
    torch.set_num_threads(3)
    share.on_train_begin(None, None, None)
    assert torch.get_num_threads() == 3 and not share.marker.exists()


def test_a_training_run_registers_and_releases(sharing, tiny_llama, alpaca_file, tmp_path, monkeypatch):
    """Through train(): the run counts itself while it trains, and its marker is gone when it ends."""
    from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
    from finetune.train import train
    from finetune.training import sharing as module

    seen = []
    original = module.ShareCores.on_step_begin

    def record(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        seen.append(live_runs(self.folder))

    monkeypatch.setattr(module.ShareCores, "on_step_begin", record)
    train(Recipe(name="tiny", model=ModelSpec(path=str(tiny_llama), max_length=64),
                 data=DataSpec(train=str(alpaca_file), format="alpaca", template="chatml"),
                 method=LoraSpec(r=4, alpha=8, dropout=0.0),
                 training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=2),
                 eval=EvalSpec(samples=0)))
    assert seen == [1, 1] and list((tmp_path / "active-runs").iterdir()) == []
