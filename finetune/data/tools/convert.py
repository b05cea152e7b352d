"""Conversion between record formats, through the readers' conversation form.

Reading goes through :func:`finetune.data.readers.read_examples`, so a file that converts is a file that trains,
and writing is the inverse of each reader. Nothing is lost silently: a conversation a format cannot hold (a system
prompt in adgen, several turns in adgen, an Alpaca ``input`` in sharegpt) raises a :class:`ConversionError` naming
the record and what would be lost, unless ``lossy`` is set, in which case the losses are counted.

Alpaca's ``input`` stays its own field where a format has one: alpaca (last turn only) and messages (an ``input``
key on the user message). Top-level fields a format does not use (``source``, ``id``) are carried over.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..formats import get_format, writable_format_names
from ..readers import DataError, iter_records, read_examples

__all__ = ["ConversionError", "Example", "Loaded", "convert_file", "load", "to_record", "write_records"]


class ConversionError(DataError):
    """A conversation does not fit the target format without losing something."""


@dataclass
class Example:
    """One readable record: where it came from, the record as written, and its conversation."""

    where: str
    record: dict
    messages: list[dict]


@dataclass
class Loaded:
    """A file's readable examples, and the records the reader skipped (with its reasons counted)."""

    examples: list[Example] = field(default_factory=list)
    unreadable: list[tuple[str, dict]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def load(path: str | Path, fmt: str, **options) -> Loaded:
    """Read ``path`` in format ``fmt``, keeping each conversation next to its original record.

    ``options`` go to :func:`read_examples` (adgen/text column names).
    """
    result = read_examples(path, fmt, **options)
    records = {number: (where, record) for where, number, record in iter_records(path)}
    loaded = Loaded(skipped=result.skipped)
    for number, messages in zip(result.lines, result.conversations):
        where, record = records.pop(number)
        loaded.examples.append(Example(where, record, messages))
    loaded.unreadable = list(records.values())
    return loaded


def to_record(messages: list[dict], fmt: str, where: str = "", lossy: bool = False,
              lost: Counter | None = None) -> dict:
    """Write one conversation as a record of format ``fmt``.

    Args:
        messages: The conversation, as the readers produce it.
        fmt: Target format, one with a writer (``writable_format_names()``).
        where: The source record's location, for error messages.
        lossy: Drop (or merge) what ``fmt`` cannot hold instead of raising.
        lost: Counter of what was dropped, by kind; updated in place.

    Raises:
        ConversionError: when something would be lost and ``lossy`` is false.
    """
    if fmt not in writable_format_names():
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(writable_format_names())}")
    lost = Counter() if lost is None else lost

    def lose(what: str) -> None:
        if not lossy:
            raise ConversionError(f"{where}: {fmt} cannot hold {what}; it would be lost. Convert to messages, or "
                                  "pass --lossy to drop it (counted).")
        lost[what] += 1

    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not body or body[0]["role"] != "user":
        raise ConversionError(f"{where}: the conversation has no user prompt (text data?); only conversations "
                              "can be converted or mixed.")
    return get_format(fmt).write(messages, lose)


def carry_extras(record: dict, src: str, dst: str, out: dict) -> dict:
    """Copy top-level fields the source format does not use (``source``, ``id``...) unless the target uses them."""
    for key, value in record.items():
        if key not in get_format(src).writes and key not in get_format(dst).writes and key not in out:
            out[key] = value
    return out


def write_records(path: str | Path, records: list[dict]) -> None:
    """Write JSONL, or a JSON array when ``path`` ends in ``.json`` (the readers take both)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        if path.suffix == ".json":
            json.dump(records, out, ensure_ascii=False, indent=1)
            out.write("\n")
        else:
            out.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def convert_file(src_path: str | Path, dst_path: str | Path, src: str, dst: str, lossy: bool = False) -> Counter:
    """Convert a whole file; returns what was dropped (empty unless ``lossy``), with ``written`` and ``skipped``.

    Raises:
        ConversionError: on the first record that would lose something, when ``lossy`` is false.
    """
    if src not in writable_format_names() or dst not in writable_format_names():
        raise DataError(f"convert works between {', '.join(writable_format_names())}; got {src!r} -> {dst!r}")
    loaded = load(src_path, src)
    lost: Counter = Counter()
    records = [carry_extras(ex.record, src, dst, to_record(ex.messages, dst, ex.where, lossy, lost))
               for ex in loaded.examples]
    write_records(dst_path, records)
    return Counter(lost, written=len(records), skipped=len(loaded.unreadable))
