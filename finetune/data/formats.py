"""Record layouts: each ``data.format`` turns one record into a conversation, ``[{"role", "content"[, "input"]}]``,
and the layouts ``finetune.data convert`` writes turn a conversation back into a record.

Each format is one :class:`DataFormat`, registered at the bottom of this file with one call; a new one is registered
the same way from anywhere (``register_format``), and recipes, the readers and the data tools all take it by name.
Errors name the record (``where``) and the field; the recipe's column names (``data.columns``) are applied first
(:mod:`finetune.data.converter`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from ..conversation import user_text
from ..recipe import register_format_name
from .errors import DataError

__all__ = ["DataFormat", "SHAREGPT_ROLES", "format_names", "get_format", "record_tools", "register_format",
           "skip_reason", "writable_format_names"]

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


@dataclass(frozen=True)
class DataFormat:
    """One record layout, registered with :func:`register_format`."""

    name: str
    read: Callable[..., list[dict]]
    """``(where, record, **named) -> conversation``; ``named`` gives the record keys of the fields in ``named_by``.
    Raises ``DataError`` naming ``where`` and the field for a record it cannot read."""
    text_fields: tuple[str, ...] = ()
    """Fields that hold strings (a table column of another type is refused before any row is read)."""
    other_fields: tuple[str, ...] = ()
    required: Optional[tuple[str, ...]] = None
    """Fields every record has; ``None``: the text fields."""
    named_by: Mapping[str, str] = field(default_factory=dict)
    """Fields whose key in the data is a ``data`` option: adgen's ``content`` is ``data.prompt_column``."""
    write: Optional[Callable[[list[dict], Callable[[str], None]], dict]] = None
    """``(conversation, lose) -> record`` for ``finetune.data convert`` and ``mix``; ``lose(what)`` is called for
    each thing the record cannot hold. ``None``: the format is only read."""
    writes: tuple[str, ...] = ()
    """The top-level fields ``write`` writes; a source record's other fields are carried over."""


_REGISTRY: dict[str, DataFormat] = {}


def register_format(data_format: DataFormat) -> None:
    """Make ``data_format`` usable as ``data.format`` and by ``python -m finetune.data``."""
    if data_format.name in _REGISTRY:
        raise ValueError(f"Data format {data_format.name!r} is already registered.")
    register_format_name(data_format.name)
    _REGISTRY[data_format.name] = data_format


def get_format(name: str) -> DataFormat:
    if name not in _REGISTRY:
        raise DataError(f"Unknown data format {name!r}; known formats: {', '.join(format_names())}.")
    return _REGISTRY[name]


def format_names() -> list[str]:
    return list(_REGISTRY)


def writable_format_names() -> list[str]:
    """The formats ``finetune.data convert`` and ``mix`` write."""
    return [name for name, data_format in _REGISTRY.items() if data_format.write is not None]


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


def _adgen(where: str, record: dict, content: str, summary: str) -> list[dict]:
    """``content`` and ``summary``: the keys ``data.prompt_column`` and ``data.response_column`` name."""
    return [{"role": "user", "content": _text(where, record, content)},
            {"role": "assistant", "content": _text(where, record, summary)}]


def _plain_text(where: str, record: dict, text: str) -> list[dict]:
    """The whole text is one supervised answer with no prompt; ``text`` is the key ``data.text_column`` names."""
    return [{"role": "assistant", "content": _text(where, record, text)}]


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


def record_tools(where: str, tools) -> str | None:
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


# --- writing: a conversation as a record, for finetune.data convert and mix ------------------------------------------


