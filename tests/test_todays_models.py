"""Today's families (Qwen3, Qwen2.5, Llama 3.x, Gemma 2/3, Mistral, Phi-3): detected from ``config.model_type``,
trained in bf16 by every method, and their recipes run, save, reload with plain transformers + PEFT and answer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TODAY
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.data.tokenize import Encoder
from finetune.models import resolve_model
from finetune.recipe import QuantSpec
from finetune.recipe_file import load_recipe
from finetune.templates import chat_messages, template_from_dict
from finetune.train import train

ROOT = Path(__file__).resolve().parents[1]
FAMILY = {"qwen3": "qwen3", "qwen2": "qwen2", "llama3": "llama", "gemma3": "gemma", "gemma2": "gemma",
          "mistral": "mistral", "phi3": "phi3"}
TOOLS_DATA = ROOT / "data" / "tool_calls" / "train.jsonl"


@pytest.mark.parametrize("name", sorted(TODAY))
def test_each_family_is_detected_with_its_template_pad_and_lora_targets(name, todays_model):
    resolved = resolve_model(ModelSpec(path=str(todays_model(name))))
    assert resolved.family.name == FAMILY[name]
    # auto: the tokenizer's chat template; gemma2's tokenizer ships none, so the family's named template.
    assert resolved.template.name == ("gemma" if name == "gemma2" else "tokenizer")
    tokenizer = resolved.tokenizer
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(todays_model(name))
    leaves = {module_name.rsplit(".", 1)[-1] for module_name, _ in model.named_modules()}
    assert set(resolved.family.lora_targets) <= leaves, (resolved.family.lora_targets, leaves)


METHODS = {
    "lora": LoraSpec(r=4, alpha=8, dropout=0.0),
    "qlora": LoraSpec(r=4, alpha=8, dropout=0.0),
    "ptuning": PTuningSpec(pre_seq_len=4),
    "full": FullSpec(),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", sorted(TODAY))
def test_every_method_trains_every_family_in_bf16(name, method, todays_model, tmp_path):
    """Two optimiser steps in bf16 (bf16 weights and autocast, the GPU default) on the family's default path: the
    loss is finite and what trains moves."""
    quantization = QuantSpec(compute_dtype="bfloat16") if method == "qlora" else None
    recipe = Recipe(
        name=f"{name}_{method}",
        model=ModelSpec(path=str(todays_model(name)), max_length=384, dtype="bfloat16", quantization=quantization),
        data=DataSpec(train=str(ROOT / "data" / "unicode_names" / "train.jsonl"), format="alpaca"),
        method=METHODS[method],
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                              learning_rate=1e-2, logging_steps=1, bf16=True),
        eval=EvalSpec(samples=0))
    result = train(recipe)
    losses = [e["loss"] for e in map(json.loads, (result.output_dir / "logs.jsonl").read_text().splitlines())
              if "loss" in e]
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[1] != losses[0]


RECIPES = {"qwen3_lora": "qwen3", "qwen3_tools_lora": "qwen3", "llama3_qlora": "llama3", "gemma3_lora": "gemma3"}


@pytest.mark.parametrize("recipe_name", sorted(RECIPES))
def test_recipe_trains_saves_reloads_with_plain_peft_and_answers(recipe_name, todays_model, tmp_path):
    from peft import PeftModel

    path = todays_model(RECIPES[recipe_name])
    recipe = load_recipe(ROOT / "recipes" / f"{recipe_name}.py", [
        f"model.path={path}", f"training.output_dir={tmp_path / 'run'}", "training.max_steps=2",
        "training.eval_strategy=no", "training.gradient_accumulation_steps=1", "eval.samples=2",
        "eval.max_new_tokens=8"])
    result = train(recipe)
    run = result.output_dir
    assert json.loads((run / "template.json").read_text())["class"] == "TokenizerTemplate"

    # As a user reloads it: transformers + PEFT, the tokenizer saved beside the adapter, its own chat template.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), run).eval()
    prompt = json.loads((run / "samples.json").read_text())["samples"][0]["messages"]  # up to the last answer
    tools = json.loads(TOOLS_DATA.read_text().splitlines()[0])["tools"] if "tools" in recipe_name else None
    chat = chat_messages(prompt)
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                        **({"tools": tools} if tools else {}))
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # The prompt a user builds with apply_chat_template is the one training's template builds.
    template = template_from_dict(json.loads((run / "template.json").read_text()))
    assert ids["input_ids"][0].tolist() == Encoder(tokenizer, template, 10**6).encode_prompt(prompt, tools)
