"""Where a training step's time goes: torch.profiler over a few steps of a recipe, ops by self CPU time.

    python bench/profile_step.py                                   # LoRA, P-Tuning v2, full: the smollm2 recipes
    python bench/profile_step.py --recipes recipes/smollm2_lora.py --steps 6 --out bench-results/profile.json
    python bench/profile_step.py --label after method.dropout=0.05 # overrides apply to every recipe

Each recipe is built with the functions ``finetune.train.train`` calls (resolved model, tokenised data, the
method's model in the precision policy, the run's ``TrainingArguments`` and trainer), trained for ``--warmup``
steps unprofiled, then ``--steps`` under the profiler, each in its own process (one recipe's allocator and threads
do not leak into the next). The JSON keeps, per recipe, the step time, the profiler's top ops by self CPU time
and the share of the profiled steps' wall time each takes; ``--markdown`` prints the table bench/README.md shows.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("recipes/smollm2_lora.py", "recipes/smollm2_ptuning.py", "recipes/smollm2_full.py")


def cpu_flags() -> str:
    """Which bf16 the CPU has: AMX, AVX512-BF16 or neither (emulated, AVX2)."""
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    return "amx_bf16" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "avx2 (no native bf16)"


def profile_recipe(recipe_path: str, overrides: list[str], warmup: int, steps: int, top: int,
                   by_shape: bool = False) -> dict:
    """Train ``warmup + steps`` steps of the recipe, profiling the last ``steps``; the top ops by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback, set_seed

    from finetune.build import build_trainer, method_model, run_arguments
    from finetune.data import build_datasets
    from finetune.methods import get_method
    from finetune.models import resolve_model
    from finetune.recipe import resolved_batching
    from finetune.recipe_file import load_recipe

    out = Path(tempfile.mkdtemp(prefix="profile-"))
    recipe = load_recipe(recipe_path, [*overrides, f"training.max_steps={warmup + steps}", "training.report_to=none",
                                       "training.eval_strategy=no", "training.save_strategy=no",
                                       "training.logging_steps=1", f"training.output_dir={out}", "eval.generate=false",
                                       "training.disable_tqdm=true"])
    set_seed(recipe.training.seed)
    resolved = resolve_model(recipe.model, recipe.data.template)
    batching = resolved_batching(recipe, resolved.attention)
    args = run_arguments(recipe, out, resolved.attention, batching)
    data = build_datasets(recipe.data, resolved.tokenizer, resolved.template, recipe.model.max_length,
                          recipe.training.seed)
    method = get_method(recipe.method.name)
    model = method_model(resolved.path, resolved.family, recipe.model, recipe.method, method=method,
                         config=resolved.config)

    class Profile(TrainerCallback):
        """Profile steps ``warmup+1 .. warmup+steps``; record every step's wall time."""

        def __init__(self):
            self.profiler, self.times, self.tokens, self.started = None, [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape)
                self.profiler.__enter__()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.started)
            if state.global_step == warmup + steps:
                self.profiler.__exit__(None, None, None)

    probe = Profile()
    trainer = build_trainer(recipe, resolved, model, data, args, [probe], method=method, batching=batching)
    trainer.train()
    profiled = probe.times[warmup:]
    wall = sum(profiled)
    events = probe.profiler.key_averages(group_by_input_shape=by_shape)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {
        "recipe": recipe_path, "overrides": overrides, "method": recipe.method.name, "batching": batching,
        "bf16": bool(args.bf16), "weights": str(next(model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "step_seconds": [round(t, 3) for t in probe.times],
        "profiled_step_seconds": round(wall / len(profiled), 3),
        "ops": [{"op": e.key, **({"shapes": str(e.input_shapes)} if by_shape else {}),
                 "calls_per_step": e.count // steps,
                 "self_cpu_ms_per_step": round(e.self_cpu_time_total / 1e3 / steps, 1),
                 "share_of_wall": round(e.self_cpu_time_total / 1e6 / wall, 3)} for e in rows],
    }


def markdown(results: list[dict], top: int = 12) -> str:
    """One table per recipe: op, calls and self CPU ms per step, share of the step's wall time."""
    parts = []
    for r in results:
        parts.append(f"**{r['method']}** ({Path(r['recipe']).name} {' '.join(r['overrides'])}; {r['batching']}, "
                     f"weights {r['weights']}, bf16 autocast {r['bf16']}): {r['profiled_step_seconds']} s/step "
                     f"profiled\n\n| op | calls/step | self CPU ms/step | share of step |\n|---|---:|---:|---:|")
        parts += [f"| `{o['op']}` | {o['calls_per_step']} | {o['self_cpu_ms_per_step']} | "
                  f"{100 * o['share_of_wall']:.1f} % |" for o in r["ops"][:top]]
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="section.key=value, applied to every recipe")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--label", default="now", help="what this profile is (stored in the JSON)")
    parser.add_argument("--out", default="bench-results/profile.json")
    parser.add_argument("--markdown", action="store_true", help="print the tables for bench/README.md")
    parser.add_argument("--by-shape", action="store_true", help="ops grouped by their input shapes too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(profile_recipe(args.worker, args.overrides, args.warmup, args.steps, args.top,
                                        args.by_shape)))
        return
    results = []
    for recipe in args.recipes.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", recipe, "--warmup", str(args.warmup),
                               "--steps", str(args.steps), "--top", str(args.top), *args.overrides,
                               *(["--by-shape"] if args.by_shape else [])],
                              cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"profiling {recipe} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{recipe}: {results[-1]['profiled_step_seconds']} s/step", flush=True)
    report = {"label": args.label, "cpu": cpu_flags(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"CPU: {report['cpu']}\n" + (markdown(results) if args.markdown else f"written to {args.out}"))


if __name__ == "__main__":
    main()