def _pairs(messages: list[dict], lose: Callable[[str], None], trailing_prompt: bool = False,
           last_input: bool = False) -> tuple[Optional[str], list[dict], list[tuple[str, str]]]:
    """``(system, turns, (prompt, answer) pairs)`` of a conversation, calling ``lose`` for what a format without
    tool calls and reasoning cannot hold: a final prompt with no answer (unless ``trailing_prompt``), and an Alpaca
    ``input`` as its own field (but the last turn's, with ``last_input``)."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    body = messages[1:] if system is not None else list(messages)
    if not trailing_prompt and body[-1]["role"] == "user":
        lose("a final user turn with no answer")
        body = body[:-1]
    if any(m["role"] == "tool" or m.get("tool_calls") or m.get("reasoning_content") for m in messages):
        lose("reasoning, tool calls or tool results (only messages holds them)")
        messages = [{k: v for k, v in m.items() if k not in ("tool_calls", "reasoning_content")}
                    for m in messages if m["role"] != "tool"]
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        body = [m for m in (messages[1:] if system is not None else messages) if m["content"].strip()]
    kept_input = len(body) - 2 if last_input else None
    for i, message in enumerate(body):
        if message.get("input") and i != kept_input:
            lose("an Alpaca input as its own field (lossy merges it into the prompt)")
    pairs = [(u["content"] if 2 * k == kept_input else user_text(u), a["content"])
             for k, (u, a) in enumerate(zip(body[::2], body[1::2]))]
    return system, body, pairs


def _write_messages(messages: list[dict], lose) -> dict:
    # Tool calls travel as JSON text inside the reader; written back as the list they were.
    return {"messages": [{**m, "tool_calls": json.loads(m["tool_calls"])} if m.get("tool_calls") else dict(m)
                         for m in messages]}


def _write_alpaca(messages: list[dict], lose) -> dict:
    system, body, pairs = _pairs(messages, lose, last_input=True)
    record: dict = {"system": system} if system is not None else {}
    record.update(instruction=pairs[-1][0], input=body[-2].get("input", ""), output=pairs[-1][1])
    if len(pairs) > 1:
        record["history"] = [list(pair) for pair in pairs[:-1]]
    return record


def _write_adgen(messages: list[dict], lose) -> dict:
    system, _, pairs = _pairs(messages, lose)
    if system is not None:
        lose("a system prompt")
    if len(pairs) > 1:
        lose("earlier turns (adgen is single-turn; lossy keeps the last)")
    return {"content": pairs[-1][0], "summary": pairs[-1][1]}


def _write_sharegpt(messages: list[dict], lose) -> dict:
    system, body, _ = _pairs(messages, lose, trailing_prompt=True)
    turns = [{"from": "human" if m["role"] == "user" else "gpt", "value": user_text(m)} for m in body]
    return {"conversations": turns, **({"system": system} if system is not None else {})}


def _write_firefly(messages: list[dict], lose) -> dict:
    system, _, pairs = _pairs(messages, lose)
    return {"conversation": [{"human": u, "assistant": a} for u, a in pairs],
            **({"system": system} if system is not None else {})}


for _format in (
    DataFormat("alpaca", _alpaca, text_fields=("instruction", "output"), other_fields=("input", "system", "history"),
               write=_write_alpaca, writes=("instruction", "input", "output", "system", "history")),
    DataFormat("adgen", _adgen, text_fields=("content", "summary"),
               named_by={"content": "prompt_column", "summary": "response_column"},
               write=_write_adgen, writes=("content", "summary")),
    DataFormat("sharegpt", _sharegpt, other_fields=("conversations", "system"), required=("conversations",),
               write=_write_sharegpt, writes=("conversations", "system")),
    DataFormat("firefly", _firefly, other_fields=("conversation", "system"), required=("conversation",),
               write=_write_firefly, writes=("conversation", "system")),
    DataFormat("messages", _messages, other_fields=("messages", "tools"), required=("messages",),
               write=_write_messages, writes=("messages",)),
    DataFormat("text", _plain_text, text_fields=("text",), named_by={"text": "text_column"}),
    DataFormat("prompt_completion", _prompt_completion, other_fields=("prompt", "completion"),
               required=("prompt", "completion")),
):
    register_format(_format)
