"""Prove the GPU path on one GPU in one command: ``make gpu-check`` (``python bench/gpu_check.py``).

Offline and within ~8 minutes on one GPU, it runs:

1. **methods**: every method (LoRA with the fused layer and with peft's, DoRA, QLoRA, P-Tuning v2 with and
   without projection and with activation checkpointing, full fine-tuning) for a few steps through
   ``finetune.train.train`` in the GPU default (bf16 weights, bf16 autocast) on tiny random Llama, OPT and GLM
   models with SmolLM2's tokenizer; the loss must be finite and fall, the trained parameters fp32.
2. **kernels** on the device, bf16 against fp32: the chunked LM-head loss, ``sdpa_packed`` against padded SDPA
   (loss and gradients), and which SDPA backend PyTorch takes for a packed example with and without a P-Tuning
   prefix.
3. **speed switches**: ``training.torch_compile`` (regional, dynamic shapes) and ``training.use_liger_kernel`` on
   LoRA against the eager run: losses, compile time (the first step), later steps' time, graph breaks.
4. **throughput**: a few-layer Llama with Llama-2-7B's layer shapes (hidden 4096, 32 heads, MLP 11008, vocab
   32000): real tokens/s and model FLOP utilisation of LoRA, QLoRA and full fine-tuning, against the bf16 matmul
   peak measured in the same run.

Everything is written to one JSON file (``--out``). A machine without internet but with torch, transformers, peft
and accelerate gets the rest from ``.whl/`` (``make gpu-wheels`` fills it where pip works; this script installs from
it into a temporary folder). ``--device cpu --smoke`` runs the same code on tiny shapes on the CPU: the fast test
suite runs it, so the script cannot rot.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import matmul_peak, sync_device  # noqa: E402 - bench/ is on the path when this file runs

WHEELS = ROOT / ".whl"
NEEDED = ("datasets", "matplotlib", "bitsandbytes")  # beyond torch, transformers, peft and accelerate
OPTIONAL = ("liger_kernel",)  # installed from the wheels when there, its row skipped (with the reason) when not
# Those three and what they need that such an image lacks, at the versions installed here.
WHEEL_PACKAGES = ("datasets", "dill", "multiprocess", "xxhash", "fsspec", "matplotlib", "contourpy", "cycler",
                  "fonttools", "kiwisolver", "pyparsing", "bitsandbytes",
                  # the OpenAI-compatible server's request model (finetune.serve)
                  "pydantic", "pydantic_core", "annotated_types", "typing_inspection",
                  # training.use_liger_kernel (pure Python over Triton, which CUDA builds of torch bring)
                  "liger_kernel")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")


def download_wheels(folder: Path) -> None:
    """``make gpu-wheels``: Python 3.12 x86-64 wheels of what a GPU image lacks, and SmolLM2's tokenizer files."""
    from importlib.metadata import PackageNotFoundError, version

    def pinned(name: str) -> str:
        try:
            return f"{name}=={version(name)}"
        except PackageNotFoundError:
            return name

    folder.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder),
                    *map(pinned, WHEEL_PACKAGES)], check=True)
    from transformers import AutoTokenizer

    from finetune.models import embedded_model_path

    AutoTokenizer.from_pretrained(embedded_model_path("smollm2-135m-instruct")).save_pretrained(
        folder / "smollm2-tokenizer")
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    print(f"{folder}: {size:.0f} MiB (bitsandbytes alone is ~41 MiB: delete its wheel where the transfer to the GPU "
          "machine is limited, and the check skips QLoRA with that reason)")


