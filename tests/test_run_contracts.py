"""Behaviour users rely on that had no test: the all-masked error, cache invalidation, the pad-token fix, ``auto``
family and template, ``--resume PATH``, exit code 130 and the second signal, and registering templates/families."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.data import build_datasets
from finetune.errors import RunFolderError
from finetune.models import Family, get_family, load_tokenizer, register_family, resolve_model
from finetune.runs.checkpoints import COMPLETE
from finetune.runs.stopping import GracefulStop
from finetune.templates import Template, get_template, register_template
from finetune.train import train

ROOT = Path(__file__).resolve().parents[1]


def recipe(model_path, train_file, out, **training):
    return Recipe(
        name="tiny", model=ModelSpec(path=str(model_path), max_length=96),
        data=DataSpec(train=str(train_file), format="alpaca", template="chatml"),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(**{"output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 4,
                                 "learning_rate": 1e-2, "logging_steps": 1, **training}),
        eval=EvalSpec(samples=0))


def test_every_example_masked_stops_with_what_to_do(tokenizer, tmp_path):
    prompts = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "word " * 200, "output": "yes"}] * 3)
    spec = DataSpec(train=str(prompts), template="chatml", overlong="truncate")
    with pytest.raises(ValueError, match=r"every example has all labels masked .*raise max_length"):
        build_datasets(spec, tokenizer, get_template("chatml"), max_length=32)


def test_the_tokenized_cache_is_used_until_an_input_changes(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say hi", "output": "hi"}] * 4)
    spec, chatml = DataSpec(train=str(path), template="chatml"), get_template("chatml")
    assert not build_datasets(spec, tokenizer, chatml, 64).cache_hit
    assert build_datasets(spec, tokenizer, chatml, 64).cache_hit
    write_jsonl(path, [{"instruction": "Say ho", "output": "ho"}] * 4)  # same size, other content
    changed = build_datasets(spec, tokenizer, chatml, 64)
    assert not changed.cache_hit and "ho" in tokenizer.decode(changed.train[0]["input_ids"])
    assert not build_datasets(spec, tokenizer, get_template("alpaca"), 64).cache_hit  # another template
    assert not build_datasets(spec, tokenizer, chatml, 48).cache_hit  # another max_length


def test_a_pad_token_equal_to_eos_is_replaced_by_a_distinct_one(tokenizer, tmp_path):
    folder = tmp_path / "tok"
    padded_with_eos = copy.deepcopy(tokenizer)
    padded_with_eos.pad_token = padded_with_eos.eos_token
    padded_with_eos.save_pretrained(folder)
    fixed = load_tokenizer(folder, get_family("llama"))
    assert fixed.pad_token_id != fixed.eos_token_id and fixed.pad_token in get_family("llama").pad_candidates
    with pytest.raises(ValueError, match="no pad token distinct from EOS"):
        load_tokenizer(folder, dataclasses.replace(get_family("llama"), pad_candidates=("<no such token>",)))


def test_auto_family_and_template_come_from_the_checkpoint(tiny_llama, tiny_opt, tmp_path):
    # Both tiny models carry SmolLM2's tokenizer, whose chat template auto prefers to the family's template.
    llama, opt = resolve_model(ModelSpec(path=str(tiny_llama))), resolve_model(ModelSpec(path=str(tiny_opt)))
    assert (llama.family.name, llama.template.name) == ("llama", "tokenizer")
    assert (opt.family.name, opt.template.name) == ("opt", "tokenizer")
    forced = resolve_model(ModelSpec(path=str(tiny_opt), family="llama"), "chatml")
    assert (forced.family.name, forced.template.name) == ("llama", "chatml")
    # Without a chat template, auto falls back to the family's.
    import shutil

    bare = shutil.copytree(tiny_opt, tmp_path / "no_chat_template")
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in bare.glob("chat_template.*"):
        extra.unlink()
    assert resolve_model(ModelSpec(path=str(bare))).template.name == "alpaca"


def test_resume_from_a_named_checkpoint_continues_in_its_run_folder(tiny_llama, alpaca_file, tmp_path):
    from safetensors.torch import load_file

    full = train(recipe(tiny_llama, alpaca_file, tmp_path / "run", save_strategy="steps", save_steps=2,
                        save_total_limit=None))
    adapter = load_file(full.output_dir / "adapter_model.safetensors")
    (full.output_dir / "adapter_model.safetensors").unlink()
    resumed = train(recipe(tiny_llama, alpaca_file, tmp_path / "elsewhere", save_strategy="steps", save_steps=2,
                           save_total_limit=None), resume=str(full.output_dir / "checkpoint-2"))
    assert resumed.output_dir == full.output_dir  # the checkpoint's run, not training.output_dir
    again = load_file(full.output_dir / "adapter_model.safetensors")
    for name, value in adapter.items():
        assert torch.allclose(value, again[name], atol=1e-6), name
    with pytest.raises(RunFolderError, match="not a complete checkpoint"):
        train(recipe(tiny_llama, alpaca_file, tmp_path / "run"), resume=str(tmp_path / "run"))


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"])
def test_a_resume_that_cannot_be_exact_is_refused_and_weights_only_continues(
        missing, tiny_llama, alpaca_file, tmp_path, caplog):
    """#30: a complete-marked checkpoint without its optimizer resumed silently, the schedule restarting (step-10 lr
    1e-3 instead of 3.0e-5). Refused, naming the file; ``--resume-weights-only`` continues and says what restarts."""
    run = train(recipe(tiny_llama, alpaca_file, tmp_path / "run", save_strategy="steps", save_steps=2,
                       save_total_limit=None)).output_dir
    assert (run / "checkpoint-4" / COMPLETE).exists()  # every state file was on disk when it was marked
    (run / "checkpoint-4" / missing).unlink()
    longer = recipe(tiny_llama, alpaca_file, tmp_path / "run", max_steps=6, save_strategy="steps", save_steps=2,
                    save_total_limit=None)
    if missing == "trainer_state.json":  # the step the run reached: nothing can continue without it
        with pytest.raises(RunFolderError, match="has no trainer_state.json .* not even from its weights alone"):
            train(longer, resume=True, resume_weights_only=True)
        return
    with pytest.raises(RunFolderError, match=f"checkpoint-4 has no {missing}.*--resume-weights-only"):
        train(longer, resume=True)
    caplog.set_level("WARNING")
    assert train(longer, resume=True, resume_weights_only=True).output_dir == run
    assert f"{missing} missing, so that state starts afresh" in caplog.text


def test_a_checkpoint_is_marked_complete_only_with_every_state_file(tmp_path):
    from types import SimpleNamespace

    from finetune.runs.checkpoints import MarkComplete

    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (folder / name).write_bytes(b"x")
    args, state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=3)
    MarkComplete().on_save(args, state, None)
    assert not (folder / COMPLETE).exists()  # trainer_state.json not written yet
    (folder / "trainer_state.json").write_text("{}")
    MarkComplete().on_save(args, state, None)
    assert (folder / COMPLETE).exists()


def test_a_second_signal_aborts_unless_it_is_the_same_one_delivered_twice(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    stop = GracefulStop()
    stop._handle(signal.SIGTERM, None)
    assert stop.received == "SIGTERM"
    clock[0] += 0.01  # torchrun forwarding the signal its process group also got
    stop._handle(signal.SIGTERM, None)
    clock[0] += 1.5
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_an_abort_exits_130_with_one_line(monkeypatch, capsys, tmp_path):
    """What ``python -m finetune.run`` does when the second signal interrupts training."""
    import finetune.train
    from finetune import run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune.train, "train", interrupted)
    recipe_file = tmp_path / "r.py"
    recipe_file.write_text("from finetune import DataSpec, Recipe\n"
                           "recipe = Recipe(name='r', data=DataSpec(train='x'))\n")
    assert run.main([str(recipe_file)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "aborted by a second signal" in err


def _start_run(tiny_llama, alpaca_file, tmp_path):
    """``python -m finetune.run`` on a long run, returned once it has logged a training step."""
    recipe_file = tmp_path / "long.py"
    recipe_file.write_text(
        "from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec\n"
        f"recipe = Recipe(name='long', model=ModelSpec(path={str(tiny_llama)!r}, max_length=96),\n"
        f"    data=DataSpec(train={str(alpaca_file)!r}, template='chatml'), method=LoraSpec(r=4),\n"
        f"    training=TrainingSpec(output_dir={str(tmp_path / 'run')!r}, max_steps=100000, logging_steps=1,\n"
        "                          per_device_train_batch_size=1), eval=EvalSpec(samples=0))\n")
    process = subprocess.Popen([sys.executable, "-m", "finetune.run", str(recipe_file)], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    logs, deadline = tmp_path / "run" / "logs.jsonl", time.monotonic() + 240
    while not (logs.exists() and logs.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    return process


def test_sigterm_exits_130_with_a_checkpoint_and_the_resume_command(tiny_llama, alpaca_file, tmp_path):
    process = _start_run(tiny_llama, alpaca_file, tmp_path)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out + err
    assert any((c / COMPLETE).exists() for c in (tmp_path / "run").glob("checkpoint-*"))


def test_registered_template_and_family_are_used_by_name(tiny_llama, alpaca_file, tmp_path, registries):
    register_template(Template(name="qa_test", user="Q: {content}\nA: ", assistant="{content}{eos}"))
    register_family(dataclasses.replace(get_family("llama"), name="llama_test", model_types=("llama_test",),
                                        template="qa_test"))
    with pytest.raises(ValueError, match="already registered"):
        register_template(Template(name="qa_test", user="{content}"))
    run = recipe(tiny_llama, alpaca_file, tmp_path / "run")
    run = dataclasses.replace(run, model=dataclasses.replace(run.model, family="llama_test"),
                              data=dataclasses.replace(run.data, template="qa_test"))
    result = train(run)
    assert json.loads((result.output_dir / "template.json").read_text())["name"] == "qa_test"
    assert isinstance(get_family("llama_test"), Family)


def test_registrations_are_undone_after_the_test_that_made_them():
    """The test above registered into the global registries through the ``registries`` fixture."""
    with pytest.raises(ValueError, match="Unknown template 'qa_test'"):
        get_template("qa_test")
    with pytest.raises(ValueError, match="Unknown model family 'llama_test'"):
        get_family("llama_test")


@pytest.mark.parametrize("argv, dry_run, resume", [
    (["--dry-run", "training.learning_rate=1e-4"], True, False),
    (["training.learning_rate=1e-4", "--dry-run"], True, False),
    (["--resume", "training.learning_rate=1e-4"], False, True),
    (["training.learning_rate=1e-4", "--resume"], False, True),
])
def test_flags_go_anywhere_on_the_command_line(argv, dry_run, resume, monkeypatch, tmp_path):
    """``python -m finetune.run R.py --dry-run training.x=1`` was rejected by argparse, and ``--resume training.x=1``
    took the override for a checkpoint path."""
    import finetune.train
    from finetune import run

    seen = {}

    def fake_train(recipe, dry_run=False, resume=False, **_):
        seen.update(recipe=recipe, dry_run=dry_run, resume=resume)
        return finetune.train.RunResult(None)

    monkeypatch.setattr(finetune.train, "train", fake_train)
    recipe_file = tmp_path / "r.py"
    recipe_file.write_text("from finetune import DataSpec, Recipe\n"
                           "recipe = Recipe(name='r', data=DataSpec(train='x'))\n")
    assert run.main([str(recipe_file), *argv]) == 0
    assert seen["recipe"].training.learning_rate == 1e-4
    assert (seen["dry_run"], seen["resume"]) == (dry_run, resume)
