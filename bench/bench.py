"""Training-speed benchmark: finetune against TRL and plain transformers, one command, one run.

    python bench/bench.py [--model tiny|smollm2] [--steps 30] [--skip 3] [--out bench-results/results.json]
                          [--configs trl_default,finetune_lora_padding_free,...]

Every configuration trains in its own process (this script with ``--worker CONFIG``), one after the other, on the
same model, data (256 long-tailed Alpaca examples, tokenized once by our encoder with the ChatML template), seed,
LoRA (r 8, alpha 16, all linear layers, dropout 0 so losses are comparable), learning rate and batch size 8.
See bench/README.md for what each configuration is and how each number is computed.
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

PEERS = ("trl_default", "trl_padding_free", "hf_group_by_length", "hf_flattening")
OURS = {  # config -> (method, batching, model.attn_implementation)
    "finetune_lora_padded": ("lora", "padded", "auto"),
    "finetune_lora_padding_free": ("lora", "padding_free", "auto"),
    "finetune_lora_group_by_length": ("lora", "group_by_length", "auto"),
    "finetune_ptuning": ("ptuning", "padding_free", "auto"),
    # Ablation: our padding-free trainer on transformers' dense block-diagonal SDPA mask instead of sdpa_packed.
    "finetune_lora_padding_free_dense_sdpa": ("lora", "padding_free", "sdpa"),
}
CONFIGS = PEERS + tuple(OURS)
EXAMPLES, BATCH, LEARNING_RATE, MAX_LENGTH, SEED = 256, 8, 2e-4, 512, 0
# Answers of 1 sentence are most common, a few run to 24 sentences (~500 tokens): the long tail of real SFT data.
SENTENCES = ((1, 45), (2, 20), (3, 12), (4, 6), (6, 6), (8, 4), (12, 3), (16, 2), (24, 2))


# ---------------------------------------------------------------- inputs shared by every configuration

def write_data(path: Path, n: int = EXAMPLES, seed: int = SEED) -> None:
    """Alpaca records from the bundled Unicode names, with answers of long-tailed length."""
    base = [json.loads(line) for line in (ROOT / "data/unicode_names/train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    counts, weights = zip(*SENTENCES)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = dict(base[i % len(base)])
            extra = [rng.choice(base) for _ in range(rng.choices(counts, weights)[0] - 1)]
            record["output"] = " ".join([record["output"]] + [
                f"Unlike {record['input']}, the character {o['input']} is called {o['output'].lower()}."
                for o in extra])
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def tiny_model(folder: Path, tokenizer_path: Path) -> Path:
    """A random Llama (hidden 256, 4 layers, 8 heads / 4 kv heads) with SmolLM2's tokenizer, saved once."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(SEED)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    AutoModelForCausalLM.from_config(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def matmul_peak(device: str) -> dict:
    """Measured matmul throughput of this machine (GFLOP/s): fp32 2048^2 on all CPU cores, or fp32 and bf16 on GPU."""
    import torch

    out = {}
    for dtype in ((torch.float32,) if device == "cpu" else (torch.float32, torch.bfloat16)):
        n = 2048 if device == "cpu" else 8192
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(8):
            _sync(device)
            start = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, time.perf_counter() - start)
        out[str(dtype).replace("torch.", "")] = round(2 * n ** 3 / best / 1e9, 1)
    return out


def _sync(device: str) -> None:
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
            _sync(device)
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

    build = _build_ours if config in OURS else _build_peer
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
        "optim": trainer.args.optim,
        "activation_checkpointing": bool(trainer.args.gradient_checkpointing or trainer.args.activation_checkpointing),
        **info,
    }
    if device == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return result