def install_wheels(folder: Path) -> list[str]:
    """Install what is missing from ``folder`` (no index, no network) into a temporary site folder."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    wheels = sorted(str(p) for p in folder.glob("*.whl")) if folder.is_dir() else []
    optional = [name for name in OPTIONAL if importlib.util.find_spec(name) is None]
    if not (missing or optional) or not wheels:
        return missing
    site = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *wheels], check=True)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


# ---------------------------------------------------------------- models and data built here, offline


def tokenizer_folder(explicit: str | None) -> Path:
    """SmolLM2's tokenizer: ``--tokenizer``, the copy ``make gpu-wheels`` saved, or the embedded model's."""
    if explicit:
        return Path(explicit)
    if (WHEELS / "smollm2-tokenizer" / "tokenizer.json").exists():
        return WHEELS / "smollm2-tokenizer"
    from finetune.models import embedded_model_path

    return embedded_model_path("smollm2-135m-instruct")  # needs the gguf package on first use


def tiny_models(root: Path, tokenizer) -> dict[str, Path]:
    """Random 2-layer Llama, OPT and GLM (sizes multiples of 32 for bitsandbytes) with SmolLM2's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, GlmConfig, LlamaConfig, OPTConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    configs = {
        "llama": LlamaConfig(**common, intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=True),
        "opt": OPTConfig(**common, ffn_dim=128, word_embed_proj_dim=64, pad_token_id=0),
        "glm": GlmConfig(**common, intermediate_size=128, num_key_value_heads=2, head_dim=16, pad_token_id=0),
    }
    folders = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        folders[name] = root / name
        AutoModelForCausalLM.from_config(config).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    return folders


def write_data(path: Path, n: int = 32) -> Path:
    lines = (ROOT / "data" / "unicode_names" / "train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- 1. every method in bf16


def method_cases():
    from finetune import FullSpec, LoraSpec, PTuningSpec
    from finetune.recipe import QuantSpec

    lora = LoraSpec(r=8, alpha=16, dropout=0.05)
    prefix = PTuningSpec(pre_seq_len=8, prefix_projection=True, prefix_hidden_size=64, prefix_dropout=0.1)
    llama = [("lora", lora, {}, {}), ("lora_peft_layer", dataclasses.replace(lora, fused=False), {}, {}),
             ("dora", dataclasses.replace(lora, use_dora=True), {}, {}),
             ("qlora", lora, {"quantization": QuantSpec(compute_dtype="bfloat16")}, {}),
             ("ptuning", prefix, {}, {}),
             ("ptuning_plain_checkpointed", dataclasses.replace(prefix, prefix_projection=False), {},
              {"activation_checkpointing": True}),
             ("full", FullSpec(), {}, {})]
    glm_lora = dataclasses.replace(lora, target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj",
                                                         "down_proj"))
    return ([("llama",) + case for case in llama]
            + [("opt", "lora", lora, {}, {}), ("opt", "ptuning", prefix, {}, {}), ("opt", "full", FullSpec(), {}, {}),
               ("glm", "lora", glm_lora, {"family": "llama"}, {}), ("glm", "full", FullSpec(), {"family": "llama"}, {}),
               ("glm", "ptuning", prefix, {"family": "llama"}, {})])


def check_methods(models: dict, data: Path, work: Path, steps: int) -> list[dict]:
    from safetensors.torch import load_file

    from finetune import DataSpec, EvalSpec, ModelSpec, Recipe, TrainingSpec
    from finetune.train import train

    results = []
    for family, name, method, model_extra, training_extra in method_cases():
        if "quantization" in model_extra and importlib.util.find_spec("bitsandbytes") is None:
            results.append({"family": family, "method": name, "skipped": "bitsandbytes is not installed"})
            continue
        out = work / f"{family}-{name}"
        recipe = Recipe(
            name=f"{family}_{name}", model=ModelSpec(path=str(models[family]), max_length=128, **model_extra),
            data=DataSpec(train=str(data), format="alpaca", template="chatml", eval_split=0.25),
            method=method, training=TrainingSpec(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                                                 learning_rate=1e-2, logging_steps=1, **training_extra),
            eval=EvalSpec(samples=0))
        started = time.perf_counter()
        try:
            result = train(recipe)
        except Exception as error:  # noqa: BLE001 - recorded in the JSON, the check goes on
            results.append({"family": family, "method": name, "ok": False, "error": traceback.format_exc()[-2000:],
                            "message": str(error)[:300]})
            continue
        logs = [json.loads(line) for line in (out / "logs.jsonl").read_text().splitlines()]
        losses = [entry["loss"] for entry in logs if "loss" in entry]
        saved = next(out / f for f in ("adapter_model.safetensors", "prefix_encoder.safetensors", "model.safetensors")
                     if (out / f).exists())
        dtypes = sorted({str(t.dtype) for t in load_file(saved).values()})
        falls = result.eval_loss_after < result.eval_loss_before
        results.append({
            "family": family, "method": name, "seconds": round(time.perf_counter() - started, 2), "losses": losses,
            "eval_loss_before": result.eval_loss_before, "eval_loss_after": result.eval_loss_after,
            "saved": saved.name, "saved_dtypes": dtypes,
            "ok": all(map(math.isfinite, losses)) and falls and dtypes == ["torch.float32"]})
    return results


