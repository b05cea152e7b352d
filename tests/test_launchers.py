"""The launchers users outgrow one machine with, run as the Makefile runs them: ``make train-accelerate``
(``accelerate launch --config_file``) with 2 processes, and ``make train-ddp`` as two nodes on one machine (two
launchers, ``--nnodes 2 --node_rank 0/1``, rendezvous on localhost). Each ends where one process ends.

On a machine without GPUs, accelerate starts several processes only for a config whose ``distributed_type`` is a
multi-device one (its torchrun launcher); ``MULTI_CPU`` launches one process unless ``mpirun`` and a hostfile are
given (accelerate/commands/launch.py), so the config here says ``MULTI_GPU`` and the processes train on the CPU.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import four_examples
from safetensors.torch import load_file

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.train import train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each test launches two training processes through make (~30 s each)

RECIPE = """from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
recipe = Recipe(name="launched", model=ModelSpec(path={model!r}, max_length=96),
                data=DataSpec(train={data!r}, template="chatml"), method=LoraSpec(r=4, alpha=8, dropout=0.0),
                training=TrainingSpec(output_dir={out!r}, max_steps=1, optim="sgd", learning_rate=1.0,
                                      max_grad_norm=0.0, lr_scheduler_type="constant", per_device_train_batch_size=2,
                                      logging_steps=1, report_to="none"),
                eval=EvalSpec(samples=0))
"""


def make_command(target: str, **variables) -> list[str]:
    """The command ``make TARGET`` runs, read with ``make -n`` (so the test runs exactly the Makefile's line)."""
    printed = subprocess.run(["make", "--no-print-directory", "-n", target,
                              *(f"{key}={value}" for key, value in variables.items())],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = printed.replace("\\\n", " ").splitlines()
    return shlex.split(next(line for line in lines if "finetune.run" in line))


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    return four_examples(tmp_path_factory.mktemp("data") / "four.jsonl")


def single_process(tiny_llama, four, out: Path) -> dict:
    """The same step in one process: one batch of 4 where the launched processes take 2 each."""
    run = train(Recipe(
        name="single", model=ModelSpec(path=str(tiny_llama), max_length=96),
        data=DataSpec(train=str(four), template="chatml"), method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(out), max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                              lr_scheduler_type="constant", per_device_train_batch_size=4, logging_steps=1,
                              report_to="none"), eval=EvalSpec(samples=0))).output_dir
    return load_file(run / "adapter_model.safetensors")


def assert_same_update(launched: Path, expected: dict) -> None:
    # 2 x 2 and 1 x 4 examples round differently in the default precision (bf16 where native): as in
    # tests/test_distributed.py, 2e-3 on an lr-1 SGD step.
    weights = load_file(launched / "adapter_model.safetensors")
    assert weights.keys() == expected.keys()
    worst = max(float((weights[k].float() - expected[k].float()).abs().max()) for k in weights)
    assert worst <= 2e-3, worst


def recipe_file(tmp_path, tiny_llama, four, out) -> Path:
    path = tmp_path / "launched.py"
    path.write_text(RECIPE.format(model=str(tiny_llama), data=str(four), out=str(out)))
    return path


def test_make_train_accelerate_runs_two_processes_that_make_the_one_process_update(tiny_llama, four, tmp_path):
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
                      "num_machines: 1\nmachine_rank: 0\nmain_process_ip: 127.0.0.1\nmain_process_port: 29611\n"
                      "mixed_precision: 'no'\nrdzv_backend: static\nsame_network: true\n")
    out = tmp_path / "run"
    command = make_command("train-accelerate", RECIPE=recipe_file(tmp_path, tiny_llama, four, out),
                           ACCELERATE_CONFIG=config)
    assert command[:2] == [".venv/bin/accelerate", "launch"] and "--config_file" in command
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("Resolved recipe") == 2  # two processes, each reading the recipe
    assert_same_update(out, single_process(tiny_llama, four, tmp_path / "single"))


def test_make_train_ddp_as_two_nodes_on_one_machine_makes_the_one_process_update(tiny_llama, four, tmp_path):
    out = tmp_path / "run"
    recipe = recipe_file(tmp_path, tiny_llama, four, out)
    nodes = [make_command("train-ddp", RECIPE=recipe, NNODES=2, NODE_RANK=rank, NPROC=1, MASTER_PORT=29612)
             for rank in (0, 1)]
    assert all("--nnodes=2" in command for command in nodes) and "--node_rank=1" in nodes[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launched = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=env) for command in nodes]
    outputs = [process.communicate(timeout=600)[0] for process in launched]
    assert [process.returncode for process in launched] == [0, 0], [o[-3000:] for o in outputs]
    assert_same_update(out, single_process(tiny_llama, four, tmp_path / "single"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("run")) == ["run"]  # one run folder