def _build_ours(config: str, model_path: Path, data_path: Path, steps: int):
    """Our trainer built with the same functions ``finetune.train.train`` calls, in the same order."""
    from transformers import set_seed

    from finetune.data import LabelAudit, build_datasets
    from finetune.methods import apply_method
    from finetune.models import load_model, load_tokenizer, resolve_family
    from finetune.recipe import DataSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
    from finetune.templates import get_template
    from finetune.train import make_collator, training_arguments
    from finetune.trainers import trainer_class

    set_seed(SEED)
    method_name, batching, attention = OURS[config]
    method = LoraSpec(r=8, alpha=16, dropout=0.0) if method_name == "lora" else PTuningSpec(
        pre_seq_len=16, prefix_projection=False, prefix_dropout=0.0)
    output_dir = _output_dir(config)
    recipe = Recipe(
        name=config, model=ModelSpec(path=str(model_path), max_length=MAX_LENGTH, attn_implementation=attention),
        data=DataSpec(train=str(data_path), format="alpaca", template="chatml", batching=batching),
        method=method,
        training=TrainingSpec(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=BATCH,
                              learning_rate=LEARNING_RATE, lr_scheduler_type="linear", logging_steps=1, seed=SEED))
    family = resolve_family(recipe.model, model_path)
    tokenizer = load_tokenizer(model_path, family)
    template = get_template(recipe.data.template)

    def tokenize():
        built = build_datasets(recipe.data, tokenizer, template, MAX_LENGTH, SEED)
        return built, {"seconds": round(built.tokenize_seconds, 3), "cache_hit": built.cache_hit,
                       "examples_per_s": round(len(built.train) / built.tokenize_seconds, 1)}

    data, cold = tokenize()
    LabelAudit.of(data.train, tokenizer, data.skipped)  # train() always audits; it counts toward the first step
    model = load_model(model_path, family, recipe.model)
    base_parameters = sum(p.numel() for p in model.parameters())
    set_seed(SEED)  # the same adapter initialisation in every configuration
    model = apply_method(model, recipe.method, family)
    trainer = trainer_class(method_name)(
        model=model, args=training_arguments(recipe.training, output_dir, batching), train_dataset=data.train,
        data_collator=make_collator(batching, tokenizer), processing_class=tokenizer, template=template, recipe=recipe)
    return trainer, {"tokenize": {"cold": cold}, "warm_cache": lambda: tokenize()[1],
                     "base_parameters": base_parameters}


def _build_peer(config: str, model_path: Path, data_path: Path, steps: int):
    """TRL's SFTTrainer or a plain transformers Trainer on the same tokenized examples (input_ids and labels)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from finetune.data import build_datasets
    from finetune.methods.lora import lora_config
    from finetune.models import load_tokenizer, resolve_dtype, resolve_family
    from finetune.recipe import DataSpec, LoraSpec, ModelSpec
    from finetune.templates import get_template

    set_seed(SEED)
    family = resolve_family(ModelSpec(path=str(model_path)), model_path)
    tokenizer = load_tokenizer(model_path, family)  # our pad token (distinct from EOS); TRL would use it too
    spec = DataSpec(train=str(data_path), format="alpaca", template="chatml")
    data = build_datasets(spec, tokenizer, get_template("chatml"), MAX_LENGTH, SEED).train
    # TRL keeps a "labels" column as it is; a "completion_mask" column would be ignored for pre-tokenized data
    # unless completion_only_loss=True (its default None means True only for raw prompt/completion text).
    data = data.select_columns(["input_ids", "labels"])
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype("auto"))
    base_parameters = sum(p.numel() for p in model.parameters())
    lora = lora_config(LoraSpec(r=8, alpha=16, dropout=0.0), family)
    cuda = torch.cuda.is_available()
    common = dict(output_dir=str(_output_dir(config)), max_steps=steps,
                  per_device_train_batch_size=BATCH, learning_rate=LEARNING_RATE, logging_steps=1, seed=SEED,
                  report_to="none", save_strategy="no", disable_tqdm=True)
    if config.startswith("trl_"):
        from trl import SFTConfig, SFTTrainer

        # TRL's defaults (gradient checkpointing on, bf16 on) except what CPU needs.
        extra = {"padding_free": True, "max_length": None} if config == "trl_padding_free" else {}
        args = SFTConfig(**common, **({} if cuda else {"use_cpu": True, "bf16": False}), **extra)
        set_seed(SEED)  # SFTTrainer wraps the model with peft_config first thing
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=lora)
        return trainer, {"base_parameters": base_parameters}

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainingArguments

    sampling = {"train_sampling_strategy": "group_by_length"} if config == "hf_group_by_length" else {}
    args = TrainingArguments(**common, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), **sampling)
    collator = DataCollatorWithFlattening() if config == "hf_flattening" else DataCollatorForSeq2Seq(tokenizer)
    set_seed(SEED)
    trainer = Trainer(model=get_peft_model(model, lora), args=args, train_dataset=data, data_collator=collator,
                      processing_class=tokenizer)
    return trainer, {"base_parameters": base_parameters}


def _output_dir(config: str) -> Path:
    """A run folder inside the worker's own cache folder, which the main run deletes at the end."""
    folder = Path(os.environ.get("FINETUNE_CACHE") or tempfile.mkdtemp()) / f"run-{config}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ---------------------------------------------------------------- the run: workers, ratios, table, JSON