def check_serving(runs: Path, device: str) -> dict:
    """``finetune.serve`` on the device: the LoRA run trained above loads onto it and answers an OpenAI request
    greedily as ``generate`` does; the streamed chunks (a generation thread feeding a streamer) add up to the same
    text, and a stop string cuts it. FastAPI is not needed for this: its routes only wrap these two calls."""
    if importlib.util.find_spec("pydantic") is None:
        return {"skipped": "pydantic is not installed (make gpu-wheels carries it)"}
    from finetune.evaluation import generate
    from finetune.serve import ChatRequest, RunPool, complete, events

    pool = RunPool.of_run(runs / "llama-lora", "gpu-run")
    messages = [{"role": "user", "content": "Hello"}]
    request = ChatRequest(model="gpu-run", messages=messages, max_tokens=12)
    whole = complete(pool, request)["choices"][0]["message"]["content"]
    served = pool.get("gpu-run")
    expected = generate(served.run.model, served.run.tokenizer, served.run.template, [messages], 12, progress=False)[0]
    meta = {"id": "check", "created": 0, "model": "gpu-run"}
    sent = events(served, request, served.prompt(request), served.settings(request), meta)
    chunks = [json.loads(e.removeprefix("data: ")) for e in sent if e.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    stop = whole[len(whole) // 2:len(whole) // 2 + 2]
    cut = complete(pool, ChatRequest(model="gpu-run", messages=messages, max_tokens=12, stop=[stop]))
    cut_text = cut["choices"][0]["message"]["content"]
    on = str(next(served.run.model.parameters()).device)
    return {"device": on, "answer": whole, "streamed": streamed, "stop": stop, "cut": cut_text,
            "ok": bool(whole) and whole == expected == streamed and on.startswith(device)
            and cut_text == whole[:whole.find(stop)].rstrip()}


def check_speed_switches(models: dict, data: Path, work: Path, device: str, steps: int) -> list[dict]:
    """``training.torch_compile`` and ``training.use_liger_kernel`` on LoRA (fused layer, padding-free batches,
    ``sdpa_packed``, the chunked loss) against the eager run of the same steps: losses, the time to the first step
    (compilation) and the mean time of the later steps; no graph break; Liger skipped off CUDA or uninstalled."""
    from torch._dynamo.utils import counters

    from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
    from finetune.train import train

    cases = {"eager": {}, "torch_compile": {"torch_compile": True}, "liger": {"use_liger_kernel": True}}
    rows, eager = [], None
    for name, extra in cases.items():
        if name == "liger" and (device != "cuda" or importlib.util.find_spec("liger_kernel") is None):
            rows.append({"switch": name, "skipped": "no CUDA device" if device != "cuda" else
                         "liger-kernel is not installed (make gpu-wheels carries it)"})
            continue
        counters.clear()
        recipe = Recipe(
            name=f"switch_{name}", model=ModelSpec(path=str(models["llama"]), max_length=128),
            data=DataSpec(train=str(data), format="alpaca", template="chatml"),
            method=LoraSpec(r=8, alpha=16, dropout=0.0),
            training=TrainingSpec(output_dir=str(work / name), max_steps=steps, per_device_train_batch_size=4,
                                  learning_rate=1e-2, logging_steps=1, save_strategy="no", extra=extra),
            eval=EvalSpec(samples=0))
        try:
            train(recipe)
        except Exception as error:  # noqa: BLE001 - recorded, the check goes on
            rows.append({"switch": name, "ok": False, "message": str(error)[:300],
                         "error": traceback.format_exc()[-2000:]})
            continue
        logged = [e for e in map(json.loads, (work / name / "logs.jsonl").read_text().splitlines()) if "loss" in e]
        losses, clock = [e["loss"] for e in logged], [e["train_runtime"] for e in logged]  # seconds since start
        row = {"switch": name, "losses": losses, "first_step_s": round(clock[0], 2),
               "later_step_s": round((clock[-1] - clock[0]) / max(len(clock) - 1, 1), 4),
               "graph_breaks": sum(counters["graph_break"].values())}
        eager = eager or row
        row["ok"] = (row["graph_breaks"] == 0 and len(losses) == len(eager["losses"])
                     and all(abs(a - b) <= 2e-2 * abs(b) for a, b in zip(losses, eager["losses"])))
        rows.append(row)
    return rows


# ---------------------------------------------------------------- 2. kernels on the device


def _relative(a, b) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max() / b.detach().float().abs().max())


def check_kernels(device: str, llama: Path, tokenizer) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.build import training_arguments
    from finetune.recipe import TrainingSpec
    from finetune.training.collators import PaddingCollator, PaddingFreeCollator
    from finetune.training.loss import chunked_linear_cross_entropy
    from finetune.training.trainers import SFTTrainer

    out = {}
    torch.manual_seed(0)
    hidden, weight = torch.randn(300, 64, device=device), torch.randn(2048, 64, device=device) * 0.1
    targets = torch.randint(0, 2048, (300,), device=device)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        h = hidden.clone().requires_grad_()
        head = torch.nn.Linear(64, 2048, bias=False, device=device, dtype=dtype)
        head.weight.data.copy_(weight)
        loss = chunked_linear_cross_entropy(h, head, targets)
        loss.backward()
        losses[dtype] = (loss.detach(), h.grad)
    (l32, g32), (l16, g16) = losses[torch.float32], losses[torch.bfloat16]
    out["chunked_loss_bf16_vs_fp32"] = {"loss_relative": _relative(l16, l32), "grad_relative": _relative(g16, g32)}

    texts = ("The capital of France is Paris.", "Hello there, how are you today?", "A b c d e f g")
    features = [{"input_ids": tokenizer(t)["input_ids"], "labels": tokenizer(t)["input_ids"]} for t in texts]
    batches = {"packed": PaddingFreeCollator()(features), "padded": PaddingCollator(tokenizer.pad_token_id)(features)}

    def step(dtype, batch, attention):
        model = AutoModelForCausalLM.from_pretrained(llama, dtype=dtype, attn_implementation=attention).to(device)
        trainer = SFTTrainer(model=model.train(), args=training_arguments(TrainingSpec(), tempfile.mkdtemp()))
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batches[batch].items()}
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fp32, bf16 = step(torch.float32, "packed", "sdpa_packed"), step(torch.bfloat16, "packed", "sdpa_packed")
    dense = step(torch.bfloat16, "padded", "sdpa")
    out["sdpa_packed_bf16"] = {
        "loss_relative_to_fp32": _relative(bf16[0], fp32[0]),
        "loss_relative_to_padded_sdpa": _relative(bf16[0], dense[0]),
        "worst_grad_relative_to_fp32": max(_relative(g, fp32[1][n]) for n, g in bf16[1].items())}
    out["sdpa_backend"] = sdpa_backends(device)
    return out


