"""Every place data can live (JSON/JSONL, .gz/.zst, Parquet, CSV, save_to_disk folders, Hub ids from the local
cache), column mapping, TRL's prompt-completion layouts, and the errors each gives on bad input."""
import gzip
import json
import re

import datasets
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from helpers import write_jsonl

from finetune.data import DataError, Encoder, build_datasets, read_examples
from finetune.data.readers import iter_records
from finetune.recipe import DataSpec, RecipeError
from finetune.templates import get_template

RECORDS = [{"instruction": f"Say {i}", "input": "in" if i % 2 else "", "output": f"{i}!"} for i in range(6)]


def pairs(conversations):
    return [[(m["role"], m["content"], m.get("input")) for m in c] for c in conversations]


@pytest.fixture()
def expected(tmp_path):
    return pairs(read_examples(write_jsonl(tmp_path / "ref.jsonl", RECORDS), "alpaca").conversations)


def test_compressed_json_files(tmp_path, expected):
    import zstandard

    body = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(body))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(body))
    (tmp_path / "d.json.gz").write_bytes(gzip.compress(json.dumps(RECORDS).encode()))
    for name in ("d.jsonl.gz", "d.jsonl.zst", "d.json.gz"):
        assert pairs(read_examples(tmp_path / name, "alpaca").conversations) == expected, name


def test_a_cut_short_gzip_file_is_named_with_the_last_line_read(tmp_path):
    """#30: a truncated .jsonl.gz ended in gzip's bare EOFError, naming no file."""
    body = "".join(json.dumps({"instruction": f"q{i}", "output": "a" * 40}) + "\n" for i in range(3000)).encode()
    packed = gzip.compress(body)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[:len(packed) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz: the compressed file is cut short or damaged after line \d+ "
                                        r"\(EOFError.*copy it again"):
        read_examples(tmp_path / "cut.jsonl.gz", "alpaca")


@pytest.mark.parametrize("line", ['{"instruction": "What is it", "output": "Paris',
                                  '{"instruction": "What is it", "output": "Paris" , }',
                                  '{"instruction": "What is it", "output": Paris}'])
def test_a_malformed_line_is_placed_where_pythons_parser_places_it(line, tmp_path):
    """#30: the column of a string left open pointed at the line's end (the newline read as a control character)."""
    with pytest.raises(json.JSONDecodeError) as python:
        json.loads(line)
    (tmp_path / "bad.jsonl").write_text('{"instruction": "q", "output": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad.jsonl:2: invalid JSON at column {python.value.colno} "
                                        rf"\({re.escape(python.value.msg)}\)"):
        read_examples(tmp_path / "bad.jsonl", "alpaca")
    (tmp_path / "bad.json").write_text('[{"instruction": "q", "output": "a"},\n' + line + "]", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json:2: invalid JSON at column \d+"):
        read_examples(tmp_path / "bad.json", "alpaca")


def test_a_line_larger_than_any_record_may_be_is_refused_with_its_line(tmp_path, monkeypatch):
    """#30: one 50 MB line took 10.7 GiB of memory in a --dry-run."""
    from finetune.data import jsonfile

    monkeypatch.setattr(jsonfile, "MAX_LINE_BYTES", 1 << 20)  # the same rule at a size a test can write quickly
    write_jsonl(tmp_path / "big.jsonl", [{"instruction": "q", "output": "a"},
                                         {"instruction": "q", "output": "x" * (2 << 20)}])
    with pytest.raises(DataError, match=r"big.jsonl:2: the line is 2 MB, more than the 1 MB a record may take"):
        read_examples(tmp_path / "big.jsonl", "alpaca")


def test_parquet_csv_and_save_to_disk_folders(tmp_path, expected):
    table = pa.Table.from_pylist(RECORDS)
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=4)
    pacsv.write_csv(table, tmp_path / "d.csv")
    pacsv.write_csv(table, tmp_path / "d.tsv", pacsv.WriteOptions(delimiter="\t"))
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(RECORDS[:2])}).save_to_disk(str(tmp_path / "dict"))
    for name in ("d.parquet", "d.csv", "d.tsv", "folder"):
        result = read_examples(tmp_path / name, "alpaca")
        assert pairs(result.conversations) == expected and result.lines == list(range(6)), name
    assert pairs(read_examples(tmp_path / "dict", "alpaca", split="dev").conversations) == expected[:2]
    with pytest.raises(DataError, match=r"dict: no split 'train' \(splits: \['dev'\]\)"):
        read_examples(tmp_path / "dict", "alpaca")


