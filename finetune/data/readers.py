"""Readers: each supported record layout becomes one conversation, ``[{"role", "content"[, "input"]}, ...]``.

Every error names the file, the line (record number for a JSON array, row index for a table) and the field, and
says what to do. Records that are well formed but cannot train (an empty answer) are skipped and counted by
reason, never dropped silently.

This module reads JSON and JSONL (also ``.gz``/``.zst``) record by record; :mod:`finetune.data.sources` adds
Parquet, CSV, ``save_to_disk`` folders and Hub datasets and cuts every source into bounded chunks.
"""
from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping

__all__ = ["DataError", "ReadResult", "RecordConverter", "read_examples", "iter_records"]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}
BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """A data file is malformed; the message names file, line and field."""


@dataclass
class ReadResult:
    """Conversations read from one file, with what was skipped and why."""

    path: str
    conversations: list[list[dict]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def open_binary(path: str | Path) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed by suffix (``.gz``, ``.zst``).

    Raises:
        DataError: when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the recipe's data.train / data.eval path.")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def json_chunks(path: str | Path, size: int) -> Iterator[tuple[str, list[int], list]]:
    """Cut a JSONL file into ``("line", line numbers, raw lines)`` of ``size`` non-blank lines, or a JSON array
    file into ``("record", indices, parsed records)``; parsing lines is left to :func:`parse_line`.

    Lines end at ``\\n`` only (``str.splitlines`` would also cut at U+2028, U+0085, ... inside a JSON string).
    A JSON array is parsed whole (it has no record boundaries to stream on): large sets belong in JSONL.
    """
    with open_binary(path) as handle:
        numbers: list[int] = []
        raws: list[bytes] = []
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                raw = raw.removeprefix(BOM)
                if raw.lstrip().startswith(b"["):
                    yield from _array_chunks(path, raw + handle.read(), size)
                    return
            if not raw.strip():
                continue
            numbers.append(number)
            raws.append(raw)
            if len(raws) == size:
                yield "line", numbers, raws
                numbers, raws = [], []
        if raws:
            yield "line", numbers, raws


def _array_chunks(path, data: bytes, size: int) -> Iterator[tuple[str, list[int], list]]:
    try:
        records = json.loads(_decode(path, data, 0), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the file or convert it to JSONL.") \
            from None
    except (RecursionError, _DuplicateKey) as err:
        raise DataError(f"{path}: {_parse_problem(err)}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of objects or one JSON object per line.")
    check_surrogates = b"\\ud" in data.lower()
    for start in range(0, len(records), size):
        part = records[start:start + size]
        if check_surrogates:
            for index, record in enumerate(part, start):
                _check_unicode(f"{path} record {index}", record)
        yield "record", list(range(start, start + len(part))), part


def parse_line(path: str | Path, number: int, raw: bytes) -> dict:
    """One JSONL line as a JSON object.

    Raises:
        DataError: naming ``path:number`` for bytes that are not UTF-8, invalid JSON, nesting too deep to parse,
            a key that appears twice in one object, a lone UTF-16 surrogate, or a value that is not an object.
    """
    where = f"{path}:{number}"
    text = _decode(path, raw, number - 1)
    try:
        record = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON at column {err.colno} ({err.msg}); each line of a JSONL file must "
                        "be one JSON object.") from None
    except (RecursionError, _DuplicateKey) as err:
        raise DataError(f"{where}: {_parse_problem(err)}") from None
    if "\\ud" in text or "\\uD" in text:  # only a \u escape can make a lone surrogate; valid UTF-8 cannot
        _check_unicode(where, record)
    return _check_object(where, record)


def iter_records(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(where, number, record)`` from a JSONL file (number = line) or a JSON array file (number = index).

    Raises:
        DataError: for a missing or empty file, bytes that are not UTF-8, or a line that is not a JSON object.
    """
    empty = True
    for kind, numbers, items in json_chunks(path, 1024):
        for number, item in zip(numbers, items):
            empty = False
            if kind == "line":
                yield f"{path}:{number}", number, parse_line(path, number, item)
            else:
                yield f"{path} record {number}", number, _check_object(f"{path} record {number}", item)
    if empty:
        raise DataError(f"{path}: the data file is empty.")


def read_examples(path: str | Path, fmt: str, *, prompt_column: str = "content",
                  response_column: str = "summary", text_column: str = "text",
                  system: str | None = None, columns: Mapping[str, str] | None = None,
                  split: str = "train", subset: str | None = None, revision: str | None = None) -> ReadResult:
    """Read one source in format ``fmt`` into a list of conversations (for small sets: evaluation, tools).

    Args:
        path: a JSON/JSONL(.gz/.zst), Parquet or CSV file, a ``save_to_disk`` folder or ``hub:NAME[:SPLIT]``.
        fmt: ``alpaca``, ``adgen``, ``sharegpt``, ``firefly``, ``messages``, ``text`` or ``prompt_completion``.
        prompt_column, response_column: field names for ``adgen``.
        text_column: field name for ``text`` (the whole text is one supervised answer, with no prompt).
        system: system prompt for records that carry none (``None`` leaves it to the template).
        columns: ``{field of the format: field in the data}``, as LLaMA-Factory's ``dataset_info`` columns.
        split, subset, revision: for ``hub:`` datasets.
    """
    from .sources import open_source  # sources builds on this module

    converter = RecordConverter(fmt, prompt_column, response_column, text_column, system, dict(columns or {}))
    source = open_source(str(path), split=split, subset=subset, revision=revision)
    result = ReadResult(str(path))
    for chunk in source.chunks(1024):
        converter.check_schema(source.name, chunk.schema)
        for number, messages in converter.convert_chunk(source.name, chunk, result.skipped):
            result.conversations.append(messages)
            result.lines.append(number)
    return result


class RecordConverter:
    """Turns records of one format (with the recipe's column names and system prompt) into conversations."""

    def __init__(self, fmt: str, prompt_column: str = "content", response_column: str = "summary",
                 text_column: str = "text", system: str | None = None, columns: Mapping[str, str] | None = None):
        self.fmt, self.system, self.columns = fmt, system, dict(columns or {})
        self.text_fields, self.other_fields = {
            "alpaca": (("instruction", "output"), ("input", "system", "history")),
            "adgen": ((prompt_column, response_column), ()),
            "sharegpt": ((), ("conversations", "system")),
            "firefly": ((), ("conversation", "system")),
            "messages": ((), ("messages",)),
            "text": ((text_column,), ()),
            "prompt_completion": ((), ("prompt", "completion")),
        }[fmt]
        self.required = {"sharegpt": ("conversations",), "firefly": ("conversation",), "messages": ("messages",),
                         "prompt_completion": ("prompt", "completion")}.get(fmt, self.text_fields)
        known = self.text_fields + self.other_fields
        for name in self.columns:
            if name not in known:
                raise DataError(f"data.columns: {name!r} is not a field of data.format={fmt!r} (fields: "
                                f"{', '.join(known)}).")
        self.convert = {"alpaca": _alpaca, "sharegpt": _sharegpt, "firefly": _firefly, "messages": _messages,
                        "prompt_completion": _prompt_completion,
                        "adgen": lambda where, r: _adgen(where, r, prompt_column, response_column),
                        "text": lambda where, r: [{"role": "assistant", "content": _text(where, r, text_column)}],
                        }[fmt]

    def column(self, name: str) -> str:
        """The name a field of the format has in the data."""
        return self.columns.get(name, name)

    def check_schema(self, where: str, schema) -> None:
        """Tables are checked once for their columns (a missing one, text stored as numbers), not row by row."""
        if schema is None:
            return
        import pyarrow as pa

        for name in self.required:
            if self.column(name) not in schema.names:
                mapped = f" (data.columns maps {name!r} to it)" if name in self.columns else ""
                raise DataError(f"{where}: column {self.column(name)!r}{mapped} is missing (columns: "
                                f"{schema.names}); set data.columns or pick the data.format that matches.")
        for name in self.text_fields:
            column = self.column(name)
            if column in schema.names and not (pa.types.is_string(schema.field(column).type)
                                               or pa.types.is_large_string(schema.field(column).type)
                                               or pa.types.is_null(schema.field(column).type)):
                raise DataError(f"{where}: column {column!r} must hold strings, it holds "
                                f"{schema.field(column).type}; fix the data or map another column (data.columns).")

    def convert_chunk(self, name: str, chunk, skipped: Counter) -> Iterator[tuple[int, list[dict]]]:
        """``(number, conversation)`` for each usable record of a chunk; the others are counted in ``skipped``."""
        for where, number, record in chunk.records(name):
            messages = self.conversation(where, record)
            reason = skip_reason(messages)
            if reason:
                skipped[reason] += 1
            else:
                yield number, messages

    def conversation(self, where: str, record: dict) -> list[dict]:
        """One record as a conversation, with the recipe's system prompt where the record has none."""
        for name, column in self.columns.items():
            if column in record:
                record[name] = record.pop(column)
            elif name in self.required:
                raise DataError(f"{where}: field {column!r} (data.columns {name!r}) is missing (record has "
                                f"{sorted(record)}).")
        messages = self.convert(where, record)
        if self.system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system})
        return messages


def skip_reason(messages: list[dict]) -> str | None:
    """Why a conversation cannot train: an empty answer anywhere would teach a bare end token."""
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers or not all(a.strip() for a in answers):
        return "empty answer"
    return None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """JSON keeps the last of repeated keys silently; a repeated key is more often a broken export: refuse it."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


def _parse_problem(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "JSON nested too deeply to parse; a training record needs a few levels at most."
    return f"key {err.args[0]!r} appears twice in one object; remove the duplicate."


def _decode(path, data: bytes, newlines_before: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = newlines_before + data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not valid UTF-8 ({err.reason}); re-save the file as UTF-8.") \
            from None


def _check_unicode(where: str, record: Any) -> None:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start:err.end].encode("unicode_escape").decode()
        raise DataError(f"{where}: text holds a lone UTF-16 surrogate ({bad}), which is not a character; fix the "
                        "text (often an emoji cut in half).") from None


def _check_object(where: str, record: Any) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    return record


def _text(where: str, record: dict, key: str, required: bool = True) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DataError(f"{where}: field {key!r} is missing (record has {sorted(record)}); add it or pick the "
                            "data.format that matches the file.")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}.")
    return value


def _alpaca(where: str, record: dict) -> list[dict]:
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(where, record, "system")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{where}: field 'history' must be a list of [prompt, answer] pairs, got "
                        f"{type(history).__name__}.")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise DataError(f"{where}: field 'history'[{i}] must be a [prompt, answer] pair of strings.")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = {"role": "user", "content": _text(where, record, "instruction")}
    if _text(where, record, "input", required=False):
        user["input"] = record["input"]
    return messages + [user, {"role": "assistant", "content": _text(where, record, "output")}]


def _adgen(where: str, record: dict, prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": _text(where, record, prompt)},
            {"role": "assistant", "content": _text(where, record, response)}]


def _turns(where: str, record: dict, key: str) -> list:
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns.")
    return turns


def _sharegpt(where: str, record: dict) -> list[dict]:
    messages = [{"role": "system", "content": _text(where, record, "system")}] if record.get("system") else []
    for i, turn in enumerate(_turns(where, record, "conversations")):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field 'conversations'[{i}] must be an object with 'from' and 'value'.")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise DataError(f"{where}: field 'conversations'[{i}].from={turn.get('from')!r} is not one of "
                            f"{sorted(SHAREGPT_ROLES)}.")
        messages.append({"role": role, "content": _text(f"{where} conversations[{i}]", turn, "value")})
    return _check_alternation(where, "conversations", messages)


def _firefly(where: str, record: dict) -> list[dict]:
    messages = [{"role": "system", "content": _text(where, record, "system")}] if record.get("system") else []
    for i, turn in enumerate(_turns(where, record, "conversation")):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: field 'conversation'[{i}] must be an object with 'human' and 'assistant'.")
        messages += [{"role": "user", "content": _text(f"{where} conversation[{i}]", turn, "human")},
                     {"role": "assistant", "content": _text(f"{where} conversation[{i}]", turn, "assistant")}]
    return messages


def _messages(where: str, record: dict, key: str = "messages") -> list[dict]:
    messages = []
    for i, turn in enumerate(_turns(where, record, key)):
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: field {key!r}[{i}].role must be system, user or assistant.")
        message = {"role": turn["role"], "content": _text(f"{where} {key}[{i}]", turn, "content")}
        if turn.get("input"):  # an Alpaca input kept as its own field (finetune.data convert/mix write it)
            message["input"] = _text(f"{where} {key}[{i}]", turn, "input")
        messages.append(message)
    return messages if key != "messages" else _check_alternation(where, key, messages)


def _prompt_completion(where: str, record: dict) -> list[dict]:
    """TRL's prompt-completion layouts: two strings, or a prompt and a completion that are message lists.

    Only the completion trains in TRL; an assistant turn inside the prompt would train here (every answer of a
    conversation does), so it is refused rather than trained differently.
    """
    if isinstance(record.get("prompt"), list) or isinstance(record.get("completion"), list):
        prompt, completion = _messages(where, record, "prompt"), _messages(where, record, "completion")
        if any(m["role"] == "assistant" for m in prompt):
            raise DataError(f"{where}: field 'prompt' holds an assistant turn, which would train here; use "
                            "data.format=messages for multi-turn data.")
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise DataError(f"{where}: field 'completion' must be one assistant message.")
        return _check_alternation(where, "prompt", prompt + completion)
    return [{"role": "user", "content": _text(where, record, "prompt")},
            {"role": "assistant", "content": _text(where, record, "completion")}]


def _check_alternation(where: str, key: str, messages: list[dict]) -> list[dict]:
    """Turns must alternate user/assistant after an optional system message, or masks would be wrong."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(f"{where}: field {key!r} turn {i} is {message['role']!r} where {expected!r} was expected; "
                            "turns must alternate user/assistant.")
    return messages
