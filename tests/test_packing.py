"""Token-budget batches (``data.batching=packed``): best-fit-decreasing bins within the budget, every example once
per epoch, and the optimiser step of the same examples in one padded batch."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest
from helpers import built_trainer
from safetensors.torch import load_file

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.recipe import RecipeError, check_settings_agree, token_budget
from finetune.train import train
from finetune.training import TokenBudgetBins, best_fit_decreasing


def test_best_fit_decreasing_puts_every_example_in_one_bin_within_the_budget():
    assert best_fit_decreasing([5, 4, 3, 3, 2, 2, 1], 10) == [[0, 1, 6], [2, 3, 4, 5]]  # 20 tokens: 2 bins of 10
    # Best fit, not first fit: the 1 goes where it leaves no room (beside 5 + 4), not into the 7's bin (room 3).
    assert best_fit_decreasing([5, 7, 4, 1], 10) == [[1], [0, 2, 3]]
    rng = random.Random(0)
    for _ in range(20):
        lengths = [rng.choice([rng.randint(8, 60), rng.randint(60, 500)]) for _ in range(rng.randint(1, 300))]
        budget = rng.choice([500, 512, 1000, 4096])
        bins = best_fit_decreasing(lengths, budget)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= budget for b in bins)
        # BFD uses at most 11/9 of the optimum + 6/9 bins; the optimum is at least total / budget.
        assert len(bins) <= 11 / 9 * math.ceil(sum(lengths) / budget) + 6 / 9
    with pytest.raises(ValueError, match="example 1 has 600 tokens"):
        best_fit_decreasing([10, 600], 512)


def _recipe(model, data, out, **data_kwargs):
    """One SGD step (lr 1, no clipping) over whatever the batches are, fp32 so the comparison is exact."""
    return Recipe(
        name="packed", model=ModelSpec(path=str(model), max_length=96, dtype="float32"),
        data=DataSpec(train=str(data), format="alpaca", template="chatml", **data_kwargs),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(out), max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                              lr_scheduler_type="constant", logging_steps=1, save_strategy="no"),
        eval=EvalSpec(samples=0))


def test_packed_batches_hold_every_example_once_within_the_token_budget(tiny_llama, alpaca_file, tmp_path):
    recipe = _recipe(tiny_llama, alpaca_file, tmp_path / "run", batching="packed", max_tokens_per_batch=128)
    trainer, data = built_trainer(recipe)
    assert isinstance(trainer.train_dataset, TokenBudgetBins) and trainer.args.per_device_train_batch_size == 1
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == len(trainer.train_dataset) < len(data.train)
    sizes = [b["input_ids"].numel() for b in batches]
    assert max(sizes) <= 128 and sum(sizes) == sum(data.train["num_tokens"])
    assert sum(len(lengths) for b in batches for lengths in b["packed_lengths"]) == len(data.train)
    assert sum(sizes) / (len(batches) * 128) > 0.85  # 32 examples of 33-46 tokens fill 128-token bins well
    # The default budget: the largest padded batch the same settings make.
    assert token_budget(_recipe(tiny_llama, alpaca_file, tmp_path, batching="packed")) == 8 * 96


@pytest.mark.bf16
@pytest.mark.parametrize("dtype, atol", [("float32", 1e-6), ("auto", 2e-3)])  # auto: bf16 where native
def test_packed_batches_accumulated_make_the_update_of_one_padded_batch(tiny_llama, alpaca_file, tmp_path,
                                                                        dtype, atol):
    """Bins of different sizes, accumulated over one optimiser step, weigh every supervised token as one padded
    batch of all the examples does (the loss is normalised by the step's token count, not per batch)."""
    packed = _recipe(tiny_llama, alpaca_file, tmp_path / "packed", batching="packed", max_tokens_per_batch=128)
    bins = len(built_trainer(packed)[0].train_dataset)
    packed = dataclasses.replace(
        packed, model=dataclasses.replace(packed.model, dtype=dtype),
        training=dataclasses.replace(packed.training, gradient_accumulation_steps=bins))
    padded = dataclasses.replace(
        packed, data=dataclasses.replace(packed.data, batching="padded", max_tokens_per_batch=None),
        training=dataclasses.replace(packed.training, gradient_accumulation_steps=1, per_device_train_batch_size=32,
                                     output_dir=str(tmp_path / "padded")))
    for recipe in (packed, padded):
        train(recipe)
    one, other = (load_file(tmp_path / name / "adapter_model.safetensors") for name in ("packed", "padded"))
    assert one.keys() == other.keys()
    moved = max(float(w.abs().max()) for k, w in other.items() if "lora_B" in k)  # B starts at 0: the update
    assert moved > 1e-3
    worst = max(float((one[k] - other[k]).abs().max()) for k in one)
    assert worst <= atol * max(1.0, moved), f"packed and padded updates differ by {worst:.2e}"


def test_a_token_budget_must_fit_the_longest_example_and_needs_packed_batches(tiny_llama, alpaca_file, tmp_path):
    with pytest.raises(RecipeError, match="below model.max_length=96"):
        check_settings_agree(_recipe(tiny_llama, alpaca_file, tmp_path, batching="packed", max_tokens_per_batch=64))
    with pytest.raises(RecipeError, match="data.batching is padding_free"):
        check_settings_agree(_recipe(tiny_llama, alpaca_file, tmp_path, batching="padding_free",
                                     max_tokens_per_batch=256))
    with pytest.raises(RecipeError, match="positive number of tokens"):
        DataSpec(train="x.jsonl", batching="packed", max_tokens_per_batch=0)
