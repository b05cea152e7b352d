"""From a recipe's data section to tokenized train/eval datasets, cached on disk.

The cache key covers everything the token ids depend on: the source's bytes, the format options and columns, the
template's definition, the tokenizer's vocabulary and special tokens, ``max_length`` and the encoder version. A
cache hit never re-reads or re-tokenizes (the skip counts are stored beside it); any change gives a new key, so a
stale cache cannot be read. ``data.num_proc`` is not in the key: it gives the same rows.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow.compute as pc

from ..paths import cache_dir
from ..recipe import DataSpec
from .converter import RecordConverter
from .errors import DataError
from .pipeline import ChunkEncoder, num_proc_for, write_tokenized
from .sources import Source, open_source
from .tokenize import ENCODER_VERSION, Encoder

__all__ = ["SFTData", "build_datasets", "cache_dir"]

logger = logging.getLogger(__name__)

READER_VERSION = 2
"""Bump when what the readers accept or skip changes (2: streaming reader; empty answers mid-dialogue skipped)."""


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
    encoder = Encoder(tokenizer, template, max_length, spec.thinking)
    skipped: Counter = Counter()
    started = time.perf_counter()
    if spec.sources:
        spec = dataclasses.replace(spec, train=str(_mixed(spec.sources, seed)), format="messages", columns={})
    train, hit = _tokenized(spec, spec.train, encoder, skipped)
    evaluation = None
    if spec.eval:
        evaluation, _ = _tokenized(spec, spec.eval, encoder, skipped, prefix="eval: ")
    elif spec.eval_split:
        parts = train.train_test_split(test_size=spec.eval_split, seed=seed)
        train, evaluation = parts["train"], parts["test"]
    return SFTData(train, evaluation, skipped, time.perf_counter() - started, hit)


def _tokenized(spec: DataSpec, location: str, encoder: Encoder, skipped: Counter, prefix: str = ""):
    source = open_source(location, split=spec.split, subset=spec.subset, revision=spec.revision)
    converter = RecordConverter(spec.format, spec.prompt_column, spec.response_column, spec.text_column,
                                spec.system, spec.columns, read_tools(spec.tools))
    key = _cache_key(spec, source, encoder, converter.tools)
    cache_file, info_file = cache_dir("data") / f"{key}.arrow", cache_dir("data") / f"{key}.json"
    hit = cache_file.exists() and info_file.exists()
    if not hit:
        num_proc = num_proc_for(spec.num_proc)
        started = time.perf_counter()
        encode = ChunkEncoder(source.name, converter, encoder)
        rows, unsupervised, read_skipped = write_tokenized(source, encode, cache_file, num_proc)
        info_file.write_text(json.dumps({"rows": rows, "skipped": read_skipped, "unit": source.unit,
                                         "unsupervised": unsupervised}))
        logger.info("Tokenized %s: %d examples in %.1f s (data.num_proc=%d)", source.name, rows,
                    time.perf_counter() - started, num_proc)
    info = json.loads(info_file.read_text())
    for reason, count in info["skipped"].items():
        skipped[prefix + reason] += count
    if not info["rows"]:
        raise DataError(f"{location}: no usable example ({info['skipped']}); check data.format={spec.format!r}.")
    tokenized = datasets.Dataset.from_file(str(cache_file))
    tokenized = _apply_overlong_policy(tokenized, spec.overlong, location, encoder.max_length, skipped, prefix,
                                       info["unit"])
    # Counted while writing: reading the column back through the memory map would fault in pages of every batch.
    empty = info.get("unsupervised") if spec.overlong == "truncate" else None
    empty = _count_zero(tokenized) if empty is None else empty
    if empty == len(tokenized):
        raise DataError(f"{location}: every example has all labels masked (no supervised token). The prompts fill "
                        f"model.max_length={encoder.max_length} or the answers are empty; raise max_length or "
                        "check data.format and data.template.")
    if empty:
        skipped[prefix + "no supervised token (prompt fills max_length)"] += empty
        tokenized = tokenized.filter(lambda n: n > 0, input_columns="num_supervised")
    return tokenized, hit


def _count_zero(tokenized: datasets.Dataset) -> int:
    """Examples with no supervised token, counted in Arrow (a Python loop over 1M rows takes seconds)."""
    return int(pc.sum(pc.equal(tokenized.with_format("arrow")["num_supervised"], 0)).as_py() or 0)


def _mixed(sources: tuple[str, ...], seed: int) -> Path:
    """The recipe's sources mixed into one ``messages`` file in the cache (rebuilt when any input changes)."""
    from .tools.mix import mix_files, parse_source

    parsed = [parse_source(s) for s in sources]
    digest = hashlib.sha256(json.dumps([list(sources), seed]).encode())
    for source in parsed:
        digest.update(Path(source.path).read_bytes())
    out = cache_dir("data") / f"mix-{digest.hexdigest()[:24]}.jsonl"
    if not out.exists():
        # Staged per process and renamed into place (atomic): two runs or ranks mixing at once never write into
        # one file, and whichever renames last leaves the same bytes.
        staging = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        try:
            rows, _ = mix_files(parsed, staging, fmt="messages", seed=seed)
            os.replace(staging, out)
        finally:
            staging.unlink(missing_ok=True)
        logger.info("Mixed %s into %s", ", ".join(f"{r.name}: {r.taken}" for r in rows), out)
    return out


