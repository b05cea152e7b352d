"""Two trainings on one CPU: each run's speed beside another, against its speed alone.

    python bench/bench_sharing.py [--steps 12] [--out bench-results/sharing.json]

The demo recipe (SmolLM2-135M, LoRA) without evaluation, three ways, each run a ``python -m finetune.run`` process:
alone; two started together as finetune runs them (each takes ``cores // live runs`` threads,
``finetune/training/sharing.py``); and two together with that turned off (``FINETUNE_SHARE_CORES=0``: every run
takes every core, as torch does by default). Seconds per step come from each run's ``logs.jsonl`` (the Trainer's
``train_runtime``, so model loading is not counted); the contended baseline trains half the steps, as it is slow.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def start(out: Path, steps: int, env: dict) -> subprocess.Popen:
    overrides = [f"training.max_steps={steps}", "training.eval_strategy=no", "eval.samples=0", "eval.generate=false",
                 "training.report_to=none", "training.logging_steps=1", f"training.output_dir={out}"]
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, "-m", "finetune.run", "recipes/smollm2_lora.py", *overrides], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})


def seconds_per_step(out: Path) -> float:
    logs = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
    final = next(entry for entry in logs if "train_steps_per_second" in entry)
    return round(final["train_runtime"] / final["step"], 3)


def run(work: Path, name: str, count: int, steps: int, env: dict) -> list[float]:
    outs = [work / f"{name}-{i}" for i in range(count)]
    processes = [start(out, steps, env) for out in outs]
    for process, out in zip(processes, outs):
        if process.wait() != 0:
            raise SystemExit(f"{name}: a run failed; see {out.with_suffix('.log')}")
    return [seconds_per_step(out) for out in outs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "sharing.json"))
    args = parser.parse_args()
    from finetune.precision import machine_kind

    work = Path(tempfile.mkdtemp(prefix="bench-sharing-"))
    alone = run(work, "alone", 1, args.steps, {})[0]
    shared = run(work, "shared", 2, args.steps, {})
    unshared = run(work, "unshared", 2, max(2, args.steps // 2), {"FINETUNE_SHARE_CORES": "0"})
    report = {
        "machine": machine_kind(), "cores": len(os.sched_getaffinity(0)), "recipe": "recipes/smollm2_lora.py",
        "seconds_per_step": {"alone": alone, "two_runs_sharing_cores": shared, "two_runs_each_taking_every_core":
                             unshared},
        "slowdown_beside_another": {"sharing_cores": round(max(shared) / alone, 2),
                                    "each_taking_every_core": round(max(unshared) / alone, 2)},
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
