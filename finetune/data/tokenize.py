"""Tokenization with loss masks: context tokens get label -100, every answer (and its end token) is supervised.

Context and answers are tokenized separately and the ids concatenated (the stanford_alpaca / Firefly / LinkSoul
rule), so a mask boundary never falls inside a token; neighbouring context pieces are joined first so the
context tokenizes exactly as it would in one string. All assistant turns of a conversation train in one sequence.

Truncation keeps whole turns from the start: a later turn that does not fit is dropped (counted in
``dropped_turns``); a first answer that does not fit is cut (``truncated``); an example whose prompt alone
fills ``max_length`` has no supervised token and is reported by the label audit.
"""
from __future__ import annotations

import json
from itertools import chain

import numpy as np
import pyarrow as pa

from ..conversation import Thinking, plain_messages, shows_reasoning
from ..errors import UserError
from ..templates import Template

__all__ = ["Encoder", "IGNORE_INDEX", "auto_prefix_ids", "plain_messages"]

IGNORE_INDEX = -100
ENCODER_VERSION = 5
"""Bump when the encoding changes, so cached tokenized data is rebuilt (4: ids stored as int32; 5: chat templates
tokenized whole, reasoning and tools)."""


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

    def __init__(self, tokenizer, template, max_length: int, thinking: str = "keep"):
        self.tokenizer, self.template, self.max_length = tokenizer, template, max_length
        self.thinking = Thinking(thinking, shows_reasoning(template, tokenizer))
        self.prefix_ids = auto_prefix_ids(tokenizer)
        self.bos = tokenizer.decode(self.prefix_ids) if self.prefix_ids else ""
        self.eos = tokenizer.eos_token or ""
        self.uses_auto_prefix = isinstance(template, Template) and template.prefix == "{bos}"
        self.whole_text = getattr(template, "whole_text", False)
        self.eos_id = tokenizer.eos_token_id
        # The Rust tokenizer directly: the same ids as tokenizer(texts, add_special_tokens=False) without building
        # offsets and a dict per text (~20% of tokenizing time). Only where the wrapper adds nothing of its own.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.direct = bool(getattr(tokenizer, "is_fast", False) and hasattr(backend, "encode_batch_fast")
                           and not getattr(tokenizer, "split_special_tokens", False))
        self.stop_ids = self._stop_ids()

    def render(self, messages: list[dict], tools: list | str | None = None) -> list[tuple[str, bool]]:
        """Template segments with neighbours of the same kind joined, so only mask boundaries split the text."""
        if isinstance(tools, str):  # JSON text in the data cache
            tools = json.loads(tools)
        segments = self.template.render(self.thinking.apply(plain_messages(messages)), bos=self.bos, eos=self.eos,
                                        tokenizer=self.tokenizer, **({"tools": tools} if tools else {}))
        merged = segments[:1]
        for text, supervised in segments[1:]:
            if len(merged) > 1 and merged[-1][1] == supervised:
                merged[-1] = (merged[-1][0] + text, supervised)
            else:
                merged.append((text, supervised))
        return merged

    def encode_prompt(self, messages: list[dict], tools: list | str | None = None) -> list[int]:
        """Ids of a generation prompt: the conversation so far, ending with the assistant header."""
        segments = self.render(messages, tools)
        return [i for ids in self._tokenize([segments])[0] for i in ids]

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        return {key: array.to_pylist() for key, array in self.arrays(batch["messages"], batch.get("tools")).items()}

    def arrays(self, conversations: list[list[dict]], tools: list | None = None) -> dict[str, pa.Array]:
        """The columns of :meth:`__call__` as Arrow arrays, built from flat numpy buffers: ``pa.array`` over a
        Python list per example cost as much as the rest of the chunk's Python work together.

        Args:
            tools: each conversation's tool schemas (a list, JSON text or None), when the data has any.
        """
        tools = tools or [None] * len(conversations)
        rendered = [self.render(messages, schemas) for messages, schemas in zip(conversations, tools)]
        pieces = [ids for example in self._tokenize(rendered) for ids in example]
        n = len(rendered)
        counts = np.array([len(segments) for segments in rendered], np.int64)
        sup = np.array([supervised for segments in rendered for _, supervised in segments], bool)
        seg_len = np.array([len(ids) for ids in pieces], np.int64)
        ids = np.fromiter(chain.from_iterable(pieces), np.int32, count=int(seg_len.sum()))
        example = np.repeat(np.arange(n), counts)
        # An example that fits keeps every segment up to its last answer; the others are planned turn by turn.
        last = np.full(n, -1)
        np.maximum.at(last, example[sup], np.flatnonzero(sup))
        take = np.where(np.arange(len(seg_len)) <= last[example], seg_len, 0)
        truncated, dropped = np.zeros(n, bool), np.zeros(n, np.int64)
        starts = np.cumsum(counts) - counts
        for i in np.flatnonzero(np.bincount(example, weights=seg_len, minlength=n) > self.max_length):
            part = slice(starts[i], starts[i] + counts[i])
            take[part], truncated[i], dropped[i] = self._plan(seg_len[part].tolist(), sup[part].tolist())
        # Each segment keeps its first ``take`` tokens; context is labelled IGNORE_INDEX.
        keep = np.arange(len(ids)) - np.repeat(np.cumsum(seg_len) - seg_len, seg_len) < np.repeat(take, seg_len)
        input_values = ids[keep]
        label_values = np.where(np.repeat(sup, seg_len), ids, IGNORE_INDEX)[keep]
        num_tokens = np.bincount(example, weights=take, minlength=n).astype(np.int64)
        num_supervised = np.bincount(example, weights=take * sup, minlength=n).astype(np.int64)
        offsets = pa.array(np.concatenate([[0], np.cumsum(num_tokens)]), pa.int32())
        eos = np.zeros(n, bool)
        if self.stop_ids:
            eos[np.repeat(np.arange(n), num_tokens)[np.isin(label_values, self.stop_ids)]] = True
        return {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(input_values)),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(label_values)),
            "num_tokens": pa.array(num_tokens), "num_supervised": pa.array(num_supervised),
            "truncated": pa.array(truncated), "dropped_turns": pa.array(dropped),
            "eos_labelled": pa.array(eos),
        }

    def _tokenize(self, rendered: list[list[tuple[str, bool]]]) -> list[list[list[int]]]:
        """Tokenize every segment of the batch in one tokenizer call (fast tokenizers batch in Rust)."""
        if self.whole_text:
            return self._tokenize_whole(rendered)
        texts = [text for segments in rendered for text, _ in segments[1:]]
        flat = iter(self.ids(texts) if texts else [])
        result = []
        for segments in rendered:
            prefix = self.prefix_ids if self.uses_auto_prefix else (
                self.tokenizer(segments[0][0], add_special_tokens=False)["input_ids"] if segments[0][0] else [])
            result.append([list(prefix)] + [next(flat) for _ in segments[1:]])
        return result

    def _tokenize_whole(self, rendered: list[list[tuple[str, bool]]]) -> list[list[list[int]]]:
        """Each example's text tokenized in one piece, its ids split where the segments meet: the ids are exactly
        ``apply_chat_template(..., tokenize=True)``'s. A token that crosses a boundary belongs to the segment it
        starts in."""
        texts = ["".join(text for text, _ in segments) for segments in rendered]
        encodings = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        result = []
        for segments, ids, offsets in zip(rendered, encodings["input_ids"], encodings["offset_mapping"]):
            bounds = np.cumsum([len(text) for text, _ in segments])
            owner = np.searchsorted(bounds, [start for start, _ in offsets], side="right")
            cuts = np.searchsorted(owner, np.arange(len(segments)))
            result.append([ids[a:b] for a, b in zip(cuts, list(cuts[1:]) + [len(ids)])])
        return result

    def _stop_ids(self) -> list[int]:
        """The tokens that end an answer: EOS, and the special tokens the template closes each answer with
        (``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for Llama 3), found by rendering a one-turn probe."""
        special = set(self.tokenizer.all_special_ids) | {
            i for i, token in getattr(self.tokenizer, "added_tokens_decoder", {}).items() if token.special}
        stops = [self.eos_id] if self.eos_id is not None else []
        try:
            segments = self.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "\ue000"}])
        except UserError:  # a template that needs what the probe lacks; EOS alone then
            return stops
        answer = next(text for text, supervised in segments if supervised)
        after = answer[answer.index("\ue000") + 1:] if "\ue000" in answer else ""
        return stops + [i for i in self.ids([after])[0] if i in special and i not in stops] if after else stops

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens added."""
        if self.direct:
            encodings = self.tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)
            return [encoding.ids for encoding in encodings]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _plan(self, lengths: list[int], supervised: list[bool]) -> tuple[list[int], bool, int]:
        """How many tokens of each segment the example keeps, whether an answer was cut, and how many answers were
        dropped. Whole turns are kept from the start; only a first answer that does not fit is cut."""
        takes: list[int] = []
        used = last = kept = 0
        truncated = False
        for length, sup in zip(lengths, supervised):
            room = self.max_length - used
            if length > room:
                if sup and kept == 0 and room > 0:  # the first answer is cut rather than lost
                    takes.append(room)
                    last, kept, truncated = len(takes), 1, True
                break
            takes.append(length)
            used += length
            if sup:
                last, kept = len(takes), kept + 1
        # Context after the last answer teaches nothing; cut after the last supervised token.
        return takes[:last] + [0] * (len(lengths) - last), truncated, sum(supervised) - kept
