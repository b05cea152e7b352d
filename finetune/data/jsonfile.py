"""JSON and JSONL files (also ``.gz``/``.zst``), read line by line so every error names its line.

Checks that ``json.loads`` leaves out: a key repeated in one object (JSON keeps the last one silently), nesting
too deep to parse (a raw RecursionError otherwise) and lone UTF-16 surrogates (``"\\ud83d"``, which pyarrow and
the tokenizer refuse later without a line number).
"""
from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import DataError

__all__ = ["check_object", "iter_records", "json_chunks", "open_binary", "parse_line"]

BOM = b"\xef\xbb\xbf"


MAX_LINE_BYTES = 16 << 20
"""The largest JSONL line read: a single 50 MB line took 10.7 GiB in a ``--dry-run`` (parsing, the conversation,
the tokenizer's offsets), and 16 MB of text is some 4 million tokens, beyond every context window."""


def open_binary(path: str | Path) -> BinaryIO:
    """``path`` opened for reading bytes, decompressed by suffix (``.gz``, ``.zst``).

    Raises:
        DataError: when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found; check the recipe's data.train / data.eval path.")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def json_chunks(path: str | Path, size: int) -> Iterator[tuple[str, list[int], list]]:
    """Cut a JSONL file into ``("line", line numbers, raw lines)`` of ``size`` non-blank lines, or a JSON array
    file into ``("record", indices, parsed records)``; parsing lines is left to :func:`parse_line`.

    Lines end at ``\\n`` only (``str.splitlines`` would also cut at U+2028, U+0085, ... inside a JSON string).
    A JSON array is parsed whole (it has no record boundaries to stream on): large sets belong in JSONL.
    """
    with open_binary(path) as handle:
        numbers: list[int] = []
        raws: list[bytes] = []
        for number, raw in _damage_named(path, enumerate(handle, start=1)):
            if number == 1:
                raw = raw.removeprefix(BOM)
                if raw.lstrip().startswith(b"["):
                    yield from _array_chunks(path, raw + handle.read(), size)
                    return
            if not raw.strip():
                continue
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{number}: the line is {len(raw) / 2**20:.0f} MB, more than the "
                                f"{MAX_LINE_BYTES >> 20} MB a record may take here (its tokens would be far beyond any "
                                "model.max_length, and tokenizing it takes many GB); split or remove it.")
            numbers.append(number)
            raws.append(raw)
            if len(raws) == size:
                yield "line", numbers, raws
                numbers, raws = [], []
        if raws:
            yield "line", numbers, raws


def _damage_named(path, lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """The lines of a compressed file, a cut-short or damaged one named with the last line read (gzip raises a bare
    ``EOFError``, zstandard its own error: neither says which file)."""
    number = 0
    try:
        for number, raw in lines:
            yield number, raw
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: the compressed file is cut short or damaged after line {number} "
                        f"({type(err).__name__}: {err or 'unexpected end of data'}); copy it again.") from None
    except Exception as err:  # zstandard.ZstdError, without importing zstandard for plain files
        if type(err).__module__.startswith("zstandard"):
            raise DataError(f"{path}: the compressed file is damaged after line {number} ({err}); copy it "
                            "again.") from None
        raise


def _array_chunks(path, data: bytes, size: int) -> Iterator[tuple[str, list[int], list]]:
    try:
        records = json.loads(_decode(path, data, 0), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON at column {err.colno} ({err.msg}); fix the file or "
                        "convert it to JSONL.") from None
    except (RecursionError, _DuplicateKey) as err:
        raise DataError(f"{path}: {_parse_problem(err)}") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON array of objects or one JSON object per line.")
    check_surrogates = b"\\ud" in data.lower()
    for start in range(0, len(records), size):
        part = records[start:start + size]
        if check_surrogates:
            for index, record in enumerate(part, start):
                _check_unicode(f"{path} record {index}", record)
        yield "record", list(range(start, start + len(part))), part


def parse_line(path: str | Path, number: int, raw: bytes) -> dict:
    """One JSONL line as a JSON object.

    Raises:
        DataError: naming ``path:number`` for bytes that are not UTF-8, invalid JSON, nesting too deep to parse,
            a key that appears twice in one object, a lone UTF-16 surrogate, or a value that is not an object.
    """
    where = f"{path}:{number}"
    # Without its line end: a string left open then reads as Python's "Unterminated string starting at: column
    # 41", not as a control character (the newline) at the end of the line.
    text = _decode(path, raw.rstrip(b"\r\n"), number - 1)
    try:
        if text.startswith("\ufeff"):  # json.loads' own check, which calling the decoder directly skips
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        record = _DECODER.decode(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON at column {err.colno} ({err.msg}); each line of a JSONL file must "
                        "be one JSON object.") from None
    except (RecursionError, _DuplicateKey) as err:
        raise DataError(f"{where}: {_parse_problem(err)}") from None
    if "\\ud" in text or "\\uD" in text:  # only a \u escape can make a lone surrogate; valid UTF-8 cannot
        _check_unicode(where, record)
    return check_object(where, record)


def iter_records(path: str | Path) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(where, number, record)`` from a JSONL file (number = line) or a JSON array file (number = index).

    Raises:
        DataError: for a missing or empty file, bytes that are not UTF-8, or a line that is not a JSON object.
    """
    empty = True
    for kind, numbers, items in json_chunks(path, 1024):
        for number, item in zip(numbers, items):
            empty = False
            if kind == "line":
                yield f"{path}:{number}", number, parse_line(path, number, item)
            else:
                yield f"{path} record {number}", number, check_object(f"{path} record {number}", item)
    if empty:
        raise DataError(f"{path}: the data file is empty.")


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list) -> dict:
    """JSON keeps the last of repeated keys silently; a repeated key is more often a broken export: refuse it."""
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return record


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
"""One decoder for every line: ``json.loads`` with a hook builds a new one per call (a tenth of parsing time)."""


def _parse_problem(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return "JSON nested too deeply to parse; a training record needs a few levels at most."
    return f"key {err.args[0]!r} appears twice in one object; remove the duplicate."


def _decode(path, data: bytes, newlines_before: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = newlines_before + data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes are not valid UTF-8 ({err.reason}); re-save the file as UTF-8.") \
            from None


def _check_unicode(where: str, record: Any) -> None:
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        bad = err.object[err.start:err.end].encode("unicode_escape").decode()
        raise DataError(f"{where}: text holds a lone UTF-16 surrogate ({bad}), which is not a character; fix the "
                        "text (often an emoji cut in half).") from None


def check_object(where: str, record: Any) -> dict:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}.")
    return record
