"""Conversations as plain data: ``[{"role", "content"[, "input"]}, ...]``, the one shape every reader produces.

A message may also carry ``reasoning_content`` (an assistant's thinking), ``tool_calls`` (an assistant's calls,
OpenAI-style, as JSON text) and ``name`` / ``tool_call_id`` (a ``tool`` message's result). The helpers here are the
single place each rule about that shape is written: how an Alpaca ``input`` joins its instruction, where the prompt
ends and the answer begins, how reasoning is kept, dropped or written inline, and how Arrow's ``None`` fill-ins
are removed.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from .errors import UsageError

__all__ = ["THINKING_MODES", "Thinking", "drop_none", "plain_messages", "prompt_messages", "shows_reasoning",
           "split_reasoning", "user_text"]

THINKING_MODES = ("auto", "keep", "drop")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


def drop_none(mapping: Mapping[str, Any]) -> dict:
    """The mapping without its ``None`` values."""
    return {k: v for k, v in mapping.items() if v is not None}


def plain_messages(messages: Sequence[Mapping]) -> list[dict]:
    """Messages as plain dicts: Arrow stores a key that some messages lack (Alpaca's ``input``) as None in all."""
    return [drop_none(m) for m in messages]


def user_text(message: Mapping) -> str:
    """A user turn as one text: an Alpaca ``input`` follows its instruction after a blank line (stanford_alpaca's
    layout for templates without an input slot)."""
    return f"{message['content']}\n\n{message['input']}" if message.get("input") else message["content"]


def prompt_messages(conversation: Sequence[Mapping]) -> tuple[list[dict], str]:
    """Split a conversation into (everything before the last answer, the last answer)."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return list(conversation[:last]), conversation[last]["content"]


def split_reasoning(message: Mapping) -> tuple[str, str]:
    """An assistant message's (reasoning, answer): ``reasoning_content``, or a leading ``<think>…</think>``."""
    content = message.get("content") or ""
    if message.get("reasoning_content"):
        return message["reasoning_content"].strip("\n"), content
    found = _THINK.match(content)
    return (found.group(1).strip("\n"), content[found.end():]) if found else ("", content)


def shows_reasoning(template: Any, tokenizer: Any) -> bool:
    """Whether the template writes an assistant's reasoning (a chat template that reads ``reasoning_content`` or
    ``<think>``, as Qwen3's does); named templates never do."""
    if getattr(template, "name", "") != "tokenizer":
        return False
    source = getattr(tokenizer, "chat_template", None) or ""
    return "reasoning_content" in source or "<think>" in source


class Thinking:
    """What ``data.thinking`` does to a conversation's reasoning before the template renders it.

    ``keep``: reasoning trains; a template that cannot show it gets it inline, ``<think>\\n…\\n</think>\\n\\n``
    before the answer. ``drop``: reasoning is removed (the template's ``enable_thinking`` is then off too).
    ``auto``: ``keep`` where the template shows reasoning; elsewhere a conversation with reasoning is refused,
    since dropping it silently or inventing an inline format are both choices the user should make.
    """

    def __init__(self, mode: str, template_shows: bool):
        if mode not in THINKING_MODES:
            raise UsageError(f"data.thinking={mode!r} is not one of {', '.join(THINKING_MODES)}.")
        self.mode, self.template_shows = mode, template_shows

    def apply(self, messages: list[dict]) -> list[dict]:
        if self.template_shows and self.mode != "drop":
            return messages
        out = []
        for message in messages:
            if message["role"] == "assistant":
                reasoning, answer = split_reasoning(message)
                if reasoning and self.mode == "auto":
                    raise UsageError("an answer has reasoning (reasoning_content or <think>) that this template "
                                     "cannot show; set data.thinking=drop to train without it, or keep to write it "
                                     "inline as <think>...</think>.")
                message = {k: v for k, v in message.items() if k != "reasoning_content"}
                message["content"] = f"<think>\n{reasoning}\n</think>\n\n{answer}" if (
                    reasoning and self.mode == "keep") else answer
            out.append(message)
        return out