def sdpa_backends(device: str) -> dict:
    """The backend ``scaled_dot_product_attention`` dispatches to for one packed example in bf16: causal without a
    prefix, and with a P-Tuning prefix (a bottom-right causal boolean mask), as ``finetune/models/attention.py``
    calls it."""
    import torch

    choose = getattr(torch, "_fused_sdp_choice", None)
    if choose is None:
        return {"error": "torch._fused_sdp_choice is not available in this torch"}
    from torch.nn.attention import SDPBackend

    q = torch.randn(1, 32, 256, 128, device=device, dtype=torch.bfloat16)
    kv = torch.randn(1, 8, 256, 128, device=device, dtype=torch.bfloat16)
    prefix_kv = torch.randn(1, 8, 256 + 128, 128, device=device, dtype=torch.bfloat16)
    mask = torch.ones(256, 256 + 128, dtype=torch.bool, device=device).tril(128)
    cases = {"causal_no_prefix": (q, kv, kv, None, True), "prefix_mask": (q, prefix_kv, prefix_kv, mask, False)}
    result = {}
    for name, (query, key, value, attn_mask, causal) in cases.items():
        # GQA as sdpa_packed runs it: key/value heads repeated by enable_gqa
        key, value = key.repeat_interleave(4, 1), value.repeat_interleave(4, 1)
        result[name] = SDPBackend(choose(query, key, value, attn_mask, 0.0, causal)).name
    return result


