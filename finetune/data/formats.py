"""Record layouts: each ``data.format`` turns one record into a conversation, ``[{"role", "content"[, "input"]}]``.

Errors name the record (``where``) and the field; the recipe's column names (``data.columns``) are applied first.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping

from .errors import DataError

__all__ = ["RecordConverter", "SHAREGPT_ROLES", "skip_reason"]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


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
        self.check_schema(name, chunk.schema)
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
