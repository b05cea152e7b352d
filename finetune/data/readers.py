"""Readers: each supported record layout becomes one conversation, ``[{"role", "content"[, "input"]}, ...]``.

Every error names the file, the line (or record number for a JSON array) and the field, and says what to do.
Records that are well formed but cannot train (an empty answer) are skipped and counted by reason, never
dropped silently.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

__all__ = ["DataError", "ReadResult", "read_examples", "iter_records"]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


class DataError(ValueError):
    """A data file is malformed; the message names file, line and field."""


@dataclass
class ReadResult:
    """Conversations read from one file, with what was skipped and why."""

    path: str
    conversations: list[list[dict]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def iter_records(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(where, number, record)`` from a JSONL file (number = line) or a JSON array file (number = index).

    Raises:
        DataError: for a missing or empty file, bytes that are not UTF-8, or a line that is not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the recipe's data.train / data.eval path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not valid UTF-8 ({err.reason}); re-save the file as UTF-8.") \
            from None
    if not text.strip():
        raise DataError(f"{path}: the data file is empty.")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg}); fix the file or convert it to JSONL.") \
                from None
        for index, record in enumerate(records):
            yield f"{path} record {index}", index, _check_object(f"{path} record {index}", record)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON at column {err.colno} ({err.msg}); each line of a JSONL "
                            "file must be one JSON object.") from None
        yield f"{path}:{number}", number, _check_object(f"{path}:{number}", record)


def read_examples(path: str | Path, fmt: str, *, prompt_column: str = "content",
                  response_column: str = "summary", text_column: str = "text",
                  system: str | None = None) -> ReadResult:
    """Read one file in format ``fmt`` into conversations.

    Args:
        path: JSON or JSONL file.
        fmt: ``alpaca``, ``adgen``, ``sharegpt``, ``firefly``, ``messages`` or ``text``.
        prompt_column, response_column: field names for ``adgen``.
        text_column: field name for ``text`` (the whole text is one supervised answer, with no prompt).
        system: system prompt for records that carry none (``None`` leaves it to the template).
    """
    convert = {"alpaca": _alpaca, "sharegpt": _sharegpt, "firefly": _firefly, "messages": _messages,
               "adgen": lambda where, r: _adgen(where, r, prompt_column, response_column),
               "text": lambda where, r: [{"role": "assistant", "content": _text(where, r, text_column)}]}[fmt]
    result = ReadResult(str(path))
    for where, number, record in iter_records(path):
        messages = convert(where, record)
        if system is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            result.skipped["empty answer"] += 1
            continue
        result.conversations.append(messages)
        result.lines.append(number)
    return result


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
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
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


def _messages(where: str, record: dict) -> list[dict]:
    messages = []
    for i, turn in enumerate(_turns(where, record, "messages")):
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: field 'messages'[{i}].role must be system, user or assistant.")
        message = {"role": turn["role"], "content": _text(f"{where} messages[{i}]", turn, "content")}
        if turn.get("input"):  # an Alpaca input kept as its own field (finetune.data convert/mix write it)
            message["input"] = _text(f"{where} messages[{i}]", turn, "input")
        messages.append(message)
    return _check_alternation(where, "messages", messages)


def _check_alternation(where: str, key: str, messages: list[dict]) -> list[dict]:
    """Turns must alternate user/assistant after an optional system message, or masks would be wrong."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(f"{where}: field {key!r} turn {i} is {message['role']!r} where {expected!r} was expected; "
                            "turns must alternate user/assistant.")
    return messages
