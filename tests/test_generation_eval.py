"""Generation metrics at every evaluation during training: logged beside eval_loss for every method, the best
checkpoint kept by them, agreeing with ``finetune.evaluate`` on a checkpoint, and the same under 2-process DDP."""
import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from helpers import write_jsonl
from safetensors.torch import load_file

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.evaluate import evaluate_run
from finetune.recipe import QuantSpec
from finetune.train import train

METHODS = {
    "lora": (LoraSpec(r=4, alpha=8, dropout=0.0), {}),
    "qlora": (LoraSpec(r=4, alpha=8, dropout=0.0), {"quantization": QuantSpec()}),
    "ptuning": (PTuningSpec(pre_seq_len=4, prefix_projection=False, prefix_dropout=0.0), {}),
    "full": (FullSpec(), {}),
}
SCORES = ("eval_rouge-1", "eval_rouge-2", "eval_rouge-l", "eval_exact-match", "eval_bleu-4")


@pytest.fixture()
def learnable(tmp_path):
    """Questions a tiny model learns to answer within a few steps (one short answer per kind of question), so
    the scores move between evaluations."""
    records = [{"instruction": f"Is {n} even or odd?", "input": "", "output": "even" if n % 2 == 0 else "odd"}
               for n in range(24)]
    return write_jsonl(tmp_path / "parity.jsonl", records)


# A prefix over a random 2-layer model needs a large step to move within a few steps (as in test_chatglm2_ptuning).
LEARNING_RATES = {"lora": 3e-2, "qlora": 3e-2, "ptuning": 3e-1, "full": 2e-3}


def recipe(model, data, out, method="lora", **extra):
    spec, model_extra = METHODS[method]
    return Recipe(
        name=f"gen_{method}", model=ModelSpec(path=str(model), max_length=64, **model_extra),
        data=DataSpec(train=str(data), format="alpaca", template="chatml", eval_split=0.25),
        method=spec,
        training=TrainingSpec(output_dir=str(out), max_steps=6, per_device_train_batch_size=6,
                              learning_rate=LEARNING_RATES[method], logging_steps=1,
                              eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, extra=extra),
        eval=EvalSpec(samples=0, max_new_tokens=4, generate=True))


