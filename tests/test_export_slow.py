"""The embedded SmolLM2 demo run exported to GGUF and read back by transformers answers as the adapter does
(make test-slow). llama.cpp itself is checked by `make verify-gguf` (bench/verify_gguf.py)."""
import dataclasses

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune import EvalSpec
from finetune.conversation import user_text
from finetune.data import Encoder, read_examples
from finetune.evaluation.generation import generate, prompt_messages
from finetune.export import export_run
from finetune.inference import load_run
from finetune.models import load_model
from finetune.run import load_recipe

pytestmark = pytest.mark.slow


def test_exported_demo_run_answers_the_held_out_prompts_as_the_adapter(tmp_path):
    from finetune.train import train

    recipe = load_recipe("recipes/smollm2_lora.py", [
        f"training.output_dir={tmp_path / 'run'}", "training.max_steps=20", "training.eval_strategy=no"])
    run_dir = train(dataclasses.replace(recipe, eval=EvalSpec(samples=0))).output_dir
    report = export_run(run_dir, tmp_path / "demo.gguf", "f16")
    assert report["tensor_types"] == {"F16": 211, "F32": 61}  # 30 blocks x 7 matrices + embedding; 61 norms

    run = load_run(run_dir)
    base = load_model(run.base_path, run.family, recipe.model, dtype=torch.float32)
    run.model = PeftModel.from_pretrained(base, run_dir).eval()
    held_out = read_examples(recipe.data.eval, recipe.data.format, system=recipe.data.system).conversations[:8]
    prompts = [prompt_messages(c)[0] for c in held_out]
    # Both in float32 (the export merges in float32): what differs is the f16 rounding of the merged weights.
    gguf_model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="demo.gguf", dtype=torch.float32)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="demo.gguf")
    gguf_tokenizer.pad_token = run.tokenizer.pad_token

    trained, ours = Encoder(run.tokenizer, run.template, 10**9), Encoder(gguf_tokenizer, run.template, 10**9)
    for messages in prompts:  # the file's tokenizer and chat template give the ids the run trained on
        chat = [{"role": m["role"], "content": user_text(m)} for m in messages]
        assert ours.encode_prompt(messages) == trained.encode_prompt(messages)
        assert gguf_tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=False) == \
            trained.encode_prompt(messages)

    adapter = generate(run.model, run.tokenizer, run.template, prompts, max_new_tokens=24)
    exported = generate(gguf_model, gguf_tokenizer, run.template, prompts, max_new_tokens=24)
    same = sum(a == b for a, b in zip(adapter, exported))
    print(f"\nGGUF f16 read back by transformers: {same}/{len(prompts)} greedy answers equal the adapter's")
    assert same >= len(prompts) - 1, list(zip(adapter, exported))