# ---------------------------------------------------------------- 3. throughput on 7B-shaped layers


def check_throughput(device: str, work: Path, smoke: bool, peak: dict) -> list[dict]:
    """Tokens/s and MFU of LoRA, QLoRA and full fine-tuning on a few 7B-shaped layers (random weights), each
    trained through the Trainer as a run is (accelerate's autocast, our loss, AdamW), timed per optimiser step."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

    from finetune import FullSpec, LoraSpec
    from finetune.build import method_model, training_arguments
    from finetune.models import get_family
    from finetune.recipe import ModelSpec, QuantSpec, TrainingSpec
    from finetune.training.collators import PaddingFreeCollator
    from finetune.training.trainers import SFTTrainer

    shape = (dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                  num_hidden_layers=2) if smoke else
             dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                  vocab_size=32000, num_hidden_layers=4))
    folder = work / "llama7b-shaped"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**shape, max_position_embeddings=4096)).save_pretrained(folder)
    tokens, steps, skip = (64, 3, 1) if smoke else (4096, 10, 3)
    gen = torch.Generator().manual_seed(0)
    examples = [{"input_ids": ids, "labels": ids} for ids in
                (torch.randint(0, shape["vocab_size"], (tokens // 4,), generator=gen).tolist() for _ in range(4))]
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *args, **kwargs):
            sync_device(device)
            times.append(time.perf_counter())

    family = get_family("llama")
    cases = [("lora", LoraSpec(r=16, alpha=32, dropout=0.05), None), ("full", FullSpec(), None)]
    if importlib.util.find_spec("bitsandbytes") is not None:
        cases.insert(1, ("qlora", LoraSpec(r=16, alpha=32, dropout=0.05), QuantSpec(compute_dtype="bfloat16")))
    results = []
    for name, method, quantization in cases:
        spec = ModelSpec(path=str(folder), dtype="bfloat16", quantization=quantization)
        model = method_model(folder, family, spec, method)
        parameters = sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())
        args = training_arguments(TrainingSpec(max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-5,
                                               logging_steps=steps, report_to="none"),
                                  work / f"run-{name}", batching="padding_free", compute=torch.bfloat16)
        times.clear()
        trainer = SFTTrainer(model=model, args=args, train_dataset=examples * steps,
                             data_collator=PaddingFreeCollator(), callbacks=[StepTimer()])
        sync_device(device)
        times.append(time.perf_counter())
        trainer.train()
        seconds = (times[-1] - times[skip]) / (steps - skip)
        # Frozen base: forward 2N + backward through activations 2N FLOPs per token; full adds weight gradients 2N.
        achieved = (6 if name == "full" else 4) * parameters * tokens / seconds / 1e9
        results.append({
            "method": name, "layers": shape["num_hidden_layers"], "parameters": parameters, "tokens_per_step": tokens,
            "step_seconds": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
            "achieved_gflops": float(f"{achieved:.3g}"),  # 3 significant digits: the smoke shape is tiny
            "mfu_vs_measured_bf16_peak": round(achieved / peak["bfloat16"], 4) if "bfloat16" in peak else None,
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None})
        del model, trainer
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    return results


# ---------------------------------------------------------------- the run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and few steps (the test suite's mode)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default 8; smoke 3)")
    parser.add_argument("--tokenizer", help="a folder with SmolLM2's tokenizer (default: .whl/ or the embedded)")
    parser.add_argument("--wheels", default=str(WHEELS), help="wheels to install missing packages from, offline")
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "gpu-check.json"))
    parser.add_argument("--download-wheels", action="store_true", help="fill --wheels for an offline GPU machine")
    args = parser.parse_args(argv)
    if args.download_wheels:
        download_wheels(Path(args.wheels))
        return 0
    still_missing = install_wheels(Path(args.wheels))
    # Found before the run's own cache replaces the user's: the embedded model converts once into the user's cache
    # (~25 s on 2 cores), not again into each check's empty one.
    tokenizer_path = tokenizer_folder(args.tokenizer)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ["FINETUNE_CACHE"] = tempfile.mkdtemp(prefix="gpu-check-cache-")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the Trainer must not find a GPU either

    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --device cpu (--smoke) to exercise the script on the CPU")
    from finetune.models import get_family, load_tokenizer
    from finetune.precision import machine_kind, native_bf16

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tokenizer = load_tokenizer(tokenizer_path, get_family("llama"))
    models = tiny_models(work / "models", tokenizer)
    data = write_data(work / "train.jsonl")
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "smoke": args.smoke,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "native_bf16": native_bf16(args.device), "machine": machine_kind(args.device),
              "missing_packages": still_missing}
    report["matmul_peak_gflops"] = peak = matmul_peak(args.device)
    stages = {"methods": lambda: check_methods(models, data, work / "runs", args.steps or (3 if args.smoke else 8)),
              "serving": lambda: check_serving(work / "runs", args.device),
              "speed_switches": lambda: check_speed_switches(models, data, work / "switches", args.device,
                                                             args.steps or (4 if args.smoke else 12)),
              "kernels": lambda: check_kernels(args.device, models["llama"], tokenizer),
              "throughput": lambda: check_throughput(args.device, work, args.smoke, peak)}
    for name, stage in stages.items():
        stage_start = time.perf_counter()
        try:
            report[name] = stage()
        except Exception:  # noqa: BLE001 - one broken stage must not hide the others' results
            report[name] = {"error": traceback.format_exc()[-3000:]}
        report[f"{name}_seconds"] = round(time.perf_counter() - stage_start, 1)
        print(f"[gpu-check] {name}: {report[f'{name}_seconds']} s", file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    methods = report["methods"] if isinstance(report["methods"], list) else []
    switches = report["speed_switches"] if isinstance(report["speed_switches"], list) else []
    report["ok"] = (bool(methods) and all(m.get("ok", True) for m in methods + switches)
                    and report["serving"].get("ok", "skipped" in report["serving"]) is True
                    and not any(isinstance(report[s], dict) and "error" in report[s] for s in stages))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"Written to {out}")
    return 0 if report["ok"] else 1


def summary(report: dict) -> str:
    lines = [f"device {report['device']}, torch {report['torch']}, native bf16 {report['native_bf16']}, "
             f"matmul peak {report['matmul_peak_gflops']} GFLOP/s, {report['seconds']} s"]
    for m in report["methods"] if isinstance(report["methods"], list) else []:
        state = "skipped: " + m["skipped"] if "skipped" in m else ("ok" if m["ok"] else "FAILED " + m.get(
            "message", f"eval {m.get('eval_loss_before')} -> {m.get('eval_loss_after')}, {m.get('saved_dtypes')}"))
        lines.append(f"  {m['family']:<6} {m['method']:<28} {state}")
    lines.append(f"  serving: {json.dumps(report.get('serving'), default=str)[:300]}")
    for row in report["speed_switches"] if isinstance(report["speed_switches"], list) else []:
        state = f"skipped: {row['skipped']}" if "skipped" in row else (
            f"{'ok' if row['ok'] else 'FAILED'} first step {row.get('first_step_s')} s, later "
            f"{row.get('later_step_s')} s/step, graph breaks {row.get('graph_breaks')}")
        lines.append(f"  {row['switch']:<14} {state}")
    lines.append(f"  kernels: {json.dumps(report['kernels'], default=str)[:600]}")
    for t in report["throughput"] if isinstance(report["throughput"], list) else [report["throughput"]]:
        lines.append(f"  throughput: {json.dumps(t, default=str)[:300]}")
    lines.append("OK" if report["ok"] else "NOT OK")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
