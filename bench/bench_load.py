"""Load benchmark: read, validate and tokenise N Alpaca examples from JSONL or Parquet; report time, examples/s
and peak memory, cold (empty cache) and warm (cache hit), for each ``data.num_proc``.

    python bench/bench_load.py [--examples 100000] [--source jsonl|parquet] [--num-proc 1,2] [--out FILE]
                               [--baseline REV] [--rounds N]

``--baseline REV`` also runs the pipeline of an earlier commit (extracted with ``git archive``, one process, its
own defaults) on the same records (as JSONL, for a baseline that predates Parquet), and ``--rounds N`` repeats
the whole sequence N times, alternating: the machine this runs on is shared and its speed drifts by 10-50 %
within minutes, so a ratio means something only between runs made side by side. The summary gives each
configuration's median and its ratio to the baseline's.

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
import statistics
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
    """Cold then warm build in this process (called in a fresh process per num_proc; 0: the code's default, for a
    baseline that predates ``data.num_proc``)."""
    from finetune.data import build_datasets
    from finetune.models import embedded_model_path, get_family, load_tokenizer
    from finetune.recipe import DataSpec
    from finetune.templates import get_template

    tokenizer = load_tokenizer(embedded_model_path("smollm2-135m-instruct"), get_family("llama"))
    cache = tempfile.mkdtemp(dir=data.parent)
    os.environ["FINETUNE_CACHE"] = cache  # a cold tokenisation cache (the model cache stays where it is)
    spec = DataSpec(train=str(data), format="alpaca", template="chatml", **({"num_proc": num_proc} if num_proc else {}))
    out = {"num_proc": num_proc}
    for label in ("cold", "warm"):
        load, cpu, own = os.getloadavg()[0], _cpu_seconds(), _cpu_seconds(workers=False)
        start = time.perf_counter()
        built = build_datasets(spec, tokenizer, get_template("chatml"), max_length=512)
        seconds = time.perf_counter() - start
        out[label] = {"seconds": round(seconds, 2), "examples_per_s": round(len(built.train) / seconds),
                      "cache_hit": built.cache_hit, "kept": len(built.train),
                      "cpu_seconds": round(_cpu_seconds() - cpu, 2),
                      "parent_cpu_seconds": round(_cpu_seconds(workers=False) - own, 2),
                      "load_avg_1min": [round(load, 2), round(os.getloadavg()[0], 2)]}
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    out["cache_mb"] = round(sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file()) / 2**20)
    shutil.rmtree(cache, ignore_errors=True)
    return out


def _cpu_seconds(workers: bool = True) -> float:
    """CPU time of this process and (``workers``) its finished workers: on a shared machine, CPU seconds per example
    say more about the code than the wall time does (the 1-minute load average before/after each run is recorded
    too). The parent's own share is the serial part: it bounds what more workers can gain."""
    usage = [resource.getrusage(resource.RUSAGE_SELF)]
    if workers:
        usage.append(resource.getrusage(resource.RUSAGE_CHILDREN))
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--source", choices=("jsonl", "parquet"), default="jsonl")
    parser.add_argument("--num-proc", default="1,2", help="comma-separated data.num_proc values")
    parser.add_argument("--baseline", metavar="REV", help="also run this commit's pipeline (one process)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sequence, alternating (default 1)")
    parser.add_argument("--out", default=None, help="default: bench-results/load-<source>-<examples>.json")
    parser.add_argument("--note", default="", help="a remark stored with the results (the machine's state)")
    parser.add_argument("--run", nargs=2, metavar=("FILE", "NUM_PROC"), help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        if args.code:  # the baseline's package shadows this checkout's
            sys.path.insert(0, args.code)
            import finetune
            assert finetune.__file__.startswith(args.code), finetune.__file__
        print(json.dumps(run_once(Path(args.run[0]), int(args.run[1]))))
        return
    tmp = Path(tempfile.mkdtemp())
    try:
        configs = [(None, int(n)) for n in args.num_proc.split(",")]
        if args.baseline:
            configs.insert(0, (_extract(args.baseline, tmp / "baseline"), 0))
        data = tmp / f"big.{args.source}"
        write_data(data, args.examples)
        # The baseline predates Parquet: it reads the same records as JSONL.
        baseline_data = tmp / "big.jsonl"
        if args.baseline and not baseline_data.exists():
            write_data(baseline_data, args.examples)
        from finetune.precision import machine_kind
        results = {"examples": args.examples, "source": args.source, "file_mb": round(data.stat().st_size / 2**20, 1),
                   "cores": len(os.sched_getaffinity(0)), "machine": machine_kind("cpu"), "note": args.note,
                   "baseline": args.baseline, "runs": []}
        for round_ in range(args.rounds):
            for code, num_proc in configs:
                command = [sys.executable, __file__, "--run", str(baseline_data if code else data), str(num_proc)]
                done = subprocess.run(command + (["--code", str(code)] if code else []), check=True,
                                      capture_output=True, text=True)
                run = {"round": round_, "code": args.baseline if code else "this checkout",
                       **json.loads(done.stdout.strip().splitlines()[-1])}
                results["runs"].append(run)
                print(json.dumps(run), flush=True)
        results["summary"] = summary(results["runs"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.out or f"bench-results/load-{args.source}-{args.examples}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))


def _extract(rev: str, into: Path) -> Path:
    """The ``finetune`` package as it was at ``rev``, in ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "finetune"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def summary(runs: list[dict]) -> list[dict]:
    """Per configuration: the median cold examples/s and CPU µs per example over the rounds, and the ratio of that
    median to the baseline's (or, without one, to ``num_proc=1``'s)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["code"], run["num_proc"]), []).append(run)
    rows = []
    for (code, num_proc), group in groups.items():
        rates = [run["cold"]["examples_per_s"] for run in group]
        cpu = [1e6 * run["cold"]["cpu_seconds"] / run["cold"]["kept"] for run in group]
        parent = [1e6 * run["cold"].get("parent_cpu_seconds", 0) / run["cold"]["kept"] for run in group]
        rows.append({"code": code, "num_proc": num_proc or "default (1)", "rounds": len(group),
                     "examples_per_s": rates, "median_examples_per_s": round(statistics.median(rates)),
                     "median_cpu_us_per_example": round(statistics.median(cpu), 1),
                     "median_parent_cpu_us_per_example": round(statistics.median(parent), 1),
                     "median_warm_s": statistics.median(run["warm"]["seconds"] for run in group),
                     "peak_rss_mb": max(run["peak_rss_mb"] for run in group)})
    reference = next((row for row in rows if row["code"] != "this checkout"), None) or \
        next((row for row in rows if row["num_proc"] == 1), rows[0])
    for row in rows:
        row["ratio"] = round(row["median_examples_per_s"] / reference["median_examples_per_s"], 2)
    return rows


if __name__ == "__main__":
    main()
