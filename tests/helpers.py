"""Small helpers shared by tests (tests/ is on sys.path under pytest's default import mode)."""
import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
