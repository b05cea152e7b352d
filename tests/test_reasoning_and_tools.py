"""Reasoning traces and tool calls: read from JSONL and Parquet, rendered by the model's own template (Qwen3's),
trained as the template shows them at inference; refused with one clear line where a template cannot show them."""
from __future__ import annotations

import json

import pytest
from conftest import real_tokenizer
from helpers import write_jsonl

from finetune.data import build_datasets
from finetune.data.errors import DataError
from finetune.data.tokenize import IGNORE_INDEX, Encoder
from finetune.errors import UsageError
from finetune.models import resolve_model
from finetune.recipe import DataSpec, ModelSpec
from finetune.templates import TemplateError, get_template

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}

AGENT = {"tools": [WEATHER], "messages": [
    {"role": "system", "content": "You help with the weather."},
    {"role": "user", "content": "Is it raining in Oslo?"},
    {"role": "assistant", "content": "", "reasoning_content": "I should look it up.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
    {"role": "tool", "content": "{\"rain\": true, \"celsius\": 4}"},
    {"role": "assistant", "content": "Yes, it is raining in Oslo (4 °C).", "reasoning_content": "The tool says rain."},
    {"role": "user", "content": "Should I cycle?"},
    {"role": "assistant", "content": "<think>\nRain and 4 degrees: no.\n</think>\n\nBetter take the bus."},
]}


@pytest.fixture(scope="module")
def qwen3():
    return real_tokenizer("qwen3")


def supervised_text(tok, ids, labels) -> str:
    return tok.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def tokenized(tok, tmp_path, records, name="data.jsonl", **spec):
    path = write_jsonl(tmp_path / name, records) if name.endswith(".jsonl") else records
    data = build_datasets(DataSpec(train=str(path), format="messages", **spec), tok, get_template("tokenizer"), 4096)
    return data.train


def reference_messages(record) -> list[dict]:
    """The record as a user passes it to apply_chat_template (arguments as an object)."""
    messages = json.loads(json.dumps(record["messages"]))
    for message in messages:
        for call in message.get("tool_calls", []):
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
    return messages


def test_tool_calls_and_the_last_turns_reasoning_train_tool_results_are_context(qwen3, tmp_path):
    row = tokenized(qwen3, tmp_path, [AGENT])[0]
    ids, labels = row["input_ids"], row["labels"]
    assert ids == qwen3.apply_chat_template(reference_messages(AGENT), tools=AGENT["tools"], tokenize=True,
                                            return_dict=False)
    text, trained = qwen3.decode(ids), supervised_text(qwen3, ids, labels)
    assert '"name": "get_weather"' in text and "<tools>" in text  # the schema reached the system prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in trained
    assert "Yes, it is raining in Oslo" in trained and "Better take the bus." in trained
    assert "<tool_response>" not in trained and '"rain": true' not in trained  # the tool's answer is context
    # Qwen3 drops the reasoning of answers before the last user query; the last answer's reasoning trains.
    assert "Rain and 4 degrees: no." in trained
    assert "I should look it up." not in text and "The tool says rain." not in text


def test_every_supervised_token_is_text_the_template_renders(qwen3, tmp_path):
    """Supervised spans are cut from the one rendering inference also makes: never a turn rendered on its own."""
    row = tokenized(qwen3, tmp_path, [AGENT])[0]
    rendered = qwen3.apply_chat_template(reference_messages(AGENT), tools=AGENT["tools"], tokenize=False)
    run, runs = [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            runs, run = runs + [qwen3.decode(run)], []
    runs += [qwen3.decode(run)] if run else []
    assert len(runs) == 3 and all(text in rendered for text in runs)


def test_parquet_with_per_file_tools_reads_the_same_rows(qwen3, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "tools.json").write_text(json.dumps([WEATHER]))
    records = [{"messages": AGENT["messages"]}] * 3
    pq.write_table(pa.Table.from_pylist([{"messages": json.dumps(r["messages"])} for r in records]),
                   tmp_path / "data.parquet")
    with pytest.raises(DataError, match="must be a non-empty list"):  # messages stored as JSON text
        tokenized(qwen3, tmp_path, tmp_path / "data.parquet", "data.parquet", tools=str(tmp_path / "tools.json"))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "data.parquet")
    parquet = tokenized(qwen3, tmp_path, tmp_path / "data.parquet", "data.parquet", tools=str(tmp_path / "tools.json"))
    jsonl = tokenized(qwen3, tmp_path, [AGENT])
    assert len(parquet) == 3 and parquet[0]["input_ids"] == jsonl[0]["input_ids"]
    assert parquet[0]["labels"] == jsonl[0]["labels"]


@pytest.mark.parametrize("where", ["reasoning_content", "inline"])
def test_thinking_drop_removes_reasoning_and_turns_enable_thinking_off(qwen3, where, todays_model, tmp_path):
    answer = {"role": "assistant", "content": "Blue.", "reasoning_content": "Rayleigh."} if where != "inline" else \
        {"role": "assistant", "content": "<think>\nRayleigh.\n</think>\n\nBlue."}
    record = {"messages": [{"role": "user", "content": "Sky?"}, answer]}
    kept = tokenized(qwen3, tmp_path, [record], name="kept.jsonl")[0]
    kept_text = supervised_text(qwen3, kept["input_ids"], kept["labels"])
    assert "<think>\nRayleigh.\n</think>\n\nBlue.<|im_end|>" in kept_text

    template = resolve_model(ModelSpec(path=str(todays_model("qwen3"))), thinking="drop").template  # as train()
    assert template.enable_thinking is False and template.to_dict()["enable_thinking"] is False  # template.json
    encoder = Encoder(qwen3, template, 4096, thinking="drop")
    row = encoder({"messages": [record["messages"]], "tools": [None]})
    ids, labels = row["input_ids"][0], row["labels"][0]
    assert "Rayleigh" not in qwen3.decode(ids)
    # Inference with enable_thinking=False opens the answer with an empty think block: it is context here too.
    assert supervised_text(qwen3, ids, labels) == "Blue.<|im_end|>\n"
    assert encoder.encode_prompt(record["messages"][:1]) == qwen3.apply_chat_template(
        record["messages"][:1], add_generation_prompt=True, enable_thinking=False, tokenize=True, return_dict=False)


def test_reasoning_a_template_cannot_show_is_refused_on_auto_and_written_inline_on_keep(tokenizer):
    record = [{"role": "user", "content": "Sky?"},
              {"role": "assistant", "content": "Blue.", "reasoning_content": "Rayleigh."}]
    template = get_template("chatml")
    with pytest.raises(UsageError, match="cannot show; set data.thinking=drop"):
        Encoder(tokenizer, template, 4096, thinking="auto")({"messages": [record]})
    row = Encoder(tokenizer, template, 4096, thinking="keep")({"messages": [record]})
    assert "<think>\nRayleigh.\n</think>\n\nBlue.<|im_end|>" in supervised_text(
        tokenizer, row["input_ids"][0], row["labels"][0])
    row = Encoder(tokenizer, template, 4096, thinking="drop")({"messages": [record]})
    assert "Rayleigh" not in tokenizer.decode(row["input_ids"][0])


def test_tools_with_a_template_that_cannot_show_them_is_one_clear_error(tokenizer, tmp_path):
    plain = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in AGENT["messages"][:5]]
    path = write_jsonl(tmp_path / "tools.jsonl", [{"tools": AGENT["tools"], "messages": plain}])
    spec = DataSpec(train=str(path), format="messages")
    with pytest.raises(TemplateError, match="cannot show tools, tool calls or tool results"):
        build_datasets(spec, tokenizer, get_template("chatml"), 4096)
    gemma3 = real_tokenizer("gemma3")  # its template raises on a tool message: the template's words, one line
    with pytest.raises(TemplateError, match="chat template refused this conversation: .*alternate"):
        build_datasets(spec, gemma3, get_template("tokenizer"), 4096)


