"""Build the demo data set: character -> official Unicode name, from Python's Unicode Character Database.

Run from the repository root: ``python data/unicode_names/make.py``. Deterministic: the same Python
(unicodedata version) writes the same files.
"""
import json
import random
import unicodedata
from pathlib import Path

# Blocks whose names follow a learnable scheme (base letter + diacritic), so held-out characters can be named
# by a model that learned the scheme rather than memorised the training set.
BLOCKS = [
    (0x00C0, 0x00FF),  # Latin-1 Supplement letters
    (0x0100, 0x017F),  # Latin Extended-A
    (0x0180, 0x024F),  # Latin Extended-B
    (0x0391, 0x03C9),  # Greek letters
    (0x1E00, 0x1EFF),  # Latin Extended Additional
]
INSTRUCTION = "Give the official Unicode name of this character."


def main() -> None:
    chars = [chr(c) for lo, hi in BLOCKS for c in range(lo, hi + 1) if unicodedata.name(chr(c), "")]
    rng = random.Random(0)
    rng.shuffle(chars)
    chars = chars[:400]
    records = [{"instruction": INSTRUCTION, "input": c, "output": unicodedata.name(c)} for c in chars]
    out = Path(__file__).parent
    for name, part in (("train.jsonl", records[:360]), ("eval.jsonl", records[360:])):
        with open(out / name, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    # The same facts as plain sentences, for the text-format recipes (TRL's dataset_text_field style).
    with open(out / "text.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": f"{r['input']} is U+{ord(r['input']):04X}, {r['output']}."},
                                     ensure_ascii=False) + "\n" for r in records[:360])
    print(f"unicodedata {unicodedata.unidata_version}: {len(records)} records")


if __name__ == "__main__":
    main()
