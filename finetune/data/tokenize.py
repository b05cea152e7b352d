"""Tokenization with loss masks: context tokens get label -100, every answer (and its end token) is supervised.

Context and answers are tokenized separately and the ids concatenated (the stanford_alpaca / Firefly / LinkSoul
rule), so a mask boundary never falls inside a token; neighbouring context pieces are joined first so the
context tokenizes exactly as it would in one string. All assistant turns of a conversation train in one sequence.

Truncation keeps whole turns from the start: a later turn that does not fit is dropped (counted in
``dropped_turns``); a first answer that does not fit is cut (``truncated``); an example whose prompt alone
fills ``max_length`` has no supervised token and is reported by the label audit.
"""
from __future__ import annotations

from typing import Any

from ..conversation import plain_messages
from ..templates import Template

__all__ = ["Encoder", "IGNORE_INDEX", "auto_prefix_ids", "plain_messages"]

IGNORE_INDEX = -100
ENCODER_VERSION = 3
"""Bump when the encoding changes, so cached tokenized data is rebuilt."""


def auto_prefix_ids(tokenizer) -> list[int]:
    """The special ids the tokenizer puts in front of a text by itself (``<s>`` for Llama-2, none for SmolLM2)."""
    with_special = tokenizer("a").input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start:start + len(plain)] == plain:
            return list(with_special[:start])
    return []


class Encoder:
    """Turns batches of conversations into ``input_ids``/``labels`` plus per-example statistics.

    Used as a batched ``datasets.map`` function; the statistics columns feed the label audit.
    """

    def __init__(self, tokenizer, template, max_length: int):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self.prefix_ids = auto_prefix_ids(tokenizer)
        self.bos = tokenizer.decode(self.prefix_ids) if self.prefix_ids else ""
        self.eos = tokenizer.eos_token or ""
        self.uses_auto_prefix = isinstance(template, Template) and template.prefix == "{bos}"
        self.eos_id = tokenizer.eos_token_id
        # The Rust tokenizer directly: the same ids as tokenizer(texts, add_special_tokens=False) without building
        # offsets and a dict per text (~20% of tokenizing time). Only where the wrapper adds nothing of its own.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.direct = bool(getattr(tokenizer, "is_fast", False) and hasattr(backend, "encode_batch_fast")
                           and not getattr(tokenizer, "split_special_tokens", False))

    def render(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """Template segments with neighbours of the same kind joined, so only mask boundaries split the text."""
        segments = self.template.render(plain_messages(messages), bos=self.bos, eos=self.eos, tokenizer=self.tokenizer)
        merged = segments[:1]
        for text, supervised in segments[1:]:
            if len(merged) > 1 and merged[-1][1] == supervised:
                merged[-1] = (merged[-1][0] + text, supervised)
            else:
                merged.append((text, supervised))
        return merged

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        """Ids of a generation prompt: the conversation so far, ending with the assistant header."""
        segments = self.render(messages)
        return [i for ids in self._tokenize([segments])[0] for i in ids]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rendered = [self.render(messages) for messages in batch["messages"]]
        out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "num_tokens", "num_supervised",
                                                "truncated", "dropped_turns", "eos_labelled")}
        for segments, seg_ids in zip(rendered, self._tokenize(rendered)):
            for key, value in self._assemble(seg_ids, [sup for _, sup in segments]).items():
                out[key].append(value)
        return out

    def _tokenize(self, rendered: list[list[tuple[str, bool]]]) -> list[list[list[int]]]:
        """Tokenize every segment of the batch in one tokenizer call (fast tokenizers batch in Rust)."""
        texts = [text for segments in rendered for text, _ in segments[1:]]
        flat = iter(self.ids(texts) if texts else [])
        result = []
        for segments in rendered:
            prefix = self.prefix_ids if self.uses_auto_prefix else (
                self.tokenizer(segments[0][0], add_special_tokens=False)["input_ids"] if segments[0][0] else [])
            result.append([list(prefix)] + [next(flat) for _ in segments[1:]])
        return result

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens added."""
        if self.direct:
            encodings = self.tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            return [encoding.ids for encoding in encodings]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _assemble(self, seg_ids: list[list[int]], supervised: list[bool]) -> dict[str, Any]:
        input_ids: list[int] = []
        labels: list[int] = []
        boundary = kept = 0
        truncated = False
        for ids, sup in zip(seg_ids, supervised):
            room = self.max_length - len(input_ids)
            if len(ids) > room:
                if sup and kept == 0 and room > 0:  # the first answer is cut rather than lost
                    input_ids += ids[:room]
                    labels += ids[:room]
                    boundary, kept, truncated = len(input_ids), 1, True
                break
            input_ids += ids
            labels += ids if sup else [IGNORE_INDEX] * len(ids)
            if sup:
                boundary, kept = len(input_ids), kept + 1
        # Context after the last answer teaches nothing; cut after the last supervised token.
        input_ids, labels = input_ids[:boundary], labels[:boundary]
        num_supervised = len(labels) - labels.count(IGNORE_INDEX)
        return {
            "input_ids": input_ids, "labels": labels, "num_tokens": len(input_ids),
            "num_supervised": num_supervised, "truncated": truncated,
            "dropped_turns": sum(supervised) - kept,
            "eos_labelled": self.eos_id is not None and self.eos_id in labels,
        }