@pytest.mark.parametrize("bad, message", [
    ({"role": "tool", "content": "x"}, "turn 1 is 'tool' where 'assistant' was expected"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]}, r"tool_calls'\[0\]"),
    ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
     "arguments is not valid JSON"),
])
def test_malformed_tool_data_names_the_line_and_field(bad, message, tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "q"}, bad]}])
    with pytest.raises(DataError, match=f"bad.jsonl:1.*{message}"):
        build_datasets(DataSpec(train=str(path), format="messages"), real_tokenizer("qwen3"),
                       get_template("tokenizer"), 4096)


def test_generation_renders_each_conversations_tools_into_its_prompt(qwen3):
    """Held-out answers (before/after samples, generation metrics) are asked with the tools training showed."""
    import torch

    from finetune.evaluation.generation import generate

    class Recorder(torch.nn.Module):  # stands in for a model: records the prompts generate() builds
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, attention_mask=None, **_):
            self.prompts = input_ids
            return torch.cat([input_ids, input_ids[:, -1:]], 1)

    model, question = Recorder(), [{"role": "user", "content": "Is it raining in Oslo?"}]
    generate(model, qwen3, get_template("tokenizer"), [question, question], tools=[json.dumps([WEATHER]), None],
             progress=False)
    with_tools, without = (qwen3.decode(row[row != qwen3.pad_token_id]) for row in model.prompts)
    assert '"name": "get_weather"' in with_tools and "get_weather" not in without
