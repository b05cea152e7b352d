"""Streaming tokenization on several processes, and the cache: same rows for any num_proc, keyed on content."""
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_jsonl

from finetune.data import DataError, build_datasets, pipeline
from finetune.recipe import DataSpec
from finetune.templates import get_template
from finetune.training.collators import PaddingCollator, PaddingFreeCollator

RECORDS = [{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(i % 7 + 1)))}
           for i in range(60)] + [{"instruction": "Nothing.", "output": ""}]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch, tmp_path):
    """Chunks of 10 records, so 61 records exercise the worker pool in a second."""
    monkeypatch.setattr(pipeline, "CHUNK_ROWS", 10)
    monkeypatch.setattr(pipeline, "SMALL_CHUNKS", 2)
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))


def build(tokenizer, path, **options):
    spec = DataSpec(train=str(path), template="chatml", **options)
    return build_datasets(spec, tokenizer, get_template("chatml"), 64)


def test_num_proc_gives_identical_rows_and_shares_the_cache(tokenizer, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    one = build(tokenizer, path, num_proc=1)
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "other-cache"))
    two = build(tokenizer, path, num_proc=2)
    assert not one.cache_hit and not two.cache_hit
    assert two.train.with_format("arrow")[:].equals(one.train.with_format("arrow")[:])
    assert one.skipped == two.skipped == {"empty answer": 1} and len(one.train) == 60
    again = build(tokenizer, path, num_proc=1)  # the key does not depend on num_proc
    assert again.cache_hit and again.skipped == {"empty answer": 1}


def test_cache_file_joins_chunks_into_few_batches_the_same_for_any_num_proc(tokenizer, tmp_path, monkeypatch):
    """Opening the cache touches every batch header (64 KB of RSS each): chunks are joined by size, so a
    larger set does not mean more resident memory, and the joins fall in the same places for any num_proc."""
    monkeypatch.setattr(pipeline, "BATCH_BYTES", 5000)  # chunks of 10 records are 2.6-2.9 KB: two per batch
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    files = []
    for num_proc in (1, 2):
        monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / f"cache{num_proc}"))
        build(tokenizer, path, num_proc=num_proc)
        files += list((tmp_path / f"cache{num_proc}" / "data").glob("*.arrow"))
    batches = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_batches() for f in files]
    assert [b.num_rows for b in batches[0]] == [20, 20, 20] and all(b.nbytes >= 5000 for b in batches[0][:-1])
    assert files[0].read_bytes() == files[1].read_bytes()


def test_parquet_on_two_processes(tokenizer, tmp_path):
    pq.write_table(pa.Table.from_pylist(RECORDS[:60]), tmp_path / "d.parquet", row_group_size=25)
    data = build(tokenizer, tmp_path / "d.parquet", num_proc=2)
    reference = build(tokenizer, write_jsonl(tmp_path / "d.jsonl", RECORDS[:60]), num_proc=1)
    assert data.train["input_ids"] == reference.train["input_ids"] and data.train["line"] == list(range(60))


def test_first_bad_record_in_file_order_whichever_worker_met_it(tokenizer, tmp_path):
    lines = [f'{{"instruction": "I{i}", "output": "O"}}' for i in range(60)]
    lines[44] = '{"instruction": "I", "output": 3}'
    lines[24] = '{"instruction": "I", "output": '
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:25: invalid JSON"):
        build(tokenizer, tmp_path / "d.jsonl", num_proc=2)


def test_changed_content_of_the_same_size_and_time_is_a_cache_miss(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Say A.", "output": "A"}])
    stat = path.stat()
    first = build(tokenizer, path)
    write_jsonl(path, [{"instruction": "Say B.", "output": "B"}])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = build(tokenizer, path)
    assert not second.cache_hit and second.train[0]["messages"][0]["content"] == "Say B."
    assert first.train[0]["messages"][0]["content"] == "Say A."


def test_cache_hit_does_not_read_the_records_again(tokenizer, tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    cold = build(tokenizer, path)

    def fail(*args, **kwargs):
        raise AssertionError("a cache hit tokenized again")

    monkeypatch.setattr("finetune.data.dataset.write_tokenized", fail)
    monkeypatch.setattr("finetune.data.sources.parse_line", fail)
    warm = build(tokenizer, path)
    assert warm.cache_hit and warm.skipped == cold.skipped and warm.train["input_ids"] == cold.train["input_ids"]


def test_default_num_proc_uses_the_available_cores_capped():
    assert 1 <= pipeline.default_num_proc() <= min(len(os.sched_getaffinity(0)), pipeline.MAX_AUTO_PROC)


def test_more_workers_than_cores_are_capped_and_the_log_says_so(caplog):
    """#30: data.num_proc=999 forked 999 workers (6 GiB) without a word."""
    cores = len(os.sched_getaffinity(0))
    caplog.set_level("WARNING")
    assert pipeline.num_proc_for(999) == cores
    assert f"data.num_proc=999 is more than the {cores} cores" in caplog.text
    assert pipeline.num_proc_for(1) == 1 and pipeline.num_proc_for(0) == pipeline.default_num_proc()


def test_prompts_that_fill_max_length_are_counted_cold_and_warm(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS[:30] + [{"instruction": "word " * 100, "output": "O"}])
    cold, warm = build(tokenizer, path), build(tokenizer, path)
    reason = "no supervised token (prompt fills max_length)"
    assert cold.skipped[reason] == warm.skipped[reason] == 1 and len(cold.train) == len(warm.train) == 30
    assert warm.cache_hit and min(warm.train["num_supervised"]) > 0


def test_a_table_with_the_wrong_column_type_stops_the_build(tokenizer, tmp_path):
    pq.write_table(pa.Table.from_pylist([{"instruction": "I", "output": i} for i in range(30)]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet: column 'output' must hold strings, it holds int64"):
        build(tokenizer, tmp_path / "d.parquet", num_proc=2)


def test_token_ids_are_stored_as_int32_and_reach_the_model_as_int64(tokenizer, tmp_path):
    """int32 shrinks the cache (1M examples of bench_load: 2,896 -> 1,692 MB) and what the parent writes; the
    collators give the int64 tensors embeddings and the loss expect."""
    data = build(tokenizer, write_jsonl(tmp_path / "d.jsonl", RECORDS), num_proc=2)
    assert data.train.features["input_ids"].feature.dtype == "int32"
    assert data.train.features["labels"].feature.dtype == "int32"
    features = [data.train[i] for i in range(3)]
    for collator in (PaddingCollator(pad_token_id=0), PaddingFreeCollator()):
        batch = collator(features)
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
