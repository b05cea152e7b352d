"""Training-speed benchmark: finetune against TRL and plain transformers, one command, one run.

    python bench/bench.py [--model tiny|smollm2] [--steps 30] [--skip 3] [--out bench-results/results.json]
                          [--configs trl_default,finetune_lora_padding_free,...]

Every configuration (``workloads.py``) trains in its own process (this script with ``--worker CONFIG``), one
after the other, on the same model, data, seed, LoRA, learning rate and batch size. This file times them and
reports. See bench/README.md for what each configuration is and how each number is computed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workloads import (  # noqa: E402 - the bench folder is on the path when this file runs
    BATCH,
    CONFIGS,
    DEFAULT,
    EXAMPLES,
    MAX_LENGTH,
    OURS,
    PEERS,
    build_ours,
    build_peer,
    tiny_model,
    write_data,
)

# ---------------------------------------------------------------- the machine


def matmul_peak(device: str) -> dict:
    """Measured matmul throughput of this machine (GFLOP/s): fp32 and, where it is native, bf16; 2048^2 on all CPU
    cores, 8192^2 on a GPU."""
    import torch

    from finetune.precision import native_bf16

    out = {}
    for dtype in (torch.float32, torch.bfloat16) if native_bf16(device) else (torch.float32,):
        n = 2048 if device == "cpu" else 8192
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(8):
            sync_device(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            sync_device(device)
            best = min(best, time.perf_counter() - start)
        out[str(dtype).replace("torch.", "")] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def sync_device(device: str) -> None:
    """Wait for the GPU's queued work, so a wall-clock reading covers it (nothing to wait for on CPU)."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ---------------------------------------------------------------- one configuration, in its own process

