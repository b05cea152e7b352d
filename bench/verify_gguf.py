"""llama.cpp itself runs an exported run: same prompt ids, same greedy answers as the PyTorch model (make verify-gguf).

    python bench/verify_gguf.py                      # the newest runs/smollm2_lora-* (trained first when missing)
    python bench/verify_gguf.py --run runs/smollm2_lora-20261124-120000 --quants f16,q8_0

For each quantisation the run is exported with ``python -m finetune.export`` and loaded by llama.cpp (through
``llama-cpp-python``). Every held-out prompt is then
  1. rendered with the chat template stored in the GGUF file and tokenized by llama.cpp; the ids must equal the
     ids finetune trained on (its template + the Hugging Face tokenizer);
  2. answered greedily by llama.cpp from those ids, and by llama.cpp's own chat API (``create_chat_completion``,
     which applies the file's template itself); both are compared with the PyTorch run's greedy answers.
The counts are printed and written to ``OUT_DIR/verify_gguf.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder (default: the newest runs/smollm2_lora-*, trained when missing)")
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--out-dir", help="where the GGUF files go (default: RUN/gguf)")
    parser.add_argument("--data", help="prompts to answer (default: the recipe's data.eval, else data.train)")
    parser.add_argument("--limit", type=int, default=0, help="first N held-out prompts only (0: all)")
    args = parser.parse_args()
    run_dir = Path(args.run) if args.run else _demo_run()
    out_dir = Path(args.out_dir) if args.out_dir else run_dir / "gguf"
    prompts, reference, tokenizer = _pytorch_answers(run_dir, args.data, args.limit)
    from finetune.precision import machine_kind
    results = {"run": str(run_dir), "prompts": len(prompts), "machine": machine_kind("cpu"), "quants": {}}
    for quant in args.quants.split(","):
        path = out_dir / f"{run_dir.name}-{quant}.gguf"
        subprocess.run([sys.executable, "-m", "finetune.export", str(run_dir), str(path), "--quant", quant],
                       check=True)
        results["quants"][quant] = _llama_cpp_answers(path, prompts, reference, tokenizer)
    _print(results)
    (out_dir / "verify_gguf.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    ok = all(r["ids_equal"] == len(prompts) for r in results["quants"].values())
    return 0 if ok else 1


def _demo_run() -> Path:
    runs = sorted((ROOT / "runs").glob("smollm2_lora-*"), key=lambda p: p.stat().st_mtime)
    runs = [r for r in runs if (r / "adapter_model.safetensors").exists()]
    if not runs:
        print("No demo run in runs/: training it (make demo's recipe, ~5 min on 2 cores)")
        subprocess.run([sys.executable, "-m", "finetune.run", "recipes/smollm2_lora.py"], cwd=ROOT, check=True)
        return _demo_run()
    return runs[-1]


def _pytorch_answers(run_dir: Path, data: str | None, limit: int):
    """The held-out prompts (as finetune renders and tokenizes them) and the run's greedy answers."""
    from finetune.conversation import user_text
    from finetune.data import Encoder, read_examples
    from finetune.evaluation.generation import generate, prompt_messages
    from finetune.inference import load_run

    run = load_run(run_dir, dtype="float32")  # the reference: the trained weights unrounded (bf16 flips near-ties)
    recipe = run.recipe
    held_out = ROOT / (data or recipe.data.eval or recipe.data.train)
    conversations = read_examples(held_out, recipe.data.format, system=recipe.data.system).conversations
    conversations = conversations[:limit] if limit else conversations
    encoder = Encoder(run.tokenizer, run.template, max_length=10**9)
    prompts = []
    for conversation in conversations:
        messages, _ = prompt_messages(conversation)
        chat = [{"role": m["role"], "content": user_text(m)} for m in messages]  # what a chat user would send
        prompts.append({"messages": messages, "chat": chat, "ids": encoder.encode_prompt(messages)})
    started = time.perf_counter()
    answers = generate(run.model, run.tokenizer, run.template, [p["messages"] for p in prompts],
                       max_new_tokens=recipe.eval.max_new_tokens)
    print(f"PyTorch ({next(run.model.parameters()).dtype}): {len(answers)} answers in "
          f"{time.perf_counter() - started:.1f} s")
    reference = {"answers": answers, "max_new_tokens": recipe.eval.max_new_tokens,
                 "dtype": str(next(run.model.parameters()).dtype)}
    return prompts, reference, run.tokenizer


def _llama_cpp_answers(path: Path, prompts: list[dict], reference: dict, tokenizer) -> dict:
    """llama.cpp's ids and greedy answers; ``tokenizer`` only lends its Jinja renderer to the file's template."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    template = llm.metadata["tokenizer.chat_template"]
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
    greedy = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0,
              "max_tokens": reference["max_new_tokens"]}
    ids_equal, same, same_chat, rows = 0, 0, 0, []
    started = time.perf_counter()
    for prompt, expected in zip(prompts, reference["answers"]):
        text = tokenizer.apply_chat_template(prompt["chat"], chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        ids_equal += ids == prompt["ids"]
        llm.reset()
        answer = llm.create_completion(prompt=ids, **greedy)["choices"][0]["text"].strip()
        llm.reset()
        chat = llm.create_chat_completion(messages=prompt["chat"], **greedy)["choices"][0]["message"]["content"]
        same += answer == expected
        same_chat += chat.strip() == expected
        rows.append({"pytorch": expected, "llama_cpp": answer, "llama_cpp_chat": chat.strip(),
                     "ids_equal": ids == prompt["ids"]})
    return {"file": str(path), "bytes": path.stat().st_size, "ids_equal": ids_equal, "same_answer": same,
            "same_answer_chat_api": same_chat, "seconds": round(time.perf_counter() - started, 1),
            "pytorch_dtype": reference["dtype"], "rows": rows}


def _print(results: dict) -> None:
    n = results["prompts"]
    print(f"\n{results['run']}: {n} held-out prompts, greedy")
    print(f"{'type':6} {'MiB':>6} {'same ids':>9} {'same answer':>12} {'chat API':>9}")
    for quant, r in results["quants"].items():
        print(f"{quant:6} {r['bytes'] / 2**20:6.1f} {r['ids_equal']:>5}/{n:<3} {r['same_answer']:>8}/{n:<3} "
              f"{r['same_answer_chat_api']:>5}/{n:<3}")
        for row in r["rows"]:
            if row["llama_cpp"] != row["pytorch"]:
                print(f"  differs: pytorch {row['pytorch']!r} | llama.cpp {row['llama_cpp']!r}")


if __name__ == "__main__":
    sys.exit(main())
