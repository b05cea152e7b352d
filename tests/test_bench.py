"""Smoke test of the training benchmark (bench/bench.py): it runs end to end and writes sane JSON.

No timing is asserted: these machines are shared and the run is 4 steps long.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("finetune_lora_padding_free", "finetune_lora_padding_free_fp32", "hf_flattening", "hf_flattening_bf16")


def test_bench_data_is_long_tailed(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    path = tmp_path / "train.jsonl"
    bench.write_data(path)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    words = sorted(len(r["output"].split()) for r in records)
    assert len(records) == bench.EXAMPLES
    assert words[len(words) // 2] < 30 and words[-1] > 150  # most answers short, a tail of long ones


@pytest.mark.bf16  # the default precision follows the CPU; peers run in fp32 and bf16
@pytest.mark.slow  # four configurations, each in its own process (~80 s)
def test_bench_runs_and_writes_results(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--model", "tiny", "--steps", "4",
                           "--skip", "1", "--configs", ",".join(CONFIGS), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert set(summary["results"]) == set(CONFIGS)
    assert summary["matmul_peak_gflops"]["float32"] > 0
    from finetune.precision import native_bf16

    default = "bf16" if native_bf16() else "fp32"  # the default follows the hardware; peers are fp32 unless *_bf16
    assert [summary["results"][c]["precision"] for c in CONFIGS] == [default, "fp32", "fp32", "bf16"]
    assert summary["data_lengths"]["max"] > 4 * summary["data_lengths"]["p50"]
    for name, result in summary["results"].items():
        assert "error" not in result, result.get("error")
        assert result["optimizer_steps"] == 4 and result["timed_steps"] == 3
        assert result["real_tokens_per_s"] > 0 and result["timed_seconds"] > 0
        assert result["padding_efficiency"] == 1.0  # both configurations are padding-free
        assert result["real_tokens"] == sum(result["step_real_tokens"])
        assert 0 < result["time_to_first_step_s"] and 100 < result["peak_rss_mb"]
        assert len(result["losses"]) == 4 and all(math.isfinite(x) for x in result["losses"])
        assert result["achieved_gflops"] > 0 and result["ratio_to_best_peer"]["real_tokens_per_s"] > 0
    ours, ours_fp32, peer, peer_bf16 = (summary["results"][c] for c in CONFIGS)
    # Same model, data order, adapter initialisation and batches: the same first loss at the same precision (bf16
    # rounds differently in our kernels and peft's), and the same token counts.
    assert abs(ours_fp32["first_loss"] - peer["first_loss"]) < 1e-3
    assert abs(ours["first_loss"] - (peer_bf16 if default == "bf16" else peer)["first_loss"]) < 1e-2
    assert ours["real_tokens"] == peer["real_tokens"]
    assert ours["tokenize"]["cold"]["cache_hit"] is False and ours["tokenize"]["warm"]["cache_hit"] is True
    assert "tokenize" not in peer
    targets = summary["targets"]["finetune_lora_padding_free"]
    assert f"tokens_per_s_vs_best_{default}_peer (>= 2.5)" in targets
    assert targets["fraction_of_bf16_peak (>= 0.25)" if default == "bf16" else "fraction_of_fp32_peak (>= 0.6)"] > 0
    assert ("bf16_tokens_per_s_vs_fp32 (>= 1.8)" in targets) == (default == "bf16")
    assert all(c in done.stdout for c in CONFIGS)  # the printed table


def test_rounds_report_the_fastest_and_keep_every_rate():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench
    finally:
        sys.path.remove(str(ROOT / "bench"))
    rounds = [{"real_tokens_per_s": 100.0, "round": 1}, {"error": "killed"}, {"real_tokens_per_s": 130.0, "round": 3}]
    best = bench._fastest(rounds)
    assert best["round"] == 3 and best["rounds_real_tokens_per_s"] == [100.0, 130.0]
    assert "error" in bench._fastest([{"error": "killed"}])


def test_load_bench_runs_a_baseline_commit_beside_this_checkout(tmp_path):
    """bench_load with --baseline: the baseline's package is the one extracted from git (the child asserts it),
    each configuration gets a row with its median and ratio, and both read the same records."""
    out = tmp_path / "load.json"
    subprocess.run([sys.executable, str(ROOT / "bench/bench_load.py"), "--examples", "300", "--num-proc", "1",
                    "--baseline", "HEAD", "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=300)
    results = json.loads(out.read_text())
    assert [(run["code"], run["num_proc"]) for run in results["runs"]] == [("HEAD", 0), ("this checkout", 1)]
    assert all(run["cold"]["kept"] == 300 and not run["cold"]["cache_hit"] and run["warm"]["cache_hit"]
               for run in results["runs"])
    baseline, ours = results["summary"]
    assert baseline["ratio"] == 1.0 and ours["ratio"] == round(
        ours["median_examples_per_s"] / baseline["median_examples_per_s"], 2)
    assert 0 < ours["median_parent_cpu_us_per_example"] <= ours["median_cpu_us_per_example"]
