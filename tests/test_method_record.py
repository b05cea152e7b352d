"""A method is one record: a toy method defined and registered in this file alone trains, saves, reloads and
evaluates through the same commands as the built-in ones."""
from __future__ import annotations

import json
import typing
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, ModelSpec, Recipe, TrainingSpec
from finetune.evaluate import evaluate_run
from finetune.inference import load_run
from finetune.methods import Method, get_method, method_names, register_method
from finetune.recipe import recipe_from_dict, recipe_to_dict
from finetune.train import train


@dataclass(frozen=True)
class NormsSpec:
    """Train the normalisation weights only (a few thousand parameters): the toy method."""

    name: typing.ClassVar[str] = "norms_only"
    trains_base: typing.ClassVar[bool] = True  # they are base weights, so they load in fp32
    padding_free_attention: typing.ClassVar = None
    scale_lr: float = 1.0


def apply_norms(model, spec, family):
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("norm" in name)
    return model


NORMS = Method(spec=NormsSpec, apply=apply_norms, load=lambda model, run_dir: model, weights_in_run=True)
if "norms_only" not in method_names():
    register_method(NORMS)


@pytest.mark.bf16  # trains and reloads in the default precision (bf16 where native)
def test_a_method_registered_in_one_file_trains_saves_reloads_and_evaluates(tiny_llama, alpaca_file, tmp_path):
    recipe = Recipe(
        name="toy", model=ModelSpec(path=str(tiny_llama), max_length=96),
        data=DataSpec(train=str(alpaca_file), template="chatml", eval_split=0.25), method=NormsSpec(),
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                              learning_rate=5e-2, logging_steps=1),
        eval=EvalSpec(samples=2, max_new_tokens=4))
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe  # recipe.json reads back as the toy spec
    result = train(recipe)
    assert result.eval_loss_after < result.eval_loss_before

    run = result.output_dir
    base, saved = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(run)
    changed = {k for k, v in saved.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert changed and all("norm" in k for k in changed)
    assert json.loads((run / "recipe.json").read_text())["method"] == {"name": "norms_only", "scale_lr": 1.0}

    trained = result.model.state_dict()  # the model that trained, still in memory: fp32 master weights
    assert all(torch.equal(v, trained[k]) for k, v in saved.state_dict().items())
    reloaded = load_run(run)  # in the recipe's dtype (bf16 where native), as every run is loaded for inference
    assert reloaded.recipe.method == NormsSpec()
    for name, value in reloaded.model.state_dict().items():
        assert torch.equal(value, trained[name].to(value.dtype)), name
    report = evaluate_run(run, baseline=True, max_new_tokens=4)
    assert report["examples"] == 8 and "rouge-l" in report["scores"] and "baseline" in report


def test_registering_a_method_twice_or_reading_an_unknown_one_says_so():
    with pytest.raises(ValueError, match="already registered"):
        register_method(NORMS)
    with pytest.raises(ValueError, match="Unknown method 'nope'; known methods: .*lora"):
        get_method("nope")