def logged_evals(run_dir) -> list[dict]:
    entries = [json.loads(line) for line in (run_dir / "logs.jsonl").read_text().splitlines()]
    return [e for e in entries if "eval_loss" in e]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_evaluation_logs_generation_scores_and_writes_the_answers(method, tiny_llama, learnable, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = recipe(tiny_llama, learnable, tmp_path / "run", method)
    run = train(dataclasses.replace(spec, training=dataclasses.replace(spec.training, report_to="tensorboard"))
                ).output_dir
    evals = logged_evals(run)
    # before training, then at steps 2, 4 and 6 (the last one is also the after-training evaluation)
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    for entry in evals:
        assert all(isinstance(entry[k], float) for k in SCORES) and entry["eval_generate_seconds"] > 0
    files = sorted((run / "generations").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [f.name for f in files] == ["eval-0-step-0.jsonl", "eval-1-step-2.jsonl", "eval-2-step-4.jsonl",
                                       "eval-3-step-6.jsonl"]
    rows = [json.loads(line) for line in files[-1].read_text().splitlines()]
    assert len(rows) == 6 and {r["reference"] for r in rows} <= {"even", "odd"}  # the 25 % held out
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    if method != "ptuning":  # a prefix moves a random 2-layer model slowly (eval loss 10.79 -> 10.39 in 6 steps)
        assert evals[-1]["eval_exact-match"] > evals[0]["eval_exact-match"]  # it learned to answer
    assert "eval_metrics" in (run / "report.html").read_text()  # the scores' curve is in the report
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("eval/rouge-l")] == [0, 2, 4, 6]  # and the dashboard's


@pytest.mark.parametrize("method, weights", [("lora", "adapter_model.safetensors"),
                                             ("ptuning", "prefix_encoder.safetensors")])  # PrefixTrainer loads it
def test_the_best_checkpoint_by_a_generation_metric_is_the_saved_run(method, weights, tiny_llama, learnable,
                                                                     tmp_path):
    run = train(recipe(tiny_llama, learnable, tmp_path / "run", method, metric_for_best_model="eval_rouge-l",
                       load_best_model_at_end=True)).output_dir
    evals = logged_evals(run)
    assert [e["step"] for e in evals] == [0, 2, 4, 6, 6]  # the best weights are evaluated again at the end
    during = evals[1:-1]  # the evaluations at checkpoints (steps 2, 4, 6)
    best_value = max(e["eval_rouge-l"] for e in during)
    best_step = next(e["step"] for e in during if e["eval_rouge-l"] == best_value)  # the first, as the Trainer
    best = json.loads((run / "best.json").read_text())
    assert best == {"checkpoint": f"checkpoint-{best_step}", "step": best_step, "metric": "eval_rouge-l",
                    "value": best_value, "loaded_at_end": True}
    saved, kept = load_file(run / weights), load_file(run / f"checkpoint-{best_step}" / weights)
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    assert evals[-1]["eval_rouge-l"] == best_value  # the final evaluation ran on the best weights
    assert f"checkpoint-{best_step} (eval_rouge-l" in (run / "report.html").read_text()


def test_logged_scores_agree_with_finetune_evaluate_on_the_checkpoint(tiny_llama, learnable, tmp_path):
    run = train(recipe(tiny_llama, learnable, tmp_path / "run", "lora")).output_dir
    at_step_4 = next(e for e in logged_evals(run) if e["step"] == 4)
    report = evaluate_run(run / "checkpoint-4", max_new_tokens=4, out=tmp_path / "eval")
    assert report["examples"] == 6
    for key in SCORES:
        assert report["scores"][key.removeprefix("eval_")] == pytest.approx(at_step_4[key], abs=1e-9), key
    during = [json.loads(line)["prediction"] for line in (run / "generations" / "eval-2-step-4.jsonl").open()]
    after = [json.loads(line)["prediction"] for line in (tmp_path / "eval" / "predictions.jsonl").open()]
    assert during == after


DDP_RECIPE = """
from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
recipe = Recipe(
    name="gen_ddp", model=ModelSpec(path={model!r}, max_length=64, dtype="float32"),
    data=DataSpec(train={data!r}, format="alpaca", template="chatml", eval_split=0.25),
    method=LoraSpec(r=4, alpha=8, dropout=0.0),
    training=TrainingSpec(max_steps=4, optim="sgd", learning_rate=1.0, max_grad_norm=0.0, lr_scheduler_type="constant",
                          logging_steps=1, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=2),
    eval=EvalSpec(samples=0, max_new_tokens=4, generate=True))
"""


@pytest.mark.slow  # two training processes (torchrun)
def test_two_process_ddp_gives_the_same_generations_and_scores(tiny_llama, learnable, tmp_path):
    """Each rank answers every other batch of 2; the gathered answers equal one process's, batch for batch."""
    recipe_file = tmp_path / "gen.py"
    recipe_file.write_text(DDP_RECIPE.format(model=str(tiny_llama), data=str(learnable)))
    # One global batch of all 18 training examples per step (the samplers' orders differ, the sums do not), and SGD:
    # Adam would turn float noise in near-zero gradients into full-size updates that differ between the runs.
    for name, launcher, batch in (("ddp", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], 9),
                                  ("single", [], 18)):
        subprocess.run([sys.executable, *launcher, "-m", "finetune.run", str(recipe_file),
                        f"training.output_dir={tmp_path / name}", f"training.per_device_train_batch_size={batch}"],
                       check=True, capture_output=True, timeout=600)
    folders = {name: tmp_path / name / "generations" for name in ("ddp", "single")}
    names = sorted(p.name for p in folders["single"].iterdir())
    assert names == sorted(p.name for p in folders["ddp"].iterdir()) and len(names) == 3
    # Before training the weights are identical in both runs, so the answers must be too; after training fp32
    # DDP with SGD matches one process to ~1e-6 in the weights, which leaves greedy answers the same here.
    for name in names:
        assert (folders["ddp"] / name).read_text() == (folders["single"] / name).read_text(), name
    ddp, single = logged_evals(tmp_path / "ddp"), logged_evals(tmp_path / "single")
    assert len(single) == 3 and all(e["eval_generate_seconds"] > 0 for e in single)
    for a, b in zip(ddp, single):
        assert {k: a[k] for k in SCORES} == {k: b[k] for k in SCORES}
