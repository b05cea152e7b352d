"""From a recipe's data section to tokenized train/eval datasets, cached on disk.

The cache key covers everything the token ids depend on: the file's bytes, the format options, the template's
definition, the tokenizer's vocabulary and special tokens, ``max_length`` and the encoder version. A cache hit
never re-tokenizes; any change gives a new key, so a stale cache cannot be read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..paths import cache_dir
from ..recipe import DataSpec
from .readers import DataError, ReadResult, read_examples
from .tokenize import ENCODER_VERSION, Encoder

__all__ = ["SFTData", "build_datasets", "cache_dir"]

logger = logging.getLogger(__name__)


@dataclass
class SFTData:
    """Tokenized splits plus what the label audit needs to know about how they were made."""

    train: datasets.Dataset
    eval: datasets.Dataset | None
    skipped: Counter = field(default_factory=Counter)
    tokenize_seconds: float = 0.0
    cache_hit: bool = False


def build_datasets(spec: DataSpec, tokenizer, template, max_length: int, seed: int = 42) -> SFTData:
    """Read, tokenize (or load from cache) and split the data of a recipe.

    Examples without any supervised token are removed here and counted under ``skipped``.
    """
    encoder = Encoder(tokenizer, template, max_length)
    skipped: Counter = Counter()
    started = time.perf_counter()
    if spec.sources:
        spec = dataclasses.replace(spec, train=str(_mixed(spec.sources, seed)), format="messages")
    train, hit = _tokenized(spec, spec.train, encoder, skipped)
    evaluation = None
    if spec.eval:
        evaluation, _ = _tokenized(spec, spec.eval, encoder, skipped, prefix="eval: ")
    elif spec.eval_split:
        parts = train.train_test_split(test_size=spec.eval_split, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return SFTData(train, evaluation, skipped, time.perf_counter() - started, hit)


def _tokenized(spec: DataSpec, path: str, encoder: Encoder, skipped: Counter, prefix: str = ""):
    read: ReadResult = read_examples(path, spec.format, prompt_column=spec.prompt_column,
                                     response_column=spec.response_column, text_column=spec.text_column,
                                     system=spec.system)
    for reason, count in read.skipped.items():
        skipped[prefix + reason] += count
    if not read.conversations:
        raise ValueError(f"{path}: no usable example ({dict(read.skipped)}); check data.format={spec.format!r}.")
    cache_file = cache_dir("data") / f"{_cache_key(spec, path, encoder)}.arrow"
    hit = cache_file.exists()
    raw = datasets.Dataset.from_dict({"messages": read.conversations, "line": read.lines})
    tokenized = raw.map(encoder, batched=True, batch_size=512,
                        cache_file_name=str(cache_file), load_from_cache_file=True,
                        desc=f"Tokenizing {Path(path).name}")
    tokenized = _apply_overlong_policy(tokenized, spec.overlong, path, encoder.max_length, skipped, prefix)
    empty = sum(1 for n in tokenized["num_supervised"] if n == 0)
    if empty == len(tokenized):
        raise ValueError(f"{path}: every example has all labels masked (no supervised token). The prompts fill "
                         f"model.max_length={encoder.max_length} or the answers are empty; raise max_length or "
                         "check data.format and data.template.")
    if empty:
        skipped[prefix + "no supervised token (prompt fills max_length)"] += empty
        tokenized = tokenized.filter(lambda n: n > 0, input_columns="num_supervised")
    return tokenized, hit


def _mixed(sources: tuple[str, ...], seed: int) -> Path:
    """The recipe's sources mixed into one ``messages`` file in the cache (rebuilt when any input changes)."""
    from .tools.mix import mix_files, parse_source

    parsed = [parse_source(s) for s in sources]
    digest = hashlib.sha256(json.dumps([list(sources), seed]).encode())
    for source in parsed:
        digest.update(Path(source.path).read_bytes())
    out = cache_dir("data") / f"mix-{digest.hexdigest()[:24]}.jsonl"
    if not out.exists():
        staging = out.with_suffix(".tmp")
        rows, _ = mix_files(parsed, staging, fmt="messages", seed=seed)
        staging.rename(out)
        logger.info("Mixed %s into %s", ", ".join(f"{r.name}: {r.taken}" for r in rows), out)
    return out


def _apply_overlong_policy(tokenized, policy: str, path: str, max_length: int, skipped: Counter, prefix: str):
    """Examples that did not fit ``max_length`` are kept truncated, dropped, or an error (``data.overlong``)."""
    if policy == "truncate":
        return tokenized
    columns = tokenized.select_columns(["truncated", "dropped_turns", "num_supervised", "line"]).to_dict()
    rows = zip(columns["truncated"], columns["dropped_turns"], columns["num_supervised"])
    overlong = [i for i, (cut, dropped, supervised) in enumerate(rows) if cut or dropped or not supervised]
    if not overlong:
        return tokenized
    if policy == "error":
        lines = ", ".join(str(columns["line"][i]) for i in overlong[:10])
        raise DataError(f"{path}: {len(overlong)} examples exceed model.max_length={max_length} (lines {lines}"
                        f"{', ...' if len(overlong) > 10 else ''}); raise model.max_length or set "
                        "data.overlong=truncate or drop.")
    skipped[prefix + f"longer than max_length={max_length} (data.overlong=drop)"] += len(overlong)
    keep = sorted(set(range(len(tokenized))) - set(overlong))
    return tokenized.select(keep)


def _cache_key(spec: DataSpec, path: str, encoder: Encoder) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    options = {
        "format": spec.format, "columns": [spec.prompt_column, spec.response_column, spec.text_column],
        "system": spec.system,
        "template": encoder.template.to_dict(), "max_length": encoder.max_length, "version": ENCODER_VERSION,
        "tokenizer": _tokenizer_fingerprint(encoder.tokenizer),
    }
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([tokenizer.all_special_tokens, tokenizer.eos_token, getattr(tokenizer, "chat_template", None),
                        type(tokenizer).__name__], default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()
