"""Training and inference see the same text: the ids and labels training uses, against what inference renders.

The failure users of every fine-tuning framework report most is a prompt format that differs between training and
inference: the model never stops, or starts thinking again after a merge. For each example this compares

1. **training**: the ids the encoder trains on, and where its labels start;
2. **transformers**: ``apply_chat_template`` with the run's tools and ``enable_thinking`` (for a named template,
   the Jinja template the export writes into the GGUF file, rendered the same way): the whole conversation must
   tokenize to the training ids, and the prompt of the last answer (``add_generation_prompt``) must be exactly the
   training ids before that answer's supervised tokens;
3. **the GGUF file**: the chat template the export embeds (the tokenizer's own, or the one generated from a named
   template), rendered by llama-cpp-python's Jinja renderer when it is installed.

``python -m finetune.check template`` prints the first difference of each kind with its context; the dry run
(``finetune.run --dry-run``) runs the first two on a few examples before any compute.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .data.readers import read_examples
from .data.tokenize import IGNORE_INDEX, Encoder
from .export.chat_template import PromptFormat, jinja_chat_template
from .templates import TokenizerTemplate, chat_messages

__all__ = ["TemplateCheck", "check_template", "check_conversations"]


@dataclass
class TemplateCheck:
    """The outcome over the examples checked."""

    examples: int = 0
    mismatches: dict[str, int] = field(default_factory=lambda: {"transformers": 0, "prompt": 0, "gguf": 0})
    first: dict[str, str] = field(default_factory=dict)
    """The first difference of each kind, with its context."""
    gguf_renderer: str = "llama-cpp-python not installed: not rendered"

    @property
    def ok(self) -> bool:
        return not any(self.mismatches.values())

    def format(self) -> str:
        lines = [f"{self.examples} examples: {self.mismatches['transformers']} whole-conversation mismatches "
                 f"(training ids vs apply_chat_template), {self.mismatches['prompt']} prompt mismatches (the "
                 f"inference prompt of the last answer vs the training ids before it), {self.mismatches['gguf']} "
                 f"GGUF-template mismatches ({self.gguf_renderer})."]
        lines += [f"first {kind} mismatch: {where}" for kind, where in self.first.items()]
        return "\n".join(lines)

    def add(self, kind: str, where: str) -> None:
        self.mismatches[kind] += 1
        self.first.setdefault(kind, where)


def check_template(tokenizer, template, data_spec, path: str, n: int = 50) -> TemplateCheck:
    """Check the first ``n`` examples of ``path``, read as ``data_spec`` (format, columns, tools, thinking) says."""
    from .data.dataset import read_tools

    read = read_examples(path, data_spec.format, prompt_column=data_spec.prompt_column,
                         response_column=data_spec.response_column, text_column=data_spec.text_column,
                         system=data_spec.system, columns=data_spec.columns, split=data_spec.split,
                         subset=data_spec.subset, revision=data_spec.revision, tools=read_tools(data_spec.tools),
                         limit=n)
    return check_conversations(tokenizer, template, read.conversations, read.tools, data_spec.thinking,
                               data_spec.system, [f"{path}:{line}" for line in read.lines])


def check_conversations(tokenizer, template, conversations: list[list[dict]], tools: list, thinking: str = "keep",
                        system: Optional[str] = None, where: Optional[list[str]] = None) -> TemplateCheck:
    """The comparison of the module doc on conversations already read."""
    encoder = Encoder(tokenizer, template, max_length=10**9, thinking=thinking)
    reference = _Reference(tokenizer, template, system)
    result = TemplateCheck(gguf_renderer=reference.gguf_renderer)
    for i, (messages, schemas) in enumerate(zip(conversations, tools)):
        label = where[i] if where else f"example {i}"
        result.examples += 1
        columns = encoder.arrays([messages], [schemas])
        ids, labels = columns["input_ids"][0].as_py(), columns["labels"][0].as_py()
        chat = chat_messages(encoder.thinking.apply(messages))
        schemas = json.loads(schemas) if isinstance(schemas, str) else schemas
        whole = reference.ids(chat, schemas)
        if whole != ids:
            result.add("transformers", f"{label}: {_difference(tokenizer, ids, whole)}")
        last = max(i for i, m in enumerate(chat) if m["role"] == "assistant")
        prompt = reference.ids(chat[:last], schemas, add_generation_prompt=True)
        start = _first_supervised_after(labels, len(prompt) - 1)
        if ids[:len(prompt)] != prompt or start != len(prompt):
            result.add("prompt", f"{label}: {_difference(tokenizer, ids[:max(start, 0)], prompt)}")
        if reference.gguf is not None:
            rendered = tokenizer(reference.gguf(chat, schemas), add_special_tokens=False)["input_ids"]
            if rendered != ids:
                result.add("gguf", f"{label}: {_difference(tokenizer, ids, rendered)}")
    return result


class _Reference:
    """How inference renders: transformers' ``apply_chat_template`` over the template the export writes."""

    def __init__(self, tokenizer, template, system: Optional[str]):
        self.tokenizer, self.template = tokenizer, template
        fmt = PromptFormat.for_tokenizer(template, tokenizer, system)
        self.chat_template = jinja_chat_template(fmt, getattr(tokenizer, "chat_template", None))
        self.kwargs: dict[str, Any] = {}
        if isinstance(template, TokenizerTemplate) and template.enable_thinking is not None:
            self.kwargs["enable_thinking"] = template.enable_thinking
        self.gguf, self.gguf_renderer = _gguf_renderer(self.chat_template, tokenizer, self.kwargs)

    def ids(self, chat: list[dict], tools, add_generation_prompt: bool = False) -> list[int]:
        kwargs = dict(self.kwargs, **({"tools": tools} if tools else {}))
        return self.tokenizer.apply_chat_template(chat, chat_template=self.chat_template, tokenize=True,
                                                  return_dict=False, add_generation_prompt=add_generation_prompt,
                                                  **kwargs)


def _gguf_renderer(chat_template: str, tokenizer, kwargs: dict):
    """llama-cpp-python's Jinja formatter over the GGUF's chat template, or None when it is not installed."""
    try:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        return None, "llama-cpp-python not installed: not rendered"
    formatter = Jinja2ChatFormatter(chat_template, eos_token=tokenizer.eos_token or "",
                                    bos_token=tokenizer.bos_token or "")

    def render(chat, tools):
        try:
            return formatter(messages=chat, tools=tools, **kwargs).prompt
        except Exception:  # noqa: BLE001 - a template llama-cpp-python cannot render counts as a mismatch
            return ""

    return render, "rendered by llama-cpp-python's Jinja2ChatFormatter"


def _first_supervised_after(labels: list[int], index: int) -> int:
    for position in range(max(index, 0), len(labels)):
        if labels[position] != IGNORE_INDEX:
            return position
    return -1


def _difference(tokenizer, trained: list[int], reference: list[int]) -> str:
    """Where two id sequences first differ, decoded with a little context on each side."""
    at = next((i for i, (a, b) in enumerate(zip(trained, reference)) if a != b), min(len(trained), len(reference)))
    before = tokenizer.decode(trained[max(0, at - 8):at])
    return (f"token {at}: after {before!r} training has {tokenizer.decode(trained[at:at + 8])!r}, inference has "
            f"{tokenizer.decode(reference[at:at + 8])!r}")
