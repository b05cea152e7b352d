"""Small helpers shared by tests (tests/ is on sys.path under pytest's default import mode)."""
import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def four_examples(path: Path) -> Path:
    """Four examples with different numbers of supervised tokens: one global batch of 4 however it is split across
    processes (the distributed and launcher tests compare N processes with one)."""
    return write_jsonl(path, [
        {"instruction": "Name it.", "input": c, "output": name} for c, name in
        [("þ", "LATIN SMALL LETTER THORN"), ("Ω", "GREEK CAPITAL LETTER OMEGA"), ("ß", "LATIN SMALL LETTER SHARP S"),
         ("ā", "LATIN SMALL LETTER A WITH MACRON AND A LONGER TAIL OF WORDS")]])
