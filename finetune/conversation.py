"""Conversations as plain data: ``[{"role", "content"[, "input"]}, ...]``, the one shape every reader produces.

The helpers here are the single place each rule about that shape is written: how an Alpaca ``input`` joins its
instruction, where the prompt ends and the answer begins, and how Arrow's ``None`` fill-ins are removed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

__all__ = ["drop_none", "plain_messages", "prompt_messages", "user_text"]


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
