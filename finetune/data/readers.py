"""Readers: each supported record layout becomes one conversation, ``[{"role", "content"[, "input"]}, ...]``.

Every error names the file, the line (record number for a JSON array, row index for a table) and the field, and
says what to do. Records that are well formed but cannot train (an empty answer) are skipped and counted by
reason, never dropped silently.

Where records come from is :mod:`finetune.data.sources` (JSON/JSONL via :mod:`finetune.data.jsonfile`, Parquet,
CSV, ``save_to_disk`` folders, the Hub); how a record becomes a conversation is :mod:`finetune.data.formats`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .converter import RecordConverter
from .errors import DataError
from .jsonfile import iter_records
from .sources import open_source

__all__ = ["DataError", "ReadResult", "RecordConverter", "read_examples", "iter_records"]


@dataclass
class ReadResult:
    """Conversations read from one file, with what was skipped and why."""

    path: str
    conversations: list[list[dict]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    tools: list[str | None] = field(default_factory=list)
    """Each conversation's tool schemas as JSON text, or None."""
    skipped: Counter = field(default_factory=Counter)


def read_examples(path: str | Path, fmt: str, *, prompt_column: str = "content",
                  response_column: str = "summary", text_column: str = "text",
                  system: str | None = None, columns: Mapping[str, str] | None = None,
                  split: str = "train", subset: str | None = None, revision: str | None = None,
                  tools: str | None = None, limit: int | None = None) -> ReadResult:
    """Read one source in format ``fmt`` into a list of conversations (for small sets: evaluation, tools).

    Args:
        path: a JSON/JSONL(.gz/.zst), Parquet or CSV file, a ``save_to_disk`` folder or ``hub:NAME[:SPLIT]``.
        fmt: ``alpaca``, ``adgen``, ``sharegpt``, ``firefly``, ``messages``, ``text`` or ``prompt_completion``.
        prompt_column, response_column: field names for ``adgen``.
        text_column: field name for ``text`` (the whole text is one supervised answer, with no prompt).
        system: system prompt for records that carry none (``None`` leaves it to the template).
        columns: ``{field of the format: field in the data}``, as LLaMA-Factory's ``dataset_info`` columns.
        split, subset, revision: for ``hub:`` datasets.
        tools: tool schemas (JSON text) for records without their own (``data.tools``).
        limit: stop after this many usable examples.
    """
    converter = RecordConverter(fmt, prompt_column, response_column, text_column, system, dict(columns or {}), tools)
    source = open_source(str(path), split=split, subset=subset, revision=revision)
    result = ReadResult(str(path))
    for chunk in source.chunks(1024):
        for number, messages, schemas in converter.convert_chunk(source.name, chunk, result.skipped):
            result.conversations.append(messages)
            result.lines.append(number)
            result.tools.append(schemas)
            if limit is not None and len(result.conversations) >= limit:
                return result
    return result
