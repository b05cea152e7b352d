"""Every mistake a user can make ends in one clean message (#20): exit status 2, one line on stderr that names the
file, line or field where there is one and says what to do, and no traceback. Each case runs a command's ``main``
as ``python -m finetune.<command>`` would (in this process, so the cases stay fast; ``test_the_real_command_line``
runs processes). The table in docs/troubleshooting.md lists the same cases.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import write_jsonl

import finetune.chat as chat
import finetune.data.__main__ as data_cli
import finetune.evaluate as evaluate
import finetune.export.__main__ as export_cli
import finetune.merge as merge
import finetune.run as run

ROOT = Path(__file__).resolve().parents[1]
ALPACA = [{"instruction": f"Name character {i}", "input": "", "output": f"CHARACTER {i}"} for i in range(8)]


@pytest.fixture
def cli(tiny_llama, alpaca_file, tmp_path):
    """A valid recipe file on the tiny Llama, and helpers to write bad inputs beside it."""
    out = tmp_path / "run"

    def recipe_file(body: str = "", name: str = "r.py") -> Path:
        path = tmp_path / name
        path.write_text(
            "from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec\n"
            + (body or f"recipe = Recipe(name='cli', model=ModelSpec(path={str(tiny_llama)!r}, max_length=96),\n"
                       f"    data=DataSpec(train={str(alpaca_file)!r}, template='chatml'), method=LoraSpec(r=4),\n"
                       f"    training=TrainingSpec(output_dir={str(out)!r}, max_steps=2, logging_steps=1,\n"
                       "                          per_device_train_batch_size=4), eval=EvalSpec(samples=0))\n"))
        return path

    def text(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content, encoding="utf-8")
        return path

    def model_copy(name: str, keep=lambda f: True) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in tiny_llama.iterdir():
            if keep(file):
                shutil.copy(file, folder / file.name)
        return folder

    return SimpleNamespace(recipe=recipe_file(), recipe_file=recipe_file, text=text, model_copy=model_copy,
                           tmp=tmp_path, out=out, model=tiny_llama, data=alpaca_file)


def one_clean_line(main, argv, capsys, *needles) -> str:
    """Run ``main(argv)``; assert exit status 2 and a single ``error: ...`` line containing every needle."""
    code = main([str(a) for a in argv])
    err = [line.strip() for line in re.split(r"[\r\n]", capsys.readouterr().err)]  # \r: after a progress bar
    errors = [line for line in err if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


# --- finetune.run: the recipe and the command line ----------------------------------------------------------------

RECIPE_CASES = {
    "recipe file missing": (lambda c: [c.tmp / "nope.py"], ["nope.py not found", "recipes/"]),
    "recipe file not Python": (lambda c: [c.recipe_file("recipe = Recipe(name='x'\n", "syntax.py")],
                               ["syntax.py:2:", "never closed"]),
    "recipe file imports a typo": (lambda c: [c.recipe_file("from finetune import LoraSpc\n", "typo.py")],
                                   ["typo.py:2:", "LoraSpc"]),
    "recipe file defines no recipe": (lambda c: [c.recipe_file("x = 1\n", "none.py")], ["must define `recipe"]),
    "wrong type in a recipe file": (lambda c: [c.recipe_file(
        "recipe = Recipe(name='x', model=ModelSpec(max_length='64'), data=DataSpec(train='t'))\n", "types.py")],
        ["types.py:2:", "model.max_length='64' must be int"]),
    "override with a typo": (lambda c: [c.recipe, "training.learning_rat=1e-4"], ["learning_rat", "learning_rate"]),
    "override of the wrong type": (lambda c: [c.recipe, "training.max_steps=many"], ["training.max_steps"]),
    "unknown section": (lambda c: [c.recipe, "trainig.max_steps=3"], ["trainig"]),
    "unknown template": (lambda c: [c.recipe, "--dry-run", "data.template=chatmll"], ["chatmll", "chatml"]),
    "unknown family": (lambda c: [c.recipe, "--dry-run", "model.family=gpt9"], ["gpt9", "llama"]),
    "unknown data format": (lambda c: [c.recipe, "--dry-run", "data.format=alpacca"], ["data.format", "alpaca"]),
    "nothing to train": (lambda c: [c.recipe, "training.num_train_epochs=-1", "training.max_steps=-1"],
                         ["num_train_epochs=-1", "trains nothing"]),
    "absurd learning rate": (lambda c: [c.recipe, "training.learning_rate=1e38"], ["training.learning_rate=1e+38",
                                                                                   "overflows"]),
    "unknown lr_scheduler_type": (lambda c: [c.recipe, "--dry-run", "training.lr_scheduler_type=cosinus"],
                                  ["TrainingArguments", "cosinus"]),
    "unknown optimizer": (lambda c: [c.recipe, "--dry-run", "training.optim=adamw_turbo"], ["adamw_turbo"]),
}


@pytest.mark.parametrize("case", RECIPE_CASES, ids=list(RECIPE_CASES))
def test_recipe_and_command_line_mistakes(case, cli, capsys):
    argv, needles = RECIPE_CASES[case]
    one_clean_line(run.main, argv(cli), capsys, *needles)


# --- finetune.run: the model ---------------------------------------------------------------------------------------

MODEL_CASES = {
    "model not on this machine": (lambda c: c.tmp / "no-such-model",
                                  ["no-such-model", "not on this machine", "hf download"]),
    "hub id not in the cache": (lambda c: "someone/unknown-model-7b", ["someone/unknown-model-7b", "hf download"]),
    "folder without config.json": (lambda c: c.model_copy("noconfig", lambda f: f.name != "config.json"),
                                   ["noconfig has no config.json"]),
    "pickle-only weights": (lambda c: _pickled(c), ["only .bin (pickle) weights", "model.allow_pickle=true"]),
    "no weights at all": (lambda c: c.model_copy("noweights", lambda f: f.suffix != ".safetensors"),
                          ["noweights (model.path) has no model weights"]),
    "truncated weights": (lambda c: _truncated_model(c), ["model.safetensors is damaged", "Copy it again"]),
    "max_length beyond the model's window": (lambda c: c.model, ["model.max_length=100000", "native window"]),
}


def _pickled(c) -> Path:
    import torch
    from safetensors.torch import load_file

    folder = c.model_copy("pickled", lambda f: f.suffix != ".safetensors")
    torch.save(load_file(c.model / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def _truncated_model(c) -> Path:
    folder = c.model_copy("truncated")
    truncated(folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("case", MODEL_CASES, ids=list(MODEL_CASES))
def test_model_mistakes_are_found_by_the_dry_run(case, cli, capsys):
    path, needles = MODEL_CASES[case]
    extra = ["model.max_length=100000"] if "window" in case else []
    one_clean_line(run.main, [cli.recipe, "--dry-run", f"model.path={path(cli)}", *extra], capsys, *needles)


# --- finetune.run: the data (each names file and line) -------------------------------------------------------------

DATA_CASES = {
    "data file missing": (lambda c: c.tmp / "missing.jsonl", ["missing.jsonl"]),
    "broken JSON line": (lambda c: c.text("broken.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": \n'),
                         ["broken.jsonl:2"]),
    "10,000-level nesting": (lambda c: c.text("deep.jsonl", '{"instruction": ' + "[" * 10000 + "]" * 10000 + "}\n"),
                             ["deep.jsonl:1"]),
    "lone surrogate": (lambda c: c.text("surrogate.jsonl", '{"instruction": "\\ud83d", "output": "x"}\n'),
                       ["surrogate.jsonl:1"]),
    "history of the wrong type": (lambda c: c.text("history.jsonl", json.dumps(
        {"instruction": "a", "output": "b", "history": 5}) + "\n"), ["history.jsonl:1", "history"]),
    "duplicate key": (lambda c: c.text("dup.jsonl", '{"instruction": "a", "instruction": "b", "output": "c"}\n'),
                      ["dup.jsonl:1", "instruction", "twice"]),
    "missing field": (lambda c: c.text("nofield.jsonl", '{"question": "a", "answer": "b"}\n'), ["nofield.jsonl"]),
    "missing CSV column": (lambda c: c.text("cols.csv", "question,answer\na,b\n"), ["cols.csv"]),
    "corrupt Parquet": (lambda c: c.text("bad.parquet", b"PAR1 this is not parquet"), ["bad.parquet"]),
    "not UTF-8": (lambda c: c.text("latin1.jsonl", '{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1")),
                  ["latin1.jsonl:1"]),
    "every answer masked": (lambda c: write_jsonl(c.tmp / "long.jsonl", [{"instruction": "word " * 300,
                                                                          "output": "yes"}] * 3),
                            ["long.jsonl", "all labels masked", "max_length"]),
}


@pytest.mark.parametrize("case", DATA_CASES, ids=list(DATA_CASES))
def test_data_mistakes_name_file_and_line(case, cli, capsys):
    path, needles = DATA_CASES[case]
    extra = ["data.overlong=truncate"] if "masked" in case else []
    one_clean_line(run.main, [cli.recipe, "--dry-run", f"data.train={path(cli)}", *extra], capsys, *needles)


# --- finetune.run: the output folder and --resume ------------------------------------------------------------------

def test_an_output_folder_that_is_a_file_is_refused_by_the_dry_run(cli, capsys):
    file = cli.text("taken", "x")
    one_clean_line(run.main, [cli.recipe, "--dry-run", f"training.output_dir={file}/run"], capsys, "is a file")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "run"])
def test_an_output_folder_that_cannot_be_written_stops_before_any_compute(dry_run, cli, capsys, monkeypatch):
    """A read-only disk (simulated: the tests run as root, which any real permission would let through)."""
    write_bytes = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".finetune-probe"):
            raise PermissionError(13, "Permission denied", str(self))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    line = one_clean_line(run.main, [cli.recipe, *(["--dry-run"] if dry_run else [])], capsys, "Cannot write to",
                          "Permission denied", "may not write there", "training.output_dir")
    assert "Free space" not in line  # #30: a permission problem was answered with disk-space advice


def test_a_list_on_one_side_of_prompt_completion_names_that_side(cli, capsys):
    """#30: a list in 'completion' was blamed on 'prompt'."""
    data = cli.text("pc.jsonl", '{"prompt": "The sky is", "completion": ["blue"]}\n')
    one_clean_line(run.main, [cli.recipe, f"data.train={data}", "data.format=prompt_completion", "--dry-run"],
                   capsys, "pc.jsonl:1: field 'completion' is a list of messages but 'prompt' is not")


