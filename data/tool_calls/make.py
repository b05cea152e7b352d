"""Writes train.jsonl / eval.jsonl: tool-calling conversations with reasoning, from Python's Unicode database.

Each conversation asks for a character's Unicode name. The assistant thinks (``reasoning_content``), calls the
``unicode_name`` tool, reads its result (a real ``unicodedata.name`` lookup) and answers; every third one asks a
follow-up about the code point, answered without a tool (its reasoning inline as ``<think>``, the other way data
carries it). The tool schema is in each record's ``tools``, as OpenAI's API takes it.

    python data/tool_calls/make.py
"""
import json
import random
import unicodedata
from pathlib import Path

TOOL = {"type": "function", "function": {
    "name": "unicode_name", "description": "The official Unicode name of one character.",
    "parameters": {"type": "object", "properties": {"char": {"type": "string", "description": "one character"}},
                   "required": ["char"]}}}
SYSTEM = "You answer questions about characters. Use the tools when a fact must be looked up."


def conversation(char: str, follow_up: bool) -> dict:
    name = unicodedata.name(char)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is the Unicode name of {char}?"},
        {"role": "assistant", "content": "", "reasoning_content": "The name must be exact, so I look it up.",
         "tool_calls": [{"type": "function", "function": {"name": "unicode_name",
                                                          "arguments": json.dumps({"char": char})}}]},
        {"role": "tool", "content": json.dumps({"name": name})},
        {"role": "assistant", "content": f"{char} is {name}.",
         "reasoning_content": "The tool returned the name; I repeat it."},
    ]
    if follow_up:
        messages += [
            {"role": "user", "content": "And its code point?"},
            {"role": "assistant",
             "content": f"<think>\nord({char!r}) is {ord(char)}, which is {ord(char):04X} in hex.\n</think>\n\n"
                        f"U+{ord(char):04X}."},
        ]
    return {"tools": [TOOL], "messages": messages}


def main() -> None:
    chars = [chr(c) for c in range(0xC0, 0x250) if unicodedata.name(chr(c), "")]
    random.Random(0).shuffle(chars)
    folder = Path(__file__).parent
    for name, part in (("train.jsonl", chars[:120]), ("eval.jsonl", chars[120:136])):
        with (folder / name).open("w", encoding="utf-8") as out:
            for i, char in enumerate(part):
                out.write(json.dumps(conversation(char, i % 3 == 0), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
