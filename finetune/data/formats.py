"""Record layouts: each ``data.format`` turns one record into a conversation, ``[{"role", "content"[, "input"]}]``.

Errors name the record (``where``) and the field; the recipe's column names (``data.columns``) are applied first.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterator, Mapping

from .errors import DataError

__all__ = ["RecordConverter", "SHAREGPT_ROLES", "skip_reason"]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


class RecordConverter:
    """Turns records of one format (with the recipe's column names and system prompt) into conversations."""

    def __init__(self, fmt: str, prompt_column: str = "content", response_column: str = "summary",
                 text_column: str = "text", system: str | None = None, columns: Mapping[str, str] | None = None,
                 tools: str | None = None):
        self.fmt, self.system, self.columns = fmt, system, dict(columns or {})
        self.tools = tools
        """Tool schemas (JSON text) for records without their own ``tools`` (``data.tools``)."""
        self.text_fields, self.other_fields = {
            "alpaca": (("instruction", "output"), ("input", "system", "history")),
            "adgen": ((prompt_column, response_column), ()),
            "sharegpt": ((), ("conversations", "system")),
            "firefly": ((), ("conversation", "system")),
            "messages": ((), ("messages", "tools")),
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

    def convert_chunk(self, name: str, chunk, skipped: Counter) -> Iterator[tuple[int, list[dict], str | None]]:
        """``(number, conversation, tools)`` for each usable record of a chunk (``tools``: the record's tool schemas
        as JSON text, or None); the others are counted in ``skipped``."""
        self.check_schema(name, chunk.schema)
        for where, number, record in chunk.records(name):
            messages = self.conversation(where, record)
            reason = skip_reason(messages)
            if reason:
                skipped[reason] += 1
            else:
                yield number, messages, _tools(where, record.get(self.column("tools"))) or self.tools

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
    """Why a conversation cannot train: an empty answer anywhere would teach a bare end token (an answer that only
    calls tools is not empty)."""
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers or not all(m["content"].strip() or m.get("tool_calls") for m in answers):
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
    """OpenAI-style messages: ``system``/``user``/``assistant``/``tool`` roles; an assistant may carry
    ``reasoning_content`` and ``tool_calls`` (its ``content`` may then be empty or null), a tool result ``name``
    and ``tool_call_id``."""
    messages = []
    for i, turn in enumerate(_turns(where, record, key)):
        at = f"{where} {key}[{i}]"
        if not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant", "tool"):
            raise DataError(f"{where}: field {key!r}[{i}].role must be system, user, assistant or tool.")
        calls = turn.get("tool_calls") if turn["role"] == "assistant" else None
        message = {"role": turn["role"], "content": _text(at, turn, "content", required=not calls)}
        if turn.get("input"):  # an Alpaca input kept as its own field (finetune.data convert/mix write it)
            message["input"] = _text(at, turn, "input")
        if turn["role"] == "assistant" and turn.get("reasoning_content") is not None:
            message["reasoning_content"] = _text(at, turn, "reasoning_content")
        if calls:
            message["tool_calls"] = _tool_calls(at, calls)
        if turn["role"] == "tool":
            message.update({name: _text(at, turn, name) for name in ("name", "tool_call_id")
                            if turn.get(name) is not None})
        messages.append(message)
    return messages if key != "messages" else _check_order(where, key, messages)


def _tool_calls(where: str, calls) -> str:
    """An assistant's tool calls as JSON text (one Arrow type for every record), each ``{"type": "function",
    "function": {"name", "arguments"}}`` with the arguments as an object, as chat templates expect them; OpenAI's
    JSON-string arguments and the flat ``{"name", "arguments"}`` form are accepted."""
    if not isinstance(calls, list):
        raise DataError(f"{where}: field 'tool_calls' must be a list of calls.")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(f"{where}: field 'tool_calls'[{i}] must be {{\"type\": \"function\", \"function\": "
                            "{\"name\": ..., \"arguments\": {...}}}.")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: field 'tool_calls'[{i}].function.arguments is not valid JSON ({err.msg}, "
                                f"column {err.colno}).") from None
        if not isinstance(arguments, dict):
            raise DataError(f"{where}: field 'tool_calls'[{i}].function.arguments must be a JSON object.")
        entry = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return json.dumps(out, ensure_ascii=False)


def _tools(where: str, tools) -> str | None:
    """A record's tool schemas (a list of JSON schemas, or JSON text of one) as JSON text, or None."""
    if tools is None or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: field 'tools' is not valid JSON ({err.msg}, column {err.colno}).") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{where}: field 'tools' must be a list of tool schemas (JSON objects).")
    return json.dumps(tools, ensure_ascii=False)


def _prompt_completion(where: str, record: dict) -> list[dict]:
    """TRL's prompt-completion layouts: two strings, or a prompt and a completion that are message lists.

    Only the completion trains in TRL; an assistant turn inside the prompt would train here (every answer of a
    conversation does), so it is refused rather than trained differently.
    """
    lists = {key: isinstance(record.get(key), list) for key in ("prompt", "completion")}
    if lists["prompt"] != lists["completion"] and all(record.get(key) is not None for key in lists):
        as_list = next(key for key, is_list in lists.items() if is_list)
        other = "completion" if as_list == "prompt" else "prompt"
        raise DataError(f"{where}: field {as_list!r} is a list of messages but {other!r} is not; give both as "
                        "strings, or both as message lists.")
    if any(lists.values()):
        prompt, completion = _messages(where, record, "prompt"), _messages(where, record, "completion")
        if any(m["role"] == "assistant" for m in prompt):
            raise DataError(f"{where}: field 'prompt' holds an assistant turn, which would train here; use "
                            "data.format=messages for multi-turn data.")
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise DataError(f"{where}: field 'completion' must be one assistant message.")
        return _check_alternation(where, "prompt", prompt + completion)
    return [{"role": "user", "content": _text(where, record, "prompt")},
            {"role": "assistant", "content": _text(where, record, "completion")}]


def _check_order(where: str, key: str, messages: list[dict]) -> list[dict]:
    """User and assistant turns alternate; with tools, an assistant that calls tools is followed by one ``tool``
    message or more and then by the assistant again."""
    if not any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return _check_alternation(where, key, messages)
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    allowed = {None: ("user",), "user": ("assistant",), "assistant": ("user",), "tool": ("tool", "assistant")}
    previous = None
    for i, message in enumerate(body):
        expected = ("tool",) if previous == "assistant" and body[i - 1].get("tool_calls") else allowed[previous]
        if message["role"] not in expected:
            raise DataError(f"{where}: field {key!r} turn {i} is {message['role']!r} where {' or '.join(expected)!r} "
                            "was expected; tool results follow the assistant turn that calls the tools.")
        previous = message["role"]
    return messages


def _check_alternation(where: str, key: str, messages: list[dict]) -> list[dict]:
    """Turns must alternate user/assistant after an optional system message, or masks would be wrong."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise DataError(f"{where}: field {key!r} turn {i} is {message['role']!r} where {expected!r} was expected; "
                            "turns must alternate user/assistant.")
    return messages