def test_a_misspelt_key_suggests_each_name_once(cli, capsys):
    """#30: training.learnin_rate suggested training.learning_rate twice (a field and a TrainingArguments name)."""
    line = one_clean_line(run.main, [cli.recipe, "training.learnin_rate=1e-4"], capsys, "training.learning_rate")
    assert line.count("training.learning_rate") == 1


def test_a_folder_holding_another_run_is_refused_unless_resuming(cli, capsys):
    cli.out.mkdir()
    (cli.out / "adapter_model.safetensors").write_bytes(b"a finished run")
    one_clean_line(run.main, [cli.recipe], capsys, "already holds files", "adapter_model.safetensors", "--resume")
    assert (cli.out / "adapter_model.safetensors").read_bytes() == b"a finished run"  # nothing overwritten


def test_resume_without_a_checkpoint(cli, capsys):
    cli.out.mkdir()
    one_clean_line(run.main, [cli.recipe, "--resume"], capsys, "no complete checkpoint", "save_strategy=steps")


def test_resume_from_a_folder_that_is_not_a_checkpoint(cli, capsys):
    one_clean_line(run.main, [cli.recipe, "--resume", cli.tmp], capsys, "not a complete checkpoint folder")


def test_resume_refuses_a_changed_method_and_records_a_changed_step_count(cli, capsys):
    saving = ["training.save_strategy=steps", "training.save_steps=1"]
    assert run.main([str(cli.recipe), *saving]) == 0
    original = json.loads((cli.out / "recipe.json").read_text())
    one_clean_line(run.main, [cli.recipe, "--resume", "method.r=8", *saving], capsys, "method.r: 4 -> 8",
                   "cannot change in a resumed run")
    assert run.main([str(cli.recipe), "--resume", "training.max_steps=3", *saving]) == 0
    record = json.loads((cli.out / "recipe.json").read_text())
    # recipe.json keeps what the run started with and records the resume: it never claims 3 steps from the start
    assert record["training"]["max_steps"] == original["training"]["max_steps"] == 2
    assert record["resumed"] == [{"step": 2, "changed": {"training.max_steps": [2, 3]}}]


