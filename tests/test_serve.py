"""``python -m finetune.serve`` answered through the official ``openai`` client, as users' tools call it: the run's
own template, greedy answers equal to ``generate``'s, streaming that adds up to the same text, stop strings,
max_tokens, sampling, OpenAI's error shapes, and the guard against other origins and callers without the token."""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from test_evaluate import train_tiny_run

from finetune import PTuningSpec
from finetune.data.tokenize import Encoder
from finetune.evaluation.generation import generate
from finetune.inference import load_run
from finetune.serve import RunPool, create_app, main

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "Name one colour."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    return train_tiny_run(tiny_llama, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """``python -m finetune.serve RUN --port P`` as a user starts it; yields its base URL."""
    port, log = free_port(), tmp_path_factory.mktemp("serve-log") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "finetune.serve", str(run_dir), "--port", str(port),
                                    "--name", "tiny-run"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, log, url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_until_serving(process, log: Path, url: str, seconds: float = 120) -> None:
    """Until the banner is printed and the port answers (the server fails the test if it exits first)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        if "Serving" in log.read_text():
            try:
                httpx.get(url + "/v1/models", timeout=2)
                return
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"no server after {seconds}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def greedy(run, messages, max_new_tokens):
    return generate(run.model, run.tokenizer, run.template, [messages], max_new_tokens, progress=False)[0]


def test_models_lists_the_run_under_its_name(client):
    assert [m.id for m in client.models.list()] == ["tiny-run"]


def test_greedy_answer_is_generate_with_the_run_template_and_counts_tokens(client, run):
    reply = client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12)
    expected = greedy(run, QUESTION, 12)
    assert expected and reply.choices[0].message.content == expected
    ids = Encoder(run.tokenizer, run.template, max_length=10**9).encode_prompt(QUESTION)
    assert reply.usage.prompt_tokens == len(ids)
    assert 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == len(ids) + reply.usage.completion_tokens
    # 12 tokens of a random model: the answer ran out of room unless the model ended its turn.
    assert reply.choices[0].finish_reason == ("length" if reply.usage.completion_tokens == 12 else "stop")


def test_streamed_deltas_add_up_to_the_answer(client):
    whole = client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12)
    chunks = list(client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # token by token, not at once
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string_cuts_the_answer_streamed_or_not(client):
    whole = client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12)
    content = whole.choices[0].message.content
    stop = content[len(content) // 2:len(content) // 2 + 3]
    assert stop.strip(), content
    cut = content[:content.find(stop)].rstrip()
    reply = client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12, stop=[stop])
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (cut, "stop")
    chunks = list(client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=12, stop=stop,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_temperature_samples_and_zero_is_greedy(client):
    greedy_answers = {client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=10,
                                                     temperature=0).choices[0].message.content for _ in range(2)}
    sampled = {client.chat.completions.create(model="tiny-run", messages=QUESTION, max_tokens=10, temperature=5.0,
                                              top_p=0.99).choices[0].message.content for _ in range(3)}
    assert len(greedy_answers) == 1
    assert len(sampled) > 1  # a random tiny model at temperature 5: three equal 10-token answers would be a bug


def test_errors_have_openais_shape(client):
    with pytest.raises(openai.NotFoundError, match="tiny-run"):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="must end with a user"):
        client.chat.completions.create(model="tiny-run", messages=[*QUESTION, {"role": "assistant", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.chat.completions.create(model="tiny-run", messages=QUESTION, n=2)


def test_other_origins_and_foreign_host_names_are_refused(server):
    body = {"model": "tiny-run", "messages": QUESTION, "max_tokens": 2}
    refused = httpx.post(server + "/v1/chat/completions", json=body, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403 and "another origin" in refused.json()["error"]["message"]
    rebound = httpx.get(server + "/v1/models", headers={"Host": "evil.example"})
    assert rebound.status_code == 403
    same = httpx.post(server + "/v1/chat/completions", json=body, headers={"Origin": server})
    assert same.status_code == 200


@pytest.fixture(scope="module")
def ptuning_run(tiny_llama, tmp_path_factory):
    return train_tiny_run(tiny_llama, tmp_path_factory.mktemp("serve-ptuning"), PTuningSpec(pre_seq_len=4))


def in_process(app, port):
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def test_ptuning_run_answers_in_one_chunk_and_token_is_required(ptuning_run):
    port = free_port()
    server, thread = in_process(create_app(RunPool.of_run(ptuning_run, "prefix"), token="s3cret"), port)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        hello = [{"role": "user", "content": "Hello"}]  # (this random prefix answers other prompts with newlines)
        whole = client.chat.completions.create(model="prefix", messages=hello, max_tokens=8)
        run = load_run(ptuning_run)
        assert whole.choices[0].message.content == greedy(run, hello, 8) != ""
        chunks = list(client.chat.completions.create(model="prefix", messages=hello, max_tokens=8, stream=True))
        contents = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert contents == [whole.choices[0].message.content]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_exposing_without_a_token_and_a_folder_that_is_no_run_are_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a finished finetune run folder" in err and len(err.splitlines()) == 1