def summarise(results: dict, peak: dict, model: str) -> dict:
    """Ratios to the best peer and to TRL's defaults, FLOP/s against the measured peak, and the targets."""
    ok = {k: r for k, r in results.items() if "error" not in r}
    peers = [ok[p] for p in PEERS if p in ok]
    best = {"real_tokens_per_s": max((p["real_tokens_per_s"] for p in peers), default=None),
            "peak_rss_mb": min((p["peak_rss_mb"] for p in peers), default=None),
            "time_to_first_step_s": min((p["time_to_first_step_s"] for p in peers), default=None)}
    trl = ok.get("trl_default")
    peak_gflops = peak.get("bfloat16") if ok and next(iter(ok.values()))["device"] == "cuda" else peak.get("float32")
    for r in ok.values():
        r["ratio_to_best_peer"] = {k: round(r[k] / v, 3) for k, v in best.items() if v}
        r["ratio_to_trl_default"] = {k: round(r[k] / trl[k], 3) for k in best if trl}
        # LoRA and P-Tuning leave the base frozen: forward 2N + backward through activations 2N FLOPs per token.
        r["achieved_gflops"] = round(4 * r["base_parameters"] * r["real_tokens_per_s"] / 1e9, 2)
        r["fraction_of_peak"] = round(r["achieved_gflops"] / peak_gflops, 4) if peak_gflops else None
    targets = {}
    for r in (ok[c] for c in OURS if c in ok and OURS[c][0] == "lora" and OURS[c][2] == "auto"):
        best_ratio, trl_ratio = r["ratio_to_best_peer"], r["ratio_to_trl_default"]
        targets[r["config"]] = {
            "tokens_per_s_vs_best_peer (>= 1.2)": best_ratio.get("real_tokens_per_s"),
            "tokens_per_s_vs_trl_default (>= 4)": trl_ratio.get("real_tokens_per_s"),
            "padding_efficiency (>= 0.95)": r["padding_efficiency"],
            "peak_rss_vs_best_peer (<= 1)": best_ratio.get("peak_rss_mb")}
    reference = "finetune_lora_" + OURS["finetune_ptuning"][1]
    if "finetune_ptuning" in ok and reference in ok:
        targets["finetune_ptuning"] = {f"time_per_token_vs_{reference} (<= 1.3)": round(
            ok[reference]["real_tokens_per_s"] / ok["finetune_ptuning"]["real_tokens_per_s"], 3)}
    return {"model": model, "matmul_peak_gflops": peak, "best_peer": best, "targets": targets, "results": results}


def format_table(summary: dict) -> str:
    rows = [("config", "real tok/s", "x best", "x trl", "pad eff", "steps", "RSS MB", "x best", "1st step s",
             "x best", "tok ex/s cold/warm", "loss 1st/final", "GFLOP/s", "of peak")]
    failed = []
    for name, r in summary["results"].items():
        if "error" in r:
            failed.append(f"{name}  failed: {r['error'].strip().splitlines()[-1][:200]}")
            continue
        best, trl = r["ratio_to_best_peer"], r["ratio_to_trl_default"]
        tokenize = r.get("tokenize")
        rows.append((
            name, f"{r['real_tokens_per_s']:.0f}", _x(best, "real_tokens_per_s"), _x(trl, "real_tokens_per_s"),
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

    smollm2 = embedded_model_path("smollm2-135m-instruct")  # converted once, cached
    model_path = smollm2 if args.model == "smollm2" else tiny_model(smollm2.parent / "bench-tiny-llama", smollm2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_peak(device)
    work = Path(tempfile.mkdtemp(prefix="finetune-bench-"))
    data = work / "train.jsonl"
    write_data(data)
    results = {}
    try:
        for config in configs:
            result_file = work / f"{config}.json"
            # Each worker gets a cold tokenisation cache of its own; the model path is explicit, so no other cache.
            env = {**os.environ, "FINETUNE_CACHE": str(work / f"cache-{config}"), "TOKENIZERS_PARALLELISM": "false"}
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", config, "--model-path",
                       str(model_path), "--data", str(data), "--steps", str(args.steps), "--skip", str(args.skip),
                       "--result", str(result_file)]
            print(f"[bench] {config} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            if done.returncode or not result_file.exists():
                results[config] = {"config": config, "error": done.stderr[-4000:] or f"exit {done.returncode}"}
                print(done.stderr[-4000:], file=sys.stderr)
            else:
                results[config] = json.loads(result_file.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(results, peak, args.model)
    summary.update(steps=args.steps, skip=args.skip, batch_size=BATCH, examples=EXAMPLES, device=device,
                   torch_threads=torch.get_num_threads(), data_lengths=_lengths(model_path))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"Written to {out}")


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
