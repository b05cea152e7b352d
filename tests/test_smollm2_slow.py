"""The real embedded SmolLM2-135M-Instruct: a short LoRA run learns, and plain PEFT reloads it (make test-slow)."""
import dataclasses

import pytest
import torch

from finetune import EvalSpec
from finetune.precision import resolve_dtype
from finetune.run import load_recipe
from finetune.templates import get_template

pytestmark = pytest.mark.slow


def test_embedded_model_answers_before_any_training(smollm2_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from finetune.evaluation.generation import generate

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    answer = generate(model, tokenizer, get_template("tokenizer"),
                      [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=16)
    assert "Paris" in answer[0]


@pytest.mark.bf16  # trains and reloads in the default precision (bf16 where native)
def test_short_lora_run_learns_and_reloads_with_plain_peft(smollm2_path, tokenizer, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from finetune.evaluation.generation import generate
    from finetune.train import train

    recipe = load_recipe("recipes/smollm2_lora.py", [
        f"training.output_dir={tmp_path / 'run'}", "training.max_steps=20", "training.logging_steps=5"])
    recipe = dataclasses.replace(recipe, eval=EvalSpec(samples=4, max_new_tokens=16))
    result = train(recipe)
    assert result.eval_loss_after < 0.8 * result.eval_loss_before

    # In the dtype the run trained in (bf16 where it is native): the answers are the trained model's to the token.
    base = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=resolve_dtype(recipe.model.dtype))
    model = PeftModel.from_pretrained(base, result.output_dir)
    tokenizer.pad_token = "<|endoftext|>"
    again = generate(model, tokenizer, get_template("chatml"), [s["messages"] for s in result.samples],
                     max_new_tokens=16)
    assert again == [s["after"] for s in result.samples]
