"""The chat CLI on tiny LoRA and P-Tuning runs: one-shot answers, multi-turn rendering, streaming and /reset."""
import io

import pytest
from test_evaluate import train_tiny_run

from finetune import PTuningSpec
from finetune.chat import Chat, main
from finetune.evaluation.generation import generate
from finetune.inference import load_run


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    return train_tiny_run(tiny_llama, tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


def answer(run, messages, max_new_tokens=8):
    return generate(run.model, run.tokenizer, run.template, [messages], max_new_tokens, progress=False)[0]


def test_prompt_prints_what_generate_answers_with_the_run_template(run_dir, run, capsys):
    assert main([str(run_dir), "--prompt", "Name one colour.", "--max-new-tokens", "8"]) == 0
    expected = answer(run, [{"role": "user", "content": "Name one colour."}])
    assert expected and capsys.readouterr().out == expected + "\n"


def test_history_renders_previous_turns_in_the_template(run):
    chat = Chat(run.model, run.tokenizer, run.template, system="Be brief.", max_new_tokens=8)
    first = chat.ask("Hi there")
    second = chat.ask("And again")
    assert first and second == answer(run, chat.messages[:-1])  # the second answer saw the whole history
    # ChatML (template "chatml" in the recipe) with SmolLM2's <|im_end|> as end of turn.
    assert chat.render("Third") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        f"<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n{first}<|im_end|>\n"
        f"<|im_start|>user\nAnd again<|im_end|>\n<|im_start|>assistant\n{second}<|im_end|>\n"
        "<|im_start|>user\nThird<|im_end|>\n<|im_start|>assistant\n")
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]


def test_interactive_loop_streams_answers_and_reset_forgets(run_dir, run, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n/reset\nHello\nHow are you?\n/exit\nnever read\n"))
    assert main([str(run_dir), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    fresh = answer(run, [{"role": "user", "content": "Hello"}])
    follow_up = answer(run, [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": fresh},
                             {"role": "user", "content": "How are you?"}])
    turns = [t.split("\nuser> ")[0].strip() for t in out.split("assistant> ")[1:]]
    # Streamed text is the decoded answer before generate strips it; after /reset "Hello" is answered afresh.
    assert turns == [fresh, fresh, follow_up]
    assert "(history cleared)" in out
    assert "never read" not in out


def test_prefix_model_answers_once_complete_in_the_loop(tiny_llama, tmp_path, capsys, monkeypatch):
    ptuning = PTuningSpec(pre_seq_len=4, prefix_projection=False, prefix_dropout=0.0)
    prefix_run = train_tiny_run(tiny_llama, tmp_path, ptuning)
    loaded = load_run(prefix_run)
    assert not Chat(loaded.model, loaded.tokenizer, loaded.template).streams
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello\n"))
    assert main([str(prefix_run), "--max-new-tokens", "8"]) == 0
    expected = answer(loaded, [{"role": "user", "content": "Hello"}])
    assert f"assistant> {expected}\n" in capsys.readouterr().out
