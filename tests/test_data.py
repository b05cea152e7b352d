"""Readers, loss masks (stanford_alpaca and Firefly rules), truncation and the label audit on the real tokenizer."""
import copy

import pytest
from helpers import write_jsonl

from finetune.data import IGNORE_INDEX, DataError, Encoder, LabelAudit, read_examples, show_example
from finetune.templates import Template, get_template


def encode(tokenizer, template, messages, max_length=512):
    out = Encoder(tokenizer, template, max_length)({"messages": [messages]})
    return {k: v[0] for k, v in out.items()}


def test_alpaca_masks_equal_the_stanford_alpaca_rule(tokenizer, alpaca_file):
    """stanford_alpaca: tokenize source+target and source; mask the first len(source) tokens; EOS supervised."""
    template = get_template("alpaca")
    prompt_input = ("Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n"
                    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
    for messages in read_examples(alpaca_file, "alpaca").conversations:
        record = {"instruction": messages[0]["content"], "input": messages[0]["input"],
                  "output": messages[1]["content"]}
        source = prompt_input.format_map(record)
        example_ids = tokenizer(source + record["output"] + tokenizer.eos_token).input_ids
        source_len = len(tokenizer(source).input_ids)
        expected_labels = [IGNORE_INDEX] * source_len + example_ids[source_len:]
        got = encode(tokenizer, template, messages)
        assert got["input_ids"] == example_ids
        assert got["labels"] == expected_labels
        assert got["labels"][-1] == tokenizer.eos_token_id and got["eos_labelled"]


def test_multi_turn_masks_equal_the_firefly_rule(tokenizer, tmp_path):
    """Firefly: <s> input1</s> target1</s> input2</s> target2</s>; every target (with its </s>) trains."""
    path = write_jsonl(tmp_path / "firefly.jsonl", [{"conversation": [
        {"human": "What is 2+2?", "assistant": "4."},
        {"human": "And times 3?", "assistant": "12, since 4 x 3 = 12."},
        {"human": "Thanks!", "assistant": "You're welcome."}]}])
    messages = read_examples(path, "firefly").conversations[0]
    eos = tokenizer.eos_token_id
    input_ids, target_mask = [], []
    for turn in [{"human": "What is 2+2?", "assistant": "4."},
                 {"human": "And times 3?", "assistant": "12, since 4 x 3 = 12."},
                 {"human": "Thanks!", "assistant": "You're welcome."}]:
        human = tokenizer(turn["human"], add_special_tokens=False).input_ids + [eos]
        answer = tokenizer(turn["assistant"], add_special_tokens=False).input_ids + [eos]
        input_ids += human + answer
        target_mask += [0] * len(human) + [1] * len(answer)
    got = encode(tokenizer, get_template("firefly"), messages)
    assert got["input_ids"] == input_ids
    assert got["labels"] == [t if m else IGNORE_INDEX for t, m in zip(input_ids, target_mask)]
    assert got["num_supervised"] == sum(target_mask)


def test_chatml_multi_turn_trains_every_answer_once(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye!"}]
    got = encode(tokenizer, get_template("chatml"), messages)
    supervised = tokenizer.decode([t for t in got["labels"] if t != IGNORE_INDEX])
    assert supervised == "Hello!<|im_end|>Goodbye!<|im_end|>"
    assert tokenizer.decode(got["input_ids"]) == "".join(t for t, _ in get_template("chatml").render(messages))


def test_truncation_keeps_whole_turns_and_counts_what_it_cut(tokenizer):
    long_answer = "word " * 60
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me more"}, {"role": "assistant", "content": long_answer}]
    template = get_template("chatml")
    got = encode(tokenizer, template, messages, max_length=40)
    assert got["dropped_turns"] == 1 and not got["truncated"]
    assert tokenizer.decode([t for t in got["labels"] if t != IGNORE_INDEX]) == "Hello!<|im_end|>"
    first_too_long = encode(tokenizer, template, messages[2:], max_length=20)
    assert first_too_long["truncated"] and len(first_too_long["input_ids"]) == 20
    assert not first_too_long["eos_labelled"]
    prompt_fills = encode(tokenizer, template, [{"role": "user", "content": long_answer}] + messages[1:2], 20)
    assert prompt_fills["num_supervised"] == 0 and prompt_fills["input_ids"] == []


@pytest.mark.parametrize("fmt,record,expected", [
    ("alpaca", {"instruction": "I", "input": "", "output": "O"}, [("user", "I"), ("assistant", "O")]),
    ("adgen", {"content": "类型#裙", "summary": "好看"}, [("user", "类型#裙"), ("assistant", "好看")]),
    ("sharegpt", {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                    {"from": "gpt", "value": "A"}]},
     [("system", "S"), ("user", "Q"), ("assistant", "A")]),
    ("firefly", {"conversation": [{"human": "Q1", "assistant": "A1"}, {"human": "Q2", "assistant": "A2"}]},
     [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]),
    ("messages", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
     [("user", "Q"), ("assistant", "A")]),
    ("text", {"text": "Plain text."}, [("assistant", "Plain text.")]),
])
def test_readers_normalise_each_format(tmp_path, fmt, record, expected):
    conversations = read_examples(write_jsonl(tmp_path / "d.jsonl", [record]), fmt).conversations
    assert [(m["role"], m["content"]) for m in conversations[0]] == expected


def test_alpaca_json_array_and_history(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"instruction": "Q2", "output": "A2", "history": [["Q1", "A1"]]}]', encoding="utf-8")
    conversation = read_examples(path, "alpaca").conversations[0]
    assert [m["content"] for m in conversation] == ["Q1", "A1", "Q2", "A2"]