def run_worker(config: str, model_path: Path, data_path: Path, steps: int, skip: int) -> dict:
    import psutil
    import torch
    from transformers import TrainerCallback

    started = psutil.Process().create_time()  # wall clock at process start, so imports count too
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches: list[tuple[int, int]] = []  # (real tokens, computed tokens) of each collated batch, in step order
    times: list[float] = []  # wall clock at the end of each optimiser step
    cpu: list[float] = []  # this process's CPU seconds (all threads) at the same moments

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            times.append(time.time())  # times[0]; times[i] is then the end of step i
            cpu.append(sum(psutil.Process().cpu_times()[:2]))

        def on_step_end(self, args, state, control, **kwargs):
            sync_device(device)
            times.append(time.time())
            cpu.append(sum(psutil.Process().cpu_times()[:2]))

    def counting(collate):
        def wrapped(features):
            batch = collate(features)
            mask = batch.get("attention_mask")
            real = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            batches.append((real, batch["input_ids"].numel()))
            return batch
        return wrapped

    build = build_ours if config in OURS else build_peer
    trainer, info = build(config, model_path, data_path, steps)
    trainer.add_callback(StepTimer())
    trainer.data_collator = counting(trainer.data_collator)
    trainer.train()
    if "warm_cache" in info:  # ours: the same build_datasets again, now on the warm cache
        info["tokenize"]["warm"] = info.pop("warm_cache")()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    timed = slice(skip, steps)
    real = sum(r for r, _ in batches[timed])
    computed = sum(c for _, c in batches[timed])
    seconds = times[steps] - times[skip]  # from the end of the last untimed step
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {
        "config": config, "device": device, "optimizer_steps": trainer.state.global_step,
        "timed_steps": steps - skip, "timed_seconds": round(seconds, 3),
        "timed_cpu_seconds": round(cpu[steps] - cpu[skip], 3),
        # Every step, warm-up included: with --steps 32 every configuration trains on the same 256 examples.
        "all_steps_real_tokens_per_s": round(sum(r for r, _ in batches[:steps]) / (times[steps] - times[0]), 1),
        "step_seconds": [round(b - a, 3) for a, b in zip(times[skip:], times[skip + 1:])],
        "step_real_tokens": [r for r, _ in batches[timed]],
        "real_tokens_per_s": round(real / seconds, 1), "real_tokens": real, "computed_tokens": computed,
        "padding_efficiency": round(real / computed, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "time_to_first_step_s": round(times[1] - started, 2),
        "first_loss": losses[0], "final_loss": losses[-1], "mean_loss": sum(losses) / len(losses),
        "losses": losses, "trainable_parameters": trainable, "base_parameters": info.pop("base_parameters"),
        "optim": trainer.args.optim, "precision": "bf16" if trainer.args.bf16 else "fp32",
        "activation_checkpointing": bool(trainer.args.gradient_checkpointing or trainer.args.activation_checkpointing),
        **info,
    }
    if device == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


# ---------------------------------------------------------------- the run: workers, ratios, table, JSON

def summarise(results: dict, peak: dict, model: str) -> dict:
    """Ratios to the best peer of the same precision and to TRL's defaults, FLOP/s against the measured matmul peak
    of that precision, and the targets."""
    ok = {k: r for k, r in results.items() if "error" not in r}
    best = {}
    for precision in ("fp32", "bf16"):
        peers = [ok[p] for p in PEERS if p in ok and ok[p]["precision"] == precision]
        if peers:
            best[precision] = {"real_tokens_per_s": max(p["real_tokens_per_s"] for p in peers),
                               "peak_rss_mb": min(p["peak_rss_mb"] for p in peers),
                               "time_to_first_step_s": min(p["time_to_first_step_s"] for p in peers)}
    trl = ok.get("trl_default")
    for r in ok.values():
        r["ratio_to_best_peer"] = {k: round(r[k] / v, 3) for k, v in best.get(r["precision"], {}).items() if v}
        compared = ("real_tokens_per_s", "peak_rss_mb", "time_to_first_step_s")
        r["ratio_to_trl_default"] = {k: round(r[k] / trl[k], 3) for k in compared if trl}
        # LoRA and P-Tuning leave the base frozen: forward 2N + backward through activations 2N FLOPs per token;
        # full fine-tuning also takes the weights' gradients (2N more).
        per_token = 6 if config_method(r["config"]) == "full" else 4
        r["achieved_gflops"] = round(per_token * r["base_parameters"] * r["real_tokens_per_s"] / 1e9, 2)
        peak_gflops = peak.get("bfloat16" if r["precision"] == "bf16" else "float32")
        r["fraction_of_peak"] = round(r["achieved_gflops"] / peak_gflops, 4) if peak_gflops else None
    targets = {}
    if DEFAULT in ok:  # the targets are the default's (recipes that set nothing get it)
        r = ok[DEFAULT]
        best_ratio, trl_ratio = r["ratio_to_best_peer"], r["ratio_to_trl_default"]
        of_peak = "fraction_of_bf16_peak (>= 0.25)" if r["precision"] == "bf16" else "fraction_of_fp32_peak (>= 0.6)"
        targets[DEFAULT] = {
            f"tokens_per_s_vs_best_{r['precision']}_peer (>= 2.5)": best_ratio.get("real_tokens_per_s"),
            "tokens_per_s_vs_trl_default (>= 4)": trl_ratio.get("real_tokens_per_s"),
            "padding_efficiency (>= 0.95)": r["padding_efficiency"],
            f"peak_rss_vs_best_{r['precision']}_peer (<= 1)": best_ratio.get("peak_rss_mb"),
            of_peak: r["fraction_of_peak"]}
        fp32 = ok.get(f"{DEFAULT}_fp32")
        if fp32 and r["precision"] == "bf16":
            targets[DEFAULT]["bf16_tokens_per_s_vs_fp32 (>= 1.8)"] = round(
                r["real_tokens_per_s"] / fp32["real_tokens_per_s"], 3)
    # P-Tuning against LoRA on the same batching.
    reference = next(c for c, s in OURS.items()
                     if s.method == "lora" and s.batching == OURS["finetune_ptuning"].batching and not s.variant)
    if "finetune_ptuning" in ok and reference in ok:
        targets["finetune_ptuning"] = {f"time_per_token_vs_{reference} (<= 1.3)": round(
            ok[reference]["real_tokens_per_s"] / ok["finetune_ptuning"]["real_tokens_per_s"], 3)}
    return {"model": model, "matmul_peak_gflops": peak, "best_peer": best, "targets": targets, "results": results}


def config_method(config: str) -> str:
    """``lora``, ``ptuning`` or ``full`` for ours; peers all train LoRA."""
    return OURS[config].method if config in OURS else "lora"


def format_table(summary: dict) -> str:
    rows = [("config", "prec", "real tok/s", "x best", "x trl", "pad eff", "steps", "RSS MB", "x best",
             "1st step s", "x best", "tok ex/s cold/warm", "loss 1st/final", "GFLOP/s", "of peak")]
    failed = []
    for name, r in summary["results"].items():
        if "error" in r:
            failed.append(f"{name}  failed: {r['error'].strip().splitlines()[-1][:200]}")
            continue
        best, trl = r["ratio_to_best_peer"], r["ratio_to_trl_default"]
        tokenize = r.get("tokenize")
        rows.append((
            name, r["precision"], f"{r['real_tokens_per_s']:.0f}", _x(best, "real_tokens_per_s"),
            _x(trl, "real_tokens_per_s"),
            f"{r['padding_efficiency']:.3f}", str(r["optimizer_steps"]), str(r["peak_rss_mb"]),
            _x(best, "peak_rss_mb"), f"{r['time_to_first_step_s']:.1f}", _x(best, "time_to_first_step_s"),
            f"{tokenize['cold']['examples_per_s']:.0f}/{tokenize['warm']['examples_per_s']:.0f}" if tokenize else "-",
            f"{r['first_loss']:.4f}/{r['final_loss']:.4f}", f"{r['achieved_gflops']:.1f}",
            f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] is not None else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows] + failed
    lines.append(f"matmul peak (GFLOP/s): {summary['matmul_peak_gflops']}")
    for name, checks in summary["targets"].items():
        shown = checks.items() if isinstance(checks, dict) else [("", checks)]
        lines.append(f"targets {name}: " + ", ".join(f"{k} {v}" for k, v in shown))
    return "\n".join(lines)


def _x(ratios: dict, key: str) -> str:
    return f"{ratios[key]:.2f}x" if key in ratios else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="smollm2")
    parser.add_argument("--steps", type=int, default=32, help="optimiser steps per configuration (32 = one epoch)")
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the timing")
    parser.add_argument("--out", default="bench-results/results.json")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset, in run order")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every configuration this many times, alternating the order; report the fastest")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one configuration and write --result
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_worker(args.worker, Path(args.model_path), Path(args.data), args.steps, args.skip)
        Path(args.result).write_text(json.dumps(result, indent=2))
        return
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown or not 1 <= args.skip < args.steps:
        parser.error(f"unknown configs {sorted(unknown)} (known: {', '.join(CONFIGS)})" if unknown
                     else "--skip must be in [1, --steps)")

    import torch

    from finetune.models import embedded_model_path
    from finetune.precision import machine_kind

    smollm2 = embedded_model_path("smollm2-135m-instruct")  # converted once, cached
    model_path = smollm2 if args.model == "smollm2" else tiny_model(smollm2.parent / "bench-tiny-llama", smollm2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_peak(device)
    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    data = work / "train.jsonl"
    write_data(data)
    runs: dict[str, list[dict]] = {}
    try:
        for round_ in range(args.rounds):  # ABC CBA ...: slow drift of the machine's speed hits every config alike
            for config in configs if round_ % 2 == 0 else configs[::-1]:
                runs.setdefault(config, []).append(_run_config(config, work, model_path, data, args))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {config: _fastest(rounds) for config, rounds in runs.items()}
    # Measured again at the end and the higher kept: a peak taken while the machine was busy would flatter "of peak".
    peak = {k: max(v, matmul_peak(device)[k]) for k, v in peak.items()}
    summary = summarise(results, peak, args.model)
    summary.update(steps=args.steps, skip=args.skip, rounds=args.rounds, batch_size=BATCH, examples=EXAMPLES,
                   device=device, machine=machine_kind(device), torch_threads=torch.get_num_threads(),
                   data_lengths=_lengths(model_path))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"Written to {out}")


