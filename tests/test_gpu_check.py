"""``make gpu-check`` in its CPU smoke mode: the script a GPU owner runs works end to end and reports sanely.

On CPU this proves the code path, not GPU numbers: every method trains in bf16 (this CPU's autocast), the kernel
parity numbers are within the tolerances tests/test_precision.py states, compiled LoRA trains at the eager losses
without graph breaks (Liger is skipped with its reason), and the throughput stage times LoRA,
QLoRA and full fine-tuning; a trained run answers through the OpenAI-compatible server's generation.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

# bf16-sensitive (the check trains every method in this CPU's bf16): make test-avx2 reruns them without native bf16.
# In the slow suite: the whole script in its own process, 21 trainings and a compilation (~70 s).
pytestmark = [pytest.mark.bf16, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--smoke",
                           "--wheels", str(tmp_path / "no-wheels"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["missing_packages"] == []
    methods = {(m["family"], m["method"]): m for m in report["methods"]}
    assert len(methods) == 13 and all(m["ok"] for m in methods.values())
    assert ("llama", "qlora") in methods and ("glm", "ptuning") in methods
    for m in methods.values():
        assert m["eval_loss_after"] < m["eval_loss_before"] and m["saved_dtypes"] == ["torch.float32"]
    serving = report["serving"]  # the OpenAI-compatible server's generation on the device
    assert serving["ok"] and serving["device"] == "cpu" and serving["answer"] == serving["streamed"] != ""
    switches = {row["switch"]: row for row in report["speed_switches"]}  # compiled LoRA against eager
    assert switches["torch_compile"]["ok"] and switches["torch_compile"]["graph_breaks"] == 0
    assert len(switches["torch_compile"]["losses"]) == len(switches["eager"]["losses"]) == 4
    assert switches["liger"]["skipped"] == "no CUDA device"
    kernels = report["kernels"]
    assert kernels["chunked_loss_bf16_vs_fp32"]["loss_relative"] < 1e-2
    assert kernels["sdpa_packed_bf16"]["loss_relative_to_fp32"] < 1e-2
    assert kernels["sdpa_packed_bf16"]["worst_grad_relative_to_fp32"] < 5e-2
    assert set(kernels["sdpa_backend"]) == {"causal_no_prefix", "prefix_mask"}
    throughput = {t["method"]: t for t in report["throughput"]}
    assert set(throughput) == {"lora", "qlora", "full"}
    assert all(t["tokens_per_s"] > 0 and t["achieved_gflops"] > 0 for t in throughput.values())
    assert "OK" in done.stdout.splitlines()[-2]
