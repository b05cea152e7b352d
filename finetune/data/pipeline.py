"""Records to tokenized Arrow in bounded memory, on several cores.

The parent process cuts the source into chunks (:mod:`finetune.data.sources`) and writes finished Arrow record
batches to the cache file in source order; workers parse, validate, convert and tokenize one chunk at a time. At
most ``2 x num_proc`` chunks are in flight, so memory does not grow with the data. ``datasets.map(num_proc=...)``
would need the whole set as an Arrow dataset first (a full extra copy) and memory-maps it, so its resident size
grows with the data; hence this small pool. The result is the same batches in the same order for any
``num_proc`` (chunks are cut the same way and processed by the same function).
"""
from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .converter import RecordConverter
from .sources import Chunk, Source
from .tokenize import Encoder

__all__ = ["CHUNK_ROWS", "SCHEMA", "default_num_proc", "num_proc_for", "write_tokenized"]

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1000
"""Records per chunk: large enough that a chunk's pickling is noise next to its tokenization (~0.2 s)."""
SMALL_CHUNKS = 2
"""Sources of at most this many chunks are tokenized in-process: starting and stopping two workers took
0.06-0.08 s here, about a third of one chunk's tokenizing, so only the smallest sets are better off without."""
MAX_AUTO_PROC = 8
BATCH_BYTES = 32 << 20
"""Chunks are joined into record batches of about this size in the cache file. Opening the file (``datasets``
memory-maps it and reads it as an Arrow stream) touches every batch's header, and each touch maps 64 KB of the
file into the process: 1,000-row batches made the peak RSS grow by 64 MB per million examples."""

_MESSAGE = pa.struct([(name, pa.string()) for name in (
    "role", "content", "input", "reasoning_content", "tool_calls", "name", "tool_call_id")])
_IDS = pa.list_(pa.int32())
SCHEMA = pa.schema([
    ("messages", pa.list_(_MESSAGE)), ("tools", pa.string()), ("line", pa.int64()), ("input_ids", _IDS),
    ("labels", _IDS),
    ("num_tokens", pa.int64()), ("num_supervised", pa.int64()), ("truncated", pa.bool_()),
    ("dropped_turns", pa.int64()), ("eos_labelled", pa.bool_()),
])
"""Fixed up front, so every batch has the same type whichever optional fields (``input``) its records use."""


def default_num_proc() -> int:
    """The cores this process may use, at most ``MAX_AUTO_PROC``."""
    return max(1, min(_cores(), MAX_AUTO_PROC))


def num_proc_for(requested: int) -> int:
    """``data.num_proc``: 0 is :func:`default_num_proc`; more workers than cores only compete for them (999 forked
    999 workers and took 6 GiB here), so a request above the cores is capped, and the log says so."""
    if not requested:
        return default_num_proc()
    cores = _cores()
    if requested > cores:
        logger.warning("data.num_proc=%d is more than the %d cores this process may use: using %d.", requested,
                       cores, cores)
        return cores
    return requested


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ChunkEncoder:
    """What a worker needs: records to conversations (:class:`RecordConverter`) to token ids (:class:`Encoder`)."""

    def __init__(self, name: str, converter: RecordConverter, encoder: Encoder):
        self.name, self.converter, self.encoder = name, converter, encoder

    def __call__(self, chunk: Chunk) -> tuple[pa.RecordBatch, Counter]:
        skipped: Counter = Counter()
        numbers, conversations, tools = [], [], []
        for number, messages, schemas in self.converter.convert_chunk(self.name, chunk, skipped):
            numbers.append(number)
            conversations.append(messages)
            tools.append(schemas)
        columns = self.encoder.arrays(conversations, tools)
        columns["messages"] = pa.array(conversations, type=SCHEMA.field("messages").type)
        columns["tools"] = pa.array(tools, pa.string())
        columns["line"] = pa.array(numbers, pa.int64())
        arrays = [columns[f.name] for f in SCHEMA]
        return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA), skipped


def write_tokenized(source: Source, encode: ChunkEncoder, out: Path, num_proc: int) -> tuple[int, int, Counter]:
    """Tokenize ``source`` into the Arrow stream file ``out`` (written beside it, then renamed into place).

    Returns:
        The number of rows written, how many of them have no supervised token (counted here, so nobody
        reads that column back through the memory map), and the skipped records counted by reason.

    Raises:
        DataError: the first bad record in source order, whichever worker met it.
    """
    chunks = source.chunks(CHUNK_ROWS)
    head = [chunk for _, chunk in zip(range(SMALL_CHUNKS + 1), chunks)]
    if len(head) <= SMALL_CHUNKS:
        num_proc = 1
    staging = out.with_name(out.name + f".{os.getpid()}.tmp")
    rows, unsupervised, skipped = 0, 0, Counter()
    try:
        with pa.OSFile(str(staging), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer:
            for batch in _joined(_ordered_map(encode, _chain(head, chunks), num_proc), skipped):
                writer.write_batch(batch)
                rows += batch.num_rows
                unsupervised += pc.sum(pc.equal(batch["num_supervised"], 0)).as_py() or 0
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return rows, unsupervised, skipped


def _joined(results: Iterator[tuple[pa.RecordBatch, Counter]], skipped: Counter) -> Iterator[pa.RecordBatch]:
    """Chunks' batches joined into batches of at least ``BATCH_BYTES`` (the last may be smaller); the skip counts
    are added to ``skipped``. Joined by size, in order, so any ``num_proc`` gives the same batches."""
    pending: list[pa.RecordBatch] = []
    size = 0
    for batch, counts in results:
        skipped.update(counts)
        if not batch.num_rows:  # every record of the chunk skipped
            continue
        pending.append(batch)
        size += batch.nbytes
        if size >= BATCH_BYTES:
            yield _concat(pending)
            pending, size = [], 0
    if pending:
        yield _concat(pending)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches, SCHEMA).combine_chunks().to_batches()[0]


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


_WORKER_FN: Any = None


def _set_worker_fn(fn) -> None:
    global _WORKER_FN
    _WORKER_FN = fn
    # The forked worker's collections need not traverse the parent's objects (torch, the tokenizer): that costs
    # time on every full collection and copies the pages the objects live on.
    gc.freeze()


def _run_in_worker(chunk):
    return _WORKER_FN(chunk)


def _ordered_map(fn, items: Iterator, num_proc: int) -> Iterator:
    """``map(fn, items)`` on ``num_proc`` processes, in order, with a bounded number of items in flight."""
    if num_proc <= 1:
        yield from map(fn, items)
        return
    with _single_threaded_tokenizers(), _pool(num_proc, fn) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_run_in_worker, item))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextmanager
def _pool(num_proc: int, fn):
    """Workers that hold ``fn``; a worker that dies (out of memory) raises BrokenProcessPool rather than hanging."""
    # fork shares the tokenizer with the workers without pickling it; elsewhere it is pickled (fast tokenizers can)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method),
                               initializer=_set_worker_fn, initargs=(fn,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _single_threaded_tokenizers():
    """One process per core: the workers' Rust tokenizers should not each start a thread per core too (and, set
    before the fork, this silences the tokenizers fork warning). The parent's own setting is restored."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