def _run_config(config: str, work: Path, model_path: Path, data: Path, args) -> dict:
    """One configuration in a fresh worker process, with a cold tokenisation cache of its own."""
    result_file = work / f"{config}.json"
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{config}-", dir=work))  # the model path is explicit: no other cache
    env = {**os.environ, "FINETUNE_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--model-path", str(model_path),
               "--data", str(data), "--steps", str(args.steps), "--skip", str(args.skip), "--result", str(result_file)]
    print(f"[bench] {config} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode or not result_file.exists():
        print(done.stderr[-4000:], file=sys.stderr)
        return {"config": config, "error": done.stderr[-4000:] or f"exit {done.returncode}"}
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result


def _fastest(rounds: list[dict]) -> dict:
    """The round with the most real tokens/s (timing noise only ever slows a run down), all rounds' rates kept."""
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        return rounds[-1]
    best = max(ok, key=lambda r: r["real_tokens_per_s"])
    return {**best, "rounds_real_tokens_per_s": [r["real_tokens_per_s"] for r in ok]}


def _lengths(model_path: Path) -> dict:
    """Token-length distribution of the benchmark data (prompt + answer, ChatML template)."""
    from finetune.data.readers import read_examples
    from finetune.data.tokenize import Encoder
    from finetune.models import get_family, load_tokenizer
    from finetune.templates import get_template

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        write_data(path)
        encoder = Encoder(load_tokenizer(model_path, get_family("llama")), get_template("chatml"), MAX_LENGTH)
        lengths = sorted(encoder({"messages": read_examples(str(path), "alpaca").conversations})["num_tokens"])
    pick = lambda q: lengths[min(len(lengths) - 1, int(q * len(lengths)))]  # noqa: E731
    return {"min": lengths[0], "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": lengths[-1],
            "mean": round(sum(lengths) / len(lengths), 1)}


if __name__ == "__main__":
    main()
