"""Several processes (torchrun, gloo on CPU, standing in for GPUs): every method gives the single-process update
at the same global batch, only rank 0 writes, the saved run reloads to the same outputs, and a signal that
reaches one rank stops all of them after the same step, from which ``--resume`` continues exactly."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import four_examples as write_four
from helpers import write_jsonl

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.inference import load_run
from finetune.recipe import QuantSpec, recipe_to_dict
from finetune.train import train

# bf16-sensitive (processes train in the default precision, bf16 where native): make test-avx2 reruns them
# without native bf16. In the slow suite: each test launches processes that train (3 min of the fast suite's 11).
pytestmark = [pytest.mark.bf16, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "dist_driver.py"
WEIGHTS = ("adapter_model.safetensors", "prefix_encoder.safetensors", "model.safetensors")


def method_recipes(tiny_llama: Path, untied: Path, data: Path, out: Path) -> list[Recipe]:
    """One SGD step (lr 1, no clipping) per method, in the default precision (bf16 where native) unless named."""
    lora = LoraSpec(r=4, alpha=8, dropout=0.0)
    cases = {
        "lora": (tiny_llama, lora, {}, {}),
        "lora_fp32": (tiny_llama, lora, {"dtype": "float32"}, {}),
        "lora_held_out": (tiny_llama, lora, {}, {"eval": str(data)}),  # evaluates before training, under DDP
        # Token-budget bins of 3 examples and 1 (96 tokens each at most): one per process, one step.
        "lora_packed": (tiny_llama, lora, {}, {"batching": "packed", "max_tokens_per_batch": 96}),
        "dora": (tiny_llama, dataclasses.replace(lora, use_dora=True), {}, {}),
        "qlora": (tiny_llama, lora, {"quantization": QuantSpec(compute_dtype="float32")}, {}),
        "ptuning": (tiny_llama, PTuningSpec(pre_seq_len=4, prefix_dropout=0.0), {}, {}),
        "full_tied": (tiny_llama, FullSpec(), {}, {}),
        "full_untied": (untied, FullSpec(), {}, {}),
    }
    return [Recipe(
        name=name, model=ModelSpec(path=str(model), max_length=96, **model_kwargs),
        data=DataSpec(train=str(data), template="chatml", **data_kwargs), method=method,
        training=TrainingSpec(output_dir=str(out / name), max_steps=1, optim="sgd", learning_rate=1.0,
                              max_grad_norm=0.0, lr_scheduler_type="constant", per_device_train_batch_size=2,
                              logging_steps=1),
        eval=EvalSpec(samples=0)) for name, (model, method, model_kwargs, data_kwargs) in cases.items()]


def torchrun(recipes: list[Recipe], reports: Path, env: dict | None = None, check: bool = True):
    reports.mkdir(parents=True, exist_ok=True)
    spec = reports / "recipes.json"
    spec.write_text(json.dumps([recipe_to_dict(r) for r in recipes]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(DRIVER),
               str(spec), str(reports)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done, [json.loads((reports / f"rank-{r}.json").read_text()) for r in (0, 1)]


def saved_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next(run / name for name in WEIGHTS if (run / name).exists()))


def logged_loss(run: Path) -> float:
    return next(e["loss"] for e in map(json.loads, (run / "logs.jsonl").read_text().splitlines()) if "loss" in e)


@pytest.fixture(scope="module")
def ddp_and_single(tiny_llama, untied_llama, tmp_path_factory):
    work = tmp_path_factory.mktemp("ddp")
    data = write_four(work / "four.jsonl")
    ddp = method_recipes(tiny_llama, untied_llama, data, work / "ddp")
    _, reports = torchrun(ddp, work / "reports")
    single = []
    for recipe in method_recipes(tiny_llama, untied_llama, data, work / "single"):
        recipe = dataclasses.replace(recipe, training=dataclasses.replace(recipe.training,
                                                                          per_device_train_batch_size=4))
        if recipe.data.batching == "packed":  # the same four examples in one padded batch
            recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, batching="padded",
                                                                          max_tokens_per_batch=None))
        train(recipe)
        single.append(recipe)
    return {r.name: (Path(r.training.output_dir), Path(s.training.output_dir)) for r, s in zip(ddp, single)}, reports


# bf16 (weights and autocast: the GPU default): 2 x 2 and 1 x 4 examples round differently in bf16 matmuls.
TOLERANCE = {"lora_fp32": 1e-5}


@pytest.mark.parametrize("name", ["lora", "lora_fp32", "lora_held_out", "lora_packed", "dora", "qlora", "ptuning",
                                  "full_tied", "full_untied"])
def test_two_processes_make_the_single_process_update(name, ddp_and_single):
    runs, _ = ddp_and_single
    ddp_run, single_run = runs[name]
    ddp, single = saved_weights(ddp_run), saved_weights(single_run)
    assert ddp.keys() == single.keys()
    atol = TOLERANCE.get(name, 2e-3)
    worst = max(float((single[k].float() - ddp[k].float()).abs().max()) for k in single)
    assert worst <= atol, f"{name}: weights differ by {worst:.2e}"
    assert logged_loss(ddp_run) == pytest.approx(logged_loss(single_run), rel=1e-2)

    reference, reloaded = load_run(single_run).model, load_run(ddp_run).model
    ids = torch.tensor([[7, 8, 9, 10, 11]])
    with torch.no_grad():
        expected = reference(ids).logits.float()
        difference = (expected - reloaded(ids).logits.float()).abs().max()
    # bf16 logits carry 8 significant bits: two loads whose weights differ by ``atol`` may round the largest logit
    # two steps apart (full_tied in bf16 on an AVX2 CPU, where bf16 is emulated: 6.25e-2 at logits of about 6).
    bound = 1e-4 if atol < 1e-4 else max(5e-2, 2 * 2.0 ** -7 * float(expected.abs().max()))
    assert difference <= bound, f"{name}: reloaded outputs differ by {difference:.2e} (bound {bound:.2e})"


def test_only_rank_0_writes_into_the_run_folders(ddp_and_single):
    _, (rank0, rank1) = ddp_and_single
    assert rank1["written"] == []
    names = {Path(p).name for p in rank0["written"]}
    assert {"audit.json", "logs.jsonl", "recipe.json", "template.json", "report.html"} <= names


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step_and_resume_continues(
        tiny_llama, untied_llama, tmp_path):
    data = write_jsonl(tmp_path / "eight.jsonl", [{"instruction": f"Count to {i}.", "output": " ".join(
        str(j) for j in range(i + 1))} for i in range(8)])
    base = method_recipes(tiny_llama, untied_llama, data, tmp_path)[0]  # LoRA, bf16
    training = dict(max_steps=4, optim="adamw_torch", learning_rate=1e-2, save_strategy="steps", save_steps=100)
    recipe = dataclasses.replace(base, name="stopped", training=dataclasses.replace(
        base.training, output_dir=str(tmp_path / "stopped"), **training))
    reference = dataclasses.replace(recipe, name="uninterrupted", training=dataclasses.replace(
        recipe.training, output_dir=str(tmp_path / "uninterrupted")))

    done, reports = torchrun([recipe], tmp_path / "signal", env={"FINETUNE_TEST_SIGNAL": "1:1"}, check=False)
    stopped = [(r["runs"]["stopped"]["interrupted"], r["runs"]["stopped"]["step"]) for r in reports]
    assert stopped == [(True, 1), (True, 1)], done.stderr[-3000:]
    # Each rank exits 130 as python -m finetune.run does; torchrun reports the first and fails the job.
    assert "(exitcode: 130)" in done.stderr and done.returncode != 0, done.stderr[-3000:]
    assert (tmp_path / "stopped" / "checkpoint-1" / "COMPLETE").exists()
    assert not (tmp_path / "stopped" / "adapter_model.safetensors").exists()

    torchrun([recipe, reference], tmp_path / "resumed", env={"FINETUNE_TEST_RESUME": "1"})
    resumed, uninterrupted = saved_weights(tmp_path / "stopped"), saved_weights(tmp_path / "uninterrupted")
    for name, value in uninterrupted.items():
        assert torch.allclose(value, resumed[name], atol=1e-6), name


ENGINES = {
    "fsdp": ({"fsdp": "full_shard", "fsdp_config": str(ROOT / "configs" / "fsdp.json")},
             {"FINETUNE_TEST_FORCE_FSDP": "1"}),
    "zero2": ({"deepspeed": str(ROOT / "configs" / "deepspeed_zero2.json")}, {"DS_ACCELERATOR": "cpu"}),
    "zero3": ({"deepspeed": str(ROOT / "configs" / "deepspeed_zero3.json")}, {"DS_ACCELERATOR": "cpu"}),
}
ENGINE_METHODS = {"fsdp": ("lora", "ptuning", "full_tied"), "zero2": ("lora", "ptuning"), "zero3": ("lora", "ptuning")}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_sharded_engines_make_the_single_process_update_and_save_loadable_runs(engine, ddp_and_single, tmp_path):
    if engine != "fsdp":
        pytest.importorskip("deepspeed")
    runs, _ = ddp_and_single
    extra, env = ENGINES[engine]
    recipes = []
    for name in ENGINE_METHODS[engine]:
        single = load_run(runs[name][1]).recipe  # the single-process run's own recipe, read back from its folder
        recipes.append(dataclasses.replace(single, name=name, training=dataclasses.replace(
            single.training, output_dir=str(tmp_path / name), per_device_train_batch_size=2,
            extra={**single.training.extra, **extra})))
    _, (rank0, rank1) = torchrun(recipes, tmp_path / "reports", env=env)
    assert rank1["written"] == []
    for recipe in recipes:
        if engine == "fsdp":  # the parameters really were sharded, not silently replicated
            assert rank0["runs"][recipe.name]["fsdp_sharded"], recipe.name
        run, single_run = Path(recipe.training.output_dir), runs[recipe.name][1]
        sharded, single = saved_weights(run), saved_weights(single_run)
        # FSDP's gathered state dict also names a tied head (lm_head.weight = the embeddings) on its own.
        assert single.keys() <= sharded.keys() <= single.keys() | {"lm_head.weight"}, recipe.name
        # DeepSpeed's bf16 mode keeps the model itself in bf16 (fp32 master copies live in its optimizer), so what it
        # saves is bf16-rounded: a relative 2^-8 on top of the batch-shape rounding.
        rtol = 1e-2 if engine.startswith("zero") else 0.0
        for key in single:
            assert torch.allclose(sharded[key].float(), single[key].float(), atol=2e-3, rtol=rtol), (engine, key)
        assert logged_loss(run) == pytest.approx(logged_loss(single_run), rel=1e-2)
        ids = torch.tensor([[7, 8, 9, 10, 11]])
        with torch.no_grad():  # loads with plain PEFT / transformers (load_run) and answers as the single run
            difference = (load_run(single_run).model(ids).logits.float() - load_run(run).model(ids).logits.float())
        # bf16 weights (the default load) turn the <= 2e-3 weight differences of a full lr-1 step into ~5e-2.
        assert difference.abs().max() <= 1e-1, f"{engine} {recipe.name}"
