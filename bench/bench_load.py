"""Load benchmark: read, validate and tokenise N Alpaca examples from JSONL or Parquet; report time, examples/s
and peak memory, cold (empty cache) and warm (cache hit), for each ``data.num_proc``.

    python bench/bench_load.py [--examples 100000] [--source jsonl|parquet] [--num-proc 1,2] [--out FILE]

The file is written from the bundled Unicode data with answers of varied length (a long tail of multi-sentence
answers), so the tokeniser sees realistic, non-repeating text. Each num_proc runs in a fresh process, so its peak
RSS (``ru_maxrss`` of that process, and separately of its largest worker) is its own; generated files and caches
are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def records(n: int):
    base = [json.loads(line) for line in (ROOT / "data/unicode_names/train.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    for i in range(n):
        record = dict(base[i % len(base)])
        sentences = rng.choice([1, 1, 1, 2, 3, 8, 20])
        record["output"] = " ".join(f"{record['output']} is character number {i} variant {j}."
                                    for j in range(sentences))
        yield record


def write_data(path: Path, n: int) -> None:
    """JSONL, or Parquet (row groups of 100k rows, written batch by batch) for a ``.parquet`` path."""
    if path.suffix != ".parquet":
        with open(path, "w", encoding="utf-8") as handle:
            for record in records(n):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer, batch = None, []
    for record in records(n):
        batch.append(record)
        if len(batch) == 100_000:
            table = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            batch = []
    if batch:
        table = pa.Table.from_pylist(batch)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def run_once(data: Path, num_proc: int) -> dict:
    """Cold then warm build in this process (called in a fresh process per num_proc)."""
    from finetune.data import build_datasets
    from finetune.models import embedded_model_path, get_family, load_tokenizer
    from finetune.recipe import DataSpec
    from finetune.templates import get_template

    tokenizer = load_tokenizer(embedded_model_path("smollm2-135m-instruct"), get_family("llama"))
    cache = tempfile.mkdtemp(dir=data.parent)
    os.environ["FINETUNE_CACHE"] = cache  # a cold tokenisation cache (the model cache stays where it is)
    spec = DataSpec(train=str(data), format="alpaca", template="chatml", num_proc=num_proc)
    out = {"num_proc": num_proc}
    for label in ("cold", "warm"):
        load, cpu = os.getloadavg()[0], _cpu_seconds()
        start = time.perf_counter()
        built = build_datasets(spec, tokenizer, get_template("chatml"), max_length=512)
        seconds = time.perf_counter() - start
        out[label] = {"seconds": round(seconds, 2), "examples_per_s": round(len(built.train) / seconds),
                      "cache_hit": built.cache_hit, "kept": len(built.train),
                      "cpu_seconds": round(_cpu_seconds() - cpu, 2),
                      "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    out["cache_mb"] = round(sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 2**20)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and its finished workers: on a shared machine, CPU seconds per example say more
    about the code than the wall time does (the 1-minute load average before/after each run is recorded too)."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--source", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--num-proc", default="1,2", help="comma-separated data.num_proc values")
    parser.add_argument("--out", default=None, help="default: bench-results/load-<source>-<examples>.json")
    parser.add_argument("--note", default="", help="a remark stored with the results (the machine's state)")
    parser.add_argument("--run", nargs=2, metavar=("FILE", "NUM_PROC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_once(Path(args.run[0]), int(args.run[1]))))
        return
    tmp = Path(tempfile.mkdtemp())
    try:
        data = tmp / f"big.{args.source}"
        write_data(data, args.examples)
        results = {"examples": args.examples, "source": args.source, "file_mb": round(data.stat().st_size / 2**20, 1),
                   "cores": len(os.sched_getaffinity(0)), "note": args.note, "runs": []}
        for num_proc in (int(n) for n in args.num_proc.split(",")):
            done = subprocess.run([sys.executable, __file__, "--run", str(data), str(num_proc)], check=True,
                                  capture_output=True, text=True)
            results["runs"].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["runs"][-1]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out or f"bench-results/load-{args.source}-{args.examples}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