@pytest.mark.parametrize("content,fmt,message", [
    ('{"instruction": "I", "output": "O"}\n{"instruction": "I", "output": \n', "alpaca", r"d.jsonl:2: invalid JSON"),
    ('{"instruction": "I"}\n', "alpaca", r"d.jsonl:1: field 'output' is missing"),
    ('{"instruction": "I", "output": 3}\n', "alpaca", r"d.jsonl:1: field 'output' must be a string, got int"),
    ('{"content": "x"}\n', "adgen", r"d.jsonl:1: field 'summary' is missing"),
    ('{"conversations": [{"from": "robot", "value": "x"}]}\n', "sharegpt", r"d.jsonl:1: .*'robot' is not one of"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}\n', "messages", r"d.jsonl:1: .*where 'user' was"),
    ('[1, 2]\n', "alpaca", r"d.jsonl record 0: expected a JSON object"),
    ('\n\n', "alpaca", r"d.jsonl: the data file is empty"),
])
def test_bad_records_name_file_line_and_field(tmp_path, content, fmt, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_examples(path, fmt)


def test_non_utf8_bytes_are_reported_with_their_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"instruction": "I", "output": "O"}\n{"instruction": "\xff", "output": "O"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: bytes are not valid UTF-8"):
        read_examples(path, "alpaca")


def test_empty_answers_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "I", "output": ""}, {"instruction": "I", "output": "O"}])
    result = read_examples(path, "alpaca")
    assert len(result.conversations) == 1 and result.skipped["empty answer"] == 1 and result.lines == [2]


def test_label_audit_counts_and_shows_the_mask(tokenizer, alpaca_file):
    import datasets

    conversations = read_examples(alpaca_file, "alpaca").conversations
    dataset = datasets.Dataset.from_dict({"messages": conversations}).map(
        Encoder(tokenizer, get_template("chatml"), 512), batched=True)
    audit = LabelAudit.of(dataset, tokenizer)
    assert audit.examples == 32 and audit.eos_labelled == 32 and audit.truncated == 0
    assert audit.supervised == sum(sum(t != IGNORE_INDEX for t in row) for row in dataset["labels"])
    assert 0 < audit.supervised_fraction < 1
    shown_note = "pad token == EOS"
    equal, distinct = copy.deepcopy(tokenizer), copy.deepcopy(tokenizer)
    equal.pad_token, distinct.pad_token = equal.eos_token, "<|endoftext|>"
    assert equal.eos_token != "<|endoftext|>"
    flagged, clean = LabelAudit.of(dataset, equal), LabelAudit.of(dataset, distinct)
    assert flagged.pad_is_eos and shown_note in flagged.format()
    assert not clean.pad_is_eos and shown_note not in clean.format()
    shown = show_example(dataset[0]["input_ids"], dataset[0]["labels"], tokenizer)
    assert shown.endswith(f"[[{conversations[0][1]['content']}<|im_end|>]]")


def test_template_prefix_uses_the_tokenizers_own_special_tokens(tokenizer):
    # SmolLM2 adds no BOS by itself, so {bos} renders to nothing and no id is invented.
    got = encode(tokenizer, Template(name="t", user="Q: {content}\nA: "),
                 [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert got["input_ids"] == tokenizer("Q: x\nA: ", add_special_tokens=False).input_ids + \
        tokenizer("y", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def test_text_format_trains_on_the_whole_text(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "Plain text to learn."}])
    got = encode(tokenizer, get_template("text"), read_examples(path, "text").conversations[0])
    expected = tokenizer("Plain text to learn.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert got["input_ids"] == expected and got["labels"] == expected


@pytest.mark.parametrize("policy", ["truncate", "drop", "error"])
def test_overlong_policy_from_the_recipe(tokenizer, tmp_path, policy):
    from finetune.data import build_datasets
    from finetune.recipe import DataSpec

    long = {"instruction": "Repeat.", "input": "", "output": "word " * 200}
    short = {"instruction": "Say hi.", "input": "", "output": "hi"}
    path = write_jsonl(tmp_path / "d.jsonl", [short, long, short])
    spec = DataSpec(train=str(path), template="chatml", overlong=policy)
    if policy == "error":
        with pytest.raises(DataError, match=r"d.jsonl: 1 examples exceed model.max_length=64 \(lines 2\)"):
            build_datasets(spec, tokenizer, get_template("chatml"), 64)
        return
    data = build_datasets(spec, tokenizer, get_template("chatml"), 64)
    if policy == "truncate":
        assert len(data.train) == 3 and sum(data.train["truncated"]) == 1
    else:
        assert len(data.train) == 2 and data.skipped == {"longer than max_length=64 (data.overlong=drop)": 1}


def test_recipe_sources_are_mixed_with_a_source_field(tokenizer, tmp_path):
    from finetune.data import build_datasets
    from finetune.recipe import DataSpec

    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"A{i}", "input": "", "output": "x"} for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"conversation": [{"human": f"B{i}", "assistant": "y"}]} for i in range(10)])
    spec = DataSpec(sources=(f"{a}:alpaca:6", f"{b}:firefly:4"), template="chatml")
    data = build_datasets(spec, tokenizer, get_template("chatml"), 64)
    prompts = [m[0]["content"] for m in data.train["messages"]]
    assert len(prompts) == 10 and sum(p.startswith("A") for p in prompts) == 6
    again = build_datasets(spec, tokenizer, get_template("chatml"), 64)  # same seed, same mix, from the cache
    assert again.cache_hit and [m[0]["content"] for m in again.train["messages"]] == prompts