def test_not_enough_free_space_stops_before_training(cli, capsys, monkeypatch):
    import finetune.runs.folder

    usage = shutil.disk_usage(cli.tmp)
    monkeypatch.setattr(finetune.runs.folder.shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    one_clean_line(run.main, [cli.recipe], capsys, "MiB free", "will write about")
    assert not (cli.out / "logs.jsonl").exists()  # stopped before the first step


def test_the_free_space_estimate_counts_the_tokenizer_and_report(tiny_llama):
    """#30: the final save failed in the tokenizer's writer although the estimate had passed (it counted weights)."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from finetune.runs.folder import REPORT_BYTES, expected_bytes

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    args = SimpleNamespace(save_strategy="no", save_total_limit=None)
    without = expected_bytes(model, args, whole_model=True)
    tokenizer = (tiny_llama / "tokenizer.json").stat().st_size + (tiny_llama / "tokenizer_config.json").stat().st_size
    assert expected_bytes(model, args, whole_model=True, tokenizer_dir=tiny_llama) >= without + tokenizer
    assert without == REPORT_BYTES + sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   Exception("No space left on device (os error 28)")],
                         ids=["OSError", "the tokenizer writer's bare Exception"])
def test_a_failed_final_save_keeps_the_weights_and_says_where(error, cli, capsys, monkeypatch):
    from finetune.training.trainers import SFTTrainer

    save = SFTTrainer.save_model

    def full_disk(self, output_dir=None, _internal_call=False):
        if Path(output_dir) == cli.out:
            raise error
        return save(self, output_dir, _internal_call)

    monkeypatch.setattr(SFTTrainer, "save_model", full_disk)
    monkeypatch.setenv("FINETUNE_CACHE", str(cli.tmp / "cache"))
    line = one_clean_line(run.main, [cli.recipe], capsys, "No space left on device", "they were saved to")
    rescued = Path(line.split("they were saved to ")[1].split(" instead")[0])
    assert (rescued / "adapter_model.safetensors").stat().st_size > 0 and (rescued / "recipe.json").exists()


# --- divergence ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("learning_rate, max_steps", [("1e6", 30), ("1e20", 30), ("1e6", 6)])
def test_a_blown_up_run_stops_with_the_step_lines_and_advice_and_is_not_saved(
        learning_rate, max_steps, cli, capsys):
    """6 steps at 1e6: the gradients are 0 from step 3, one step short of the guard's patience when it ends."""
    line = one_clean_line(run.main, [cli.recipe, f"training.learning_rate={learning_rate}",
                                     f"training.max_steps={max_steps}", "training.max_grad_norm=0"], capsys,
                          "Training diverged at step", "lines [", "Lower training.learning_rate")
    assert f"now {float(learning_rate):g}" in line
    print(line)  # for the docs/troubleshooting.md table: pytest -s shows what a user sees
    assert not (cli.out / "adapter_model.safetensors").exists()


def test_the_guard_sees_every_optimizer_step(cli, monkeypatch):
    """It hooks the Trainer's private ``_get_grad_norm``: this fails if transformers stops calling it."""
    from finetune.training.divergence import DivergenceGuard

    seen = []
    step = DivergenceGuard.step
    monkeypatch.setattr(DivergenceGuard, "step", lambda self, n, norm: seen.append((n, norm)) or step(self, n, norm))
    assert run.main([str(cli.recipe), "training.max_steps=3"]) == 0
    assert [n for n, _ in seen] == [1, 2, 3] and all(norm > 0 for _, norm in seen)


# --- the other commands --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tiny_llama, tmp_path_factory):
    """A finished LoRA run on the tiny Llama (the later commands' input)."""
    from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
    from finetune.train import train

    tmp = tmp_path_factory.mktemp("trained")
    data = write_jsonl(tmp / "d.jsonl", ALPACA)
    return train(Recipe(name="t", model=ModelSpec(path=str(tiny_llama), max_length=64),
                        data=DataSpec(train=str(data), template="chatml"), method=LoraSpec(r=4),
                        training=TrainingSpec(output_dir=str(tmp / "run"), max_steps=1), eval=EvalSpec(samples=0)
                        )).output_dir


@pytest.fixture
def damaged_run(trained_run, tmp_path):
    copy = shutil.copytree(trained_run, tmp_path / "damaged")
    truncated(copy / "adapter_model.safetensors")
    return copy


@pytest.mark.parametrize("main, extra", [(evaluate.main, []), (chat.main, ["--prompt", "hi"]),
                                         (merge.main, ["merged"])], ids=["evaluate", "chat", "merge"])
def test_a_truncated_adapter_names_itself(main, extra, damaged_run, capsys):
    one_clean_line(main, [damaged_run, *extra], capsys, "adapter_model.safetensors is damaged")


@pytest.mark.parametrize("main, extra", [(evaluate.main, []), (chat.main, ["--prompt", "hi"]),
                                         (merge.main, ["merged"]), (export_cli.main, ["out.gguf"])],
                         ids=["evaluate", "chat", "merge", "export"])
def test_a_folder_that_is_not_a_run(main, extra, tmp_path, capsys):
    one_clean_line(main, [tmp_path, *extra], capsys, "not a finetune run folder")


@pytest.mark.parametrize("main, extra", [(evaluate.main, []), (chat.main, ["--prompt", "hi"]),
                                         (merge.main, ["merged"])], ids=["evaluate", "chat", "merge"])
def test_a_run_missing_its_adapter_config_names_the_file(main, extra, trained_run, tmp_path, capsys):
    """#30: peft's bare ValueError about the config."""
    copy = shutil.copytree(trained_run, tmp_path / "partial")
    (copy / "adapter_config.json").unlink()
    one_clean_line(main, [copy, *extra], capsys, "has no adapter_config.json", "copy the run folder again")


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_evaluate_with_a_limit_below_one_is_refused(limit, trained_run, capsys):
    """#30: --limit -1 evaluated 39 of 40 examples ([:-1])."""
    one_clean_line(evaluate.main, [trained_run, "--limit", limit], capsys, f"--limit {limit}", "1 or more")


def test_a_recipe_path_that_is_a_folder_says_so(tmp_path, capsys):
    """#30: a folder was reported as "not found"."""
    one_clean_line(run.main, [tmp_path], capsys, "is a folder; give a recipe file in it")


def test_an_invalid_wandb_key_is_one_line_before_any_compute(cli, capsys, monkeypatch, tmp_path):
    """#30: an invalid WANDB_API_KEY with report_to=wandb ended in wandb's traceback once training had started."""
    monkeypatch.setenv("WANDB_API_KEY", "not-a-key")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    for flags in (["--dry-run"], []):
        one_clean_line(run.main, [cli.recipe, "training.report_to=wandb", *flags], capsys,
                       "W&B refuses the key: API key", "WANDB_MODE=offline")
    assert not (cli.out / "logs.jsonl").exists()


def test_a_wandb_refusal_at_start_is_one_line_too(cli, capsys, monkeypatch, tmp_path):
    """What the key check cannot see (a well-formed key the server rejects, no network) is caught where W&B
    starts: here its own AuthenticationError, raised as ``wandb.init`` raises it."""
    import wandb
    from wandb.errors import AuthenticationError

    def refuse(**_):
        raise AuthenticationError("API key not valid for this server.")

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", refuse)
    one_clean_line(run.main, [cli.recipe, "training.report_to=wandb"], capsys,
                   "W&B did not start (AuthenticationError: API key not valid", "WANDB_MODE=offline")


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry run", "run"])
def test_evaluation_without_held_out_data_is_refused_before_anything_loads(flags, cli, capsys):
    """#30: the demo recipe with data.eval= kept eval_strategy=steps: a raw transformers ValueError after the model
    loaded, an empty run folder left behind, and --dry-run passed."""
    demo = str(ROOT / "recipes" / "smollm2_lora.py")
    one_clean_line(run.main, [demo, "data.eval=", f"training.output_dir={cli.out}", *flags], capsys,
                   "training.eval_strategy=steps evaluates held-out data", "data.eval_split")
    assert not cli.out.exists()
    # Overrides apply as a whole: the one that fixes it may come after the one that broke it.
    assert run.main([demo, "data.eval=", "training.eval_strategy=no", "--dry-run"]) == 0


def test_a_best_model_metric_that_is_never_logged_is_refused_before_training(cli, capsys):
    """#30: metric_for_best_model=eval_rouge-l with eval.generate=false: a KeyError after 201 s, nothing saved."""
    one_clean_line(run.main, [cli.recipe, "training.metric_for_best_model=eval_rouge-l", "eval.generate=false",
                              "--dry-run"], capsys, "eval_rouge-l is a generation score", "eval.generate=true")


# --- nothing already there is overwritten --------------------------------------------------------------------------

def test_merge_into_a_folder_holding_other_files_is_refused_unless_overwrite(trained_run, tmp_path, capsys):
    """#30: merge replaced a model.safetensors that was already in OUT."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's model")
    one_clean_line(merge.main, [trained_run, out], capsys, "already holds files finetune.merge did not write",
                   "model.safetensors", "--overwrite")
    assert (out / "model.safetensors").read_bytes() == b"someone else's model"
    assert merge.main([str(trained_run), str(tmp_path / "merged")]) == 0
    assert merge.main([str(trained_run), str(tmp_path / "merged")]) == 0  # its own earlier output: replaced
    assert merge.main([str(trained_run), str(out), "--overwrite"]) == 0 and (out / "merge_report.json").exists()


def test_export_over_a_file_it_did_not_write_is_refused_unless_overwrite(trained_run, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"not a gguf file")
    one_clean_line(export_cli.main, [trained_run, out], capsys, "already exists and is not finetune.export",
                   "--overwrite")
    assert out.read_bytes() == b"not a gguf file"
    assert export_cli.main([str(trained_run), str(out), "--overwrite"]) == 0
    assert export_cli.main([str(trained_run), str(out)]) == 0  # its own earlier export is replaced
    assert out.read_bytes()[:4] == b"GGUF"


def test_report_into_a_folder_that_is_not_a_run_is_refused(tmp_path):
    """#30: report.html was written into any folder."""
    from finetune import report
    from finetune.errors import UsageError

    (tmp_path / "notes").mkdir()
    with pytest.raises(UsageError, match="is not a run folder"):
        report.main([str(tmp_path / "notes")])
    assert not (tmp_path / "notes" / "report.html").exists()


def test_evaluate_into_a_folder_holding_other_files_is_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    one_clean_line(evaluate.main, [trained_run, "--out", out], capsys, "did not write (mine.txt)", "--overwrite")
    data = write_jsonl(tmp_path / "held_out.jsonl", ALPACA[:2])
    again = [str(trained_run), "--data", str(data), "--out", str(tmp_path / "fresh"), "--max-new-tokens", "2"]
    assert evaluate.main(again) == 0 and evaluate.main(again) == 0  # its own earlier output is replaced


@pytest.mark.parametrize("command", ["convert", "mix", "filter"])
def test_data_tools_never_replace_an_existing_file_unless_overwrite(command, tmp_path, capsys):
    source = write_jsonl(tmp_path / "in.jsonl", ALPACA)
    out = tmp_path / "out.jsonl"
    out.write_text("my own data\n")
    argv = {"convert": ["convert", source, out, "--from", "alpaca", "--to", "messages"],
            "mix": ["mix", out, "--source", f"{source}:alpaca"],
            "filter": ["filter", source, out]}[command]
    one_clean_line(data_cli.main, argv, capsys, "already exists and is not finetune.data", "--overwrite")
    assert out.read_text() == "my own data\n"
    assert data_cli.main([str(a) for a in argv] + ["--overwrite"]) == 0 and out.read_text() != "my own data\n"


def test_evaluate_with_a_verbalizer_that_is_not_json(trained_run, tmp_path, capsys):
    bad = tmp_path / "v.json"
    bad.write_text("label: word")
    one_clean_line(evaluate.main, [trained_run, "--verbalizer", bad], capsys, "--verbalizer", "not JSON")


def test_data_tools_name_the_bad_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{oops}\n')
    one_clean_line(data_cli.main, ["convert", bad, tmp_path / "out.jsonl", "--from", "alpaca", "--to", "sharegpt"],
                   capsys, "bad.jsonl:2")


# --- the real command line -----------------------------------------------------------------------------------------

def test_the_real_command_line_prints_one_line_and_verbose_the_traceback(cli):
    argv = [sys.executable, "-m", "finetune.run", str(cli.recipe), "--dry-run", f"model.path={cli.tmp / 'absent'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cli.tmp)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert [line for line in quiet.stderr.splitlines() if line.startswith("error:")] == [
        line for line in quiet.stderr.splitlines() if line.strip()], quiet.stderr
    loud = subprocess.run([*argv, "--verbose"], capture_output=True, text=True, env=env, cwd=cli.tmp)
    # The traceback for a bug report, and the same exit status (#30: it was 1 with --verbose, 2 without).
    assert loud.returncode == 2 and "Traceback" in loud.stderr and "ModelNotFoundError" in loud.stderr


# --- run folders ---------------------------------------------------------------------------------------------------

def test_two_runs_started_in_the_same_second_get_two_folders(cli, monkeypatch):
    import finetune.runs.folder
    from finetune.recipe_file import load_recipe
    from finetune.runs.checkpoints import latest_run_dir

    monkeypatch.chdir(cli.tmp)
    monkeypatch.setattr(finetune.runs.folder.time, "strftime", lambda fmt: "20261130-120000")
    recipe = load_recipe(cli.recipe, ["training.output_dir="])
    first, second = (finetune.runs.folder.open_run_folder(recipe).path for _ in range(2))
    assert (first.name, second.name) == ("cli-20261130-120000", "cli-20261130-120000-2")
    assert latest_run_dir("cli") is None  # both still empty: nothing to resume
    (first / "checkpoint-1").mkdir()
    assert latest_run_dir("cli") == first
    (second / "checkpoint-1").mkdir()
    assert latest_run_dir("cli") == second


_RACE = """
import json, sys, time
from finetune.errors import RunFolderError
from finetune.recipe_file import load_recipe
from finetune.runs.folder import open_run_folder

recipe_file, root, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
start = float(sys.stdin.readline())  # one instant for both, sent once both have imported everything
won = []
for i in range(rounds):
    at = start + 0.25 * i
    time.sleep(max(0.0, at - time.time() - 0.002))
    while time.time() < at:  # both processes go at the same instant, round after round
        pass
    try:
        open_run_folder(load_recipe(recipe_file, [f"training.output_dir={root}/run-{i}"]))
        won.append(i)
    except RunFolderError as err:
        assert "in use by another run" in str(err) or "already holds files" in str(err), err
print(json.dumps(won), flush=True)
sys.stdin.readline()  # both still running until told: a claim is released only when its run ends
"""


def test_two_runs_started_together_in_one_output_dir_one_is_refused_every_time(cli, tmp_path):
    """#30: the emptiness check and mkdir(exist_ok=True) were two steps; both runs passed and shared the folder.
    Two processes claim 20 folders at the same instants: each folder has exactly one owner."""
    import json
    import time

    rounds, env = 20, {**os.environ, "PYTHONPATH": str(ROOT)}
    racers = [subprocess.Popen([sys.executable, "-c", _RACE, str(cli.recipe), str(tmp_path / "race"), str(rounds)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    assert [racer.stdout.readline().strip() for racer in racers] == ["ready", "ready"]
    start = time.time() + 0.5
    for racer in racers:
        racer.stdin.write(f"{start}\n")
        racer.stdin.flush()
    won = [json.loads(racer.stdout.readline()) for racer in racers]  # both still hold their claims here
    for racer in racers:
        racer.communicate("\n", timeout=60)
    # Each folder was claimed once: every round has one winner, and the other was refused at the same instant.
    assert sorted(won[0] + won[1]) == list(range(rounds)), won
    assert not list((tmp_path / "race").glob("run-*/.finetune-claim"))  # released when the processes ended


def test_a_claim_left_by_a_killed_run_is_taken_over(cli, tmp_path):
    from finetune.recipe_file import load_recipe
    from finetune.runs.folder import CLAIM, open_run_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "stale"
    folder.mkdir()
    (folder / CLAIM).write_text(dead.stdout)
    run_folder = open_run_folder(load_recipe(cli.recipe, [f"training.output_dir={folder}"]))
    assert (folder / CLAIM).read_text().strip() == str(os.getpid())
    run_folder.release()
    assert not (folder / CLAIM).exists()


def test_a_complete_checkpoint_with_damaged_weights_is_skipped_on_resume(trained_run, tmp_path):
    from finetune.runs.checkpoints import COMPLETE, latest_checkpoint

    for step, damage in ((2, False), (4, True)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        shutil.copy(trained_run / "adapter_model.safetensors", folder)
        (folder / COMPLETE).write_text(f"step {step}\n")
        if damage:  # marked complete when saved, cut short later (a copy to another disk)
            truncated(folder / "adapter_model.safetensors")
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_dry_run_creates_no_folder(cli):
    assert run.main([str(cli.recipe), "--dry-run"]) == 0
    assert not cli.out.exists()
