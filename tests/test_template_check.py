"""``python -m finetune.check template``: 0 mismatches for every family's template on real data, and the class of
bug it exists for (a training render that differs from inference's) found, with its context and exit 1."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TODAY, real_tokenizer

from finetune.check import main
from finetune.template_check import check_conversations
from finetune.templates import TokenizerTemplate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("family", sorted(TODAY))
def test_every_family_in_the_readme_table_has_no_mismatch(family, todays_model, capsys):
    rc = main(["template", str(ROOT / "recipes" / "qwen3_lora.py"), f"model.path={todays_model(family)}",
               "--n", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "20 examples: 0 whole-conversation mismatches" in out and ", 0 prompt mismatches" in out


def test_tool_and_reasoning_data_and_a_trained_run_check_clean_from_the_command_line(todays_model, tmp_path):
    from finetune.recipe_file import load_recipe
    from finetune.train import train

    tiny = todays_model("qwen3")
    command = [sys.executable, "-m", "finetune.check", "template", "recipes/qwen3_tools_lora.py", "--n", "8",
               f"model.path={tiny}"]  # flags anywhere, as finetune.run takes them
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "template tokenizer" in done.stdout and "8 examples: 0 whole-conversation mismatches" in done.stdout
    run = train(load_recipe(ROOT / "recipes" / "qwen3_tools_lora.py", [
        f"model.path={tiny}", f"training.output_dir={tmp_path / 'run'}", "training.max_steps=1",
        "training.eval_strategy=no", "eval.samples=0"])).output_dir
    done = subprocess.run([sys.executable, "-m", "finetune.check", "template", str(run), "--n", "4"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and "4 examples: 0 whole-conversation mismatches" in done.stdout, done.stdout


@dataclass(frozen=True)
class SlicingTemplate(TokenizerTemplate):
    """The method this project used before: render the conversation up to each answer with and without it and
    slice each piece by the previous render's length, trusting it to be a prefix."""

    whole_text = False

    def render(self, messages, *, bos="", eos="", tokenizer=None, tools=None):
        plain = [{"role": m["role"], "content": m["content"]} for m in messages]
        segments, done = [("", False)], ""
        for i, message in enumerate(plain):
            if message["role"] == "assistant":
                head = tokenizer.apply_chat_template(plain[:i], tokenize=False, add_generation_prompt=True)
                segments.append((head[len(done):], False))
                done = tokenizer.apply_chat_template(plain[:i + 1], tokenize=False)
                segments.append((done[len(head):], True))
        return [segments[0]] + [s for s in segments[1:] if s[0]]


def test_a_training_render_that_differs_from_inference_is_found_with_its_context():
    qwen3 = real_tokenizer("qwen3")
    conversation = [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Red."}]
    result = check_conversations(qwen3, SlicingTemplate(), [conversation], [None])
    assert not result.ok and result.mismatches["transformers"] == 1
    # The old render kept the first answer's empty think block and cut the second user turn's header.
    assert "training has" in result.first["transformers"] and "<think>" in result.first["transformers"]
    assert check_conversations(qwen3, TokenizerTemplate(), [conversation], [None]).ok