def test_csv_keeps_numeric_looking_answers_as_text(tmp_path):
    (tmp_path / "d.csv").write_text('instruction,output\n"Two plus two, as a number?",4\n', encoding="utf-8")
    conversation = read_examples(tmp_path / "d.csv", "alpaca").conversations[0]
    assert [m["content"] for m in conversation] == ["Two plus two, as a number?", "4"]
    (tmp_path / "bad.csv").write_text("instruction,answer\nQ,A\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: column .output. is missing \(columns: \[.instruction.,"):
        read_examples(tmp_path / "bad.csv", "alpaca")


def test_column_mapping_for_any_format(tmp_path):
    rows = [{"question": "Q", "answer": "A", "id": 1}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    mapping = {"instruction": "question", "output": "answer"}
    for path in (tmp_path / "d.parquet", write_jsonl(tmp_path / "d.jsonl", rows)):
        conversation = read_examples(path, "alpaca", columns=mapping).conversations[0]
        assert [(m["role"], m["content"]) for m in conversation] == [("user", "Q"), ("assistant", "A")]
    with pytest.raises(DataError, match=r"column 'output' is missing \(columns: \['question', 'answer', 'id'\]\)"):
        read_examples(tmp_path / "d.parquet", "alpaca", columns={"instruction": "question"})
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'answer' \(data.columns 'output'\) is missing"):
        read_examples(write_jsonl(tmp_path / "d.jsonl", [{"question": "Q"}]), "alpaca", columns=mapping)
    with pytest.raises(DataError, match=r"data.columns: 'prompt' is not a field of data.format='alpaca'"):
        read_examples(tmp_path / "d.parquet", "alpaca", columns={"prompt": "question"})


def test_columns_override_from_the_command_line():
    from finetune.overrides import apply_overrides
    from finetune.recipe import Recipe

    recipe = apply_overrides(Recipe(name="t", data=DataSpec(train="x.jsonl")), ["data.columns=instruction=q,output=a"])
    assert recipe.data.columns == {"instruction": "q", "output": "a"}
    recipe = apply_overrides(recipe, ['data.columns={"output": "answer"}'])
    assert recipe.data.columns == {"output": "answer"}
    with pytest.raises(RecipeError, match="expected field=column pairs"):
        apply_overrides(recipe, ["data.columns=instruction"])


def test_prompt_completion_plain_and_conversational(tokenizer, tmp_path):
    plain = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The sky is", "completion": " blue."}])
    conversation = read_examples(plain, "prompt_completion").conversations[0]
    got = Encoder(tokenizer, get_template("text"), 64)({"messages": [conversation]})
    prompt = tokenizer("The sky is", add_special_tokens=False).input_ids
    answer = tokenizer(" blue.", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    # TRL's prompt-completion rule: prompt + completion, only the completion (and EOS) trained
    assert got["input_ids"][0] == prompt + answer and got["labels"][0] == [-100] * len(prompt) + answer
    chat = write_jsonl(tmp_path / "c.jsonl", [
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
         "completion": [{"role": "assistant", "content": "A"}]}])
    assert [(m["role"], m["content"]) for m in read_examples(chat, "prompt_completion").conversations[0]] == \
        [("system", "S"), ("user", "Q"), ("assistant", "A")]
    multi_turn = write_jsonl(tmp_path / "m.jsonl", [
        {"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "Q2"}], "completion": [{"role": "assistant", "content": "A2"}]}])
    with pytest.raises(DataError, match=r"m.jsonl:1: field 'prompt' holds an assistant turn"):
        read_examples(multi_turn, "prompt_completion")


@pytest.mark.parametrize("rows,fmt,message", [
    ([{"instruction": "I", "output": 3}], "alpaca", r"d.parquet: column 'output' must hold strings, it holds int64"),
    ([{"instruction": "I"}], "alpaca", r"d.parquet: column 'output' is missing \(columns: \['instruction'\]\)"),
    ([{"instruction": "I", "output": "O"}, {"instruction": "I", "output": None}], "alpaca",
     r"d.parquet row 1: field 'output' is missing"),
    ([{"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "A"}]}], "messages",
     r"d.parquet row 0: field 'messages'\[1\].role must be system, user, assistant or tool"),
])
def test_bad_tables_name_row_and_column(tmp_path, rows, fmt, message):
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=message):
        read_examples(tmp_path / "d.parquet", fmt)


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS * 50), tmp_path / "good.parquet", row_group_size=100)
    data = (tmp_path / "good.parquet").read_bytes()
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all" * 10)
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    offset = pq.ParquetFile(tmp_path / "good.parquet").metadata.row_group(1).column(0).data_page_offset
    damaged[offset:offset + 64] = bytes(64)  # the second row group's first page zeroed, the footer intact
    (tmp_path / "damaged.parquet").write_bytes(bytes(damaged))
    for name in ("garbage.parquet", "cut.parquet"):
        with pytest.raises(DataError, match=rf"{name}: not a readable Parquet file"):
            read_examples(tmp_path / name, "alpaca")
    with pytest.raises(DataError, match=r"damaged.parquet: unreadable after row \d+ .*corrupt or truncated"):
        read_examples(tmp_path / "damaged.parquet", "alpaca")


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """Empty local caches for ``datasets`` and ``huggingface_hub``, as on a machine that downloaded nothing."""
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_hub_id_from_datasets_cache(hub_cache, expected):
    """``load_dataset("org/name")`` run once online leaves a prepared copy; offline it is found by name."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    pq.write_table(pa.Table.from_pylist(RECORDS), hub_cache / "train.parquet")
    builder = Parquet(cache_dir=str(hub_cache / "datasets"), dataset_name="tiny_alpaca", hash="0123abcd",
                      data_files={"train": [str(hub_cache / "train.parquet")]})
    builder.download_and_prepare()
    # The layout a Hub download leaves: <namespace>___<name>/<config>/<version>/<commit>
    prepared = hub_cache / "datasets" / "test-org___tiny_alpaca"
    (hub_cache / "datasets" / "tiny_alpaca").rename(prepared)
    next(prepared.glob("default-*")).rename(prepared / "default")
    assert pairs(read_examples("hub:test-org/tiny_alpaca", "alpaca").conversations) == expected
    with pytest.raises(DataError, match=r"hub:test-org/tiny_alpaca: Unknown split \"test\""):
        read_examples("hub:test-org/tiny_alpaca:test", "alpaca")


def test_hub_id_from_hub_cache_with_subset_and_revision(hub_cache, expected):
    """``hf download --repo-type dataset org/name`` leaves a snapshot; subsets come from its README configs."""
    repo = hub_cache / "hub" / "datasets--test-org--two_langs"
    commit = "a" * 40
    snapshot = repo / "snapshots" / commit
    (snapshot / "en").mkdir(parents=True)
    (snapshot / "zh").mkdir()
    pq.write_table(pa.Table.from_pylist(RECORDS), snapshot / "en" / "train.parquet")
    pq.write_table(pa.Table.from_pylist([{"instruction": "问", "output": "答"}]), snapshot / "zh" / "train.parquet")
    (snapshot / "README.md").write_text("---\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    "
                                        "path: en/*.parquet\n- config_name: zh\n  data_files:\n  - split: train\n"
                                        "    path: zh/*.parquet\n---\n", encoding="utf-8")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert pairs(read_examples("hub:test-org/two_langs", "alpaca", subset="en").conversations) == expected
    zh = read_examples("hub:test-org/two_langs", "alpaca", subset="zh", revision=commit).conversations
    assert [m["content"] for m in zh[0]] == ["问", "答"]
    with pytest.raises(DataError, match="dataset not in the local cache"):
        read_examples("hub:test-org/two_langs", "alpaca", subset="en", revision="b" * 40)


def test_missing_hub_dataset_says_how_to_fetch_it(hub_cache):
    with pytest.raises(DataError) as err:
        read_examples("hub:tatsu-lab/alpaca", "alpaca", revision="v1")
    message = str(err.value)
    assert "\n" not in message and "dataset not in the local cache" in message
    assert "datasets.load_dataset('tatsu-lab/alpaca', split='train', revision='v1')" in message


def test_recipe_trains_from_a_hub_id(hub_cache, tokenizer, monkeypatch):
    from datasets.packaged_modules.parquet.parquet import Parquet

    monkeypatch.setenv("FINETUNE_CACHE", str(hub_cache / "ft"))
    pq.write_table(pa.Table.from_pylist(RECORDS), hub_cache / "train.parquet")
    Parquet(cache_dir=str(hub_cache / "datasets"), dataset_name="alpaca", hash="0123abcd",
            data_files={"train": [str(hub_cache / "train.parquet")]}).download_and_prepare()
    prepared = hub_cache / "datasets" / "org___alpaca"
    (hub_cache / "datasets" / "alpaca").rename(prepared)
    next(prepared.glob("default-*")).rename(prepared / "default")
    spec = DataSpec(train="hub:org/alpaca", eval="hub:org/alpaca:train", template="chatml")
    data = build_datasets(spec, tokenizer, get_template("chatml"), 64)
    assert len(data.train) == 6 and len(data.eval) == 6 and data.train["line"] == list(range(6))


def test_iter_records_reads_lines_split_on_newline_only(tmp_path):
    # U+2028/U+2029/U+0085 are legal inside a JSON string; str.splitlines() would cut the record there
    text = '{"instruction": "a\u2028b\u2029c\u0085d", "output": "O"}\r\n{"instruction": "I", "output": "O"}\n'
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    records = list(iter_records(tmp_path / "d.jsonl"))
    assert [n for _, n, _ in records] == [1, 2] and records[0][2]["instruction"] == "a\u2028b\u2029c\u0085d"
    (tmp_path / "a.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS).encode())
    assert len(read_examples(tmp_path / "a.json", "alpaca").conversations) == 6


@pytest.mark.parametrize("line,message", [
    ('{"instruction": ' + "[" * 10000 + "]" * 10000 + ', "output": "O"}', r"d.jsonl:2: JSON nested too deeply"),
    ('{"instruction": "I \\ud83d", "output": "O"}', r"d.jsonl:2: text holds a lone UTF-16 surrogate \(\\ud83d\)"),
    ('{"instruction": "I", "output": "O", "history": 5}', r"d.jsonl:2: field 'history' must be a list .* got int"),
    ('{"instruction": "I", "output": "O", "output": "P"}', r"d.jsonl:2: key 'output' appears twice"),
])
def test_more_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "d.jsonl").write_text('{"instruction": "I", "output": "O"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_examples(tmp_path / "d.jsonl", "alpaca")


def test_emoji_escaped_as_a_surrogate_pair_is_fine(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "\\ud83d\\ude00", "output": "O"}\n', encoding="utf-8")
    assert read_examples(tmp_path / "d.jsonl", "alpaca").conversations[0][0]["content"] == "\U0001F600"


def test_empty_answer_in_the_middle_of_a_dialogue_is_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"conversation": [{"human": "Q1", "assistant": ""}, {"human": "Q2", "assistant": "A2"}]},
        {"conversation": [{"human": "Q1", "assistant": "A1"}, {"human": "Q2", "assistant": "A2"}]}])
    result = read_examples(path, "firefly")
    assert result.lines == [2] and result.skipped == {"empty answer": 1}
