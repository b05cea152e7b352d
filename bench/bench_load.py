"""Load benchmark: read, validate and tokenise a 100k-example Alpaca file; report time and peak memory.

    python bench/bench_load.py [--examples 100000] [--out bench-results/load.json]

The file is written from the bundled Unicode data with answers of varied length (a long tail of multi-sentence
answers), so the tokeniser sees realistic, non-repeating text. The cache is bypassed for the cold run and used
for the warm one.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_data(path: Path, n: int) -> None:
    base = [json.loads(line) for line in (ROOT / "data/unicode_names/train.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = dict(base[i % len(base)])
            sentences = rng.choice([1, 1, 1, 2, 3, 8, 20])
            record["output"] = " ".join(f"{record['output']} is character number {i} variant {j}."
                                        for j in range(sentences))
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--out", default="bench-results/load.json")
    args = parser.parse_args()
    from finetune.data import build_datasets
    from finetune.models import embedded_model_path, get_family, load_tokenizer
    from finetune.recipe import DataSpec
    from finetune.templates import get_template

    tokenizer = load_tokenizer(embedded_model_path("smollm2-135m-instruct"), get_family("llama"))
    tmp = Path(tempfile.mkdtemp())
    os.environ["FINETUNE_CACHE"] = str(tmp / "cache")  # a cold tokenisation cache (the model cache stays)
    data = tmp / "big.jsonl"
    write_data(data, args.examples)
    spec = DataSpec(train=str(data), format="alpaca", template="chatml")
    results = {"examples": args.examples, "file_mb": round(data.stat().st_size / 2**20, 1)}
    for label in ("cold", "warm"):
        start = time.perf_counter()
        built = build_datasets(spec, tokenizer, get_template("chatml"), max_length=512)
        seconds = time.perf_counter() - start
        results[label] = {"seconds": round(seconds, 2), "examples_per_s": round(args.examples / seconds),
                          "cache_hit": built.cache_hit, "kept": len(built.train)}
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