def _apply_overlong_policy(tokenized, policy: str, path: str, max_length: int, skipped: Counter, prefix: str,
                           unit: str = "line"):
    """Examples that did not fit ``max_length`` are kept truncated, dropped, or an error (``data.overlong``)."""
    if policy == "truncate":
        return tokenized
    table = tokenized.with_format("arrow")[:]
    overlong_mask = pc.or_(pc.or_(table["truncated"], pc.greater(table["dropped_turns"], 0)),
                           pc.equal(table["num_supervised"], 0))
    overlong = pc.indices_nonzero(overlong_mask).to_pylist()
    if not overlong:
        return tokenized
    if policy == "error":
        numbers = ", ".join(str(table["line"][i].as_py()) for i in overlong[:10])
        raise DataError(f"{path}: {len(overlong)} examples exceed model.max_length={max_length} ({unit}s {numbers}"
                        f"{', ...' if len(overlong) > 10 else ''}); raise model.max_length or set "
                        "data.overlong=truncate or drop.")
    skipped[prefix + f"longer than max_length={max_length} (data.overlong=drop)"] += len(overlong)
    return tokenized.select(pc.indices_nonzero(pc.invert(overlong_mask)).to_numpy())


def read_tools(path: str) -> str | None:
    """``data.tools``: the file's list of tool schemas as JSON text, or None when the recipe names no file."""
    if not path:
        return None
    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"data.tools={path!r}: cannot read it ({err.strerror}).") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}); data.tools must "
                        "hold a list of tool schemas.") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise DataError(f"{path}: data.tools must hold a JSON list of tool schemas (objects).")
    return json.dumps(tools, ensure_ascii=False)


def _cache_key(spec: DataSpec, source: Source, encoder: Encoder, tools: str | None) -> str:
    """Everything the token ids depend on, and nothing they do not (``data.num_proc`` gives the same rows)."""
    options = {
        "source": source.fingerprint(), "reader": READER_VERSION,
        "format": spec.format, "columns": [spec.prompt_column, spec.response_column, spec.text_column],
        "mapping": sorted(dict(spec.columns).items()), "system": spec.system, "thinking": spec.thinking,
        "tools": tools,
        "template": encoder.template.to_dict(), "max_length": encoder.max_length, "version": ENCODER_VERSION,
        "tokenizer": _tokenizer_fingerprint(encoder.tokenizer),
    }
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:24]


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps([tokenizer.all_special_tokens, tokenizer.eos_token, getattr(tokenizer, "chat_template", None),
                        type(tokenizer).__name__], default=str)
    return hashlib.sha256((body + extra).encode()).hexdigest()
