"""Safe defaults: pickle weights and remote code are refused unless the recipe opts in."""
import dataclasses

import pytest
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.train import train


@pytest.fixture()
def pickle_model(tiny_llama, tmp_path, tokenizer):
    import torch

    folder = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # transformers 5 only writes safetensors itself
    tokenizer.save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    return folder


def test_pickle_weights_are_refused_unless_allowed(pickle_model, alpaca_file, tmp_path):
    recipe = Recipe(name="t", model=ModelSpec(path=str(pickle_model), max_length=64),
                    data=DataSpec(train=str(alpaca_file), template="chatml"), method=LoraSpec(r=2),
                    training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=1), eval=EvalSpec(samples=0))
    with pytest.raises(ValueError, match=r"only \.bin \(pickle\) weights.*model.allow_pickle=true"):
        train(recipe)
    allowed = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, allow_pickle=True))
    assert train(allowed).output_dir.exists()


def test_remote_code_is_off_by_default():
    assert ModelSpec().trust_remote_code is False and ModelSpec().allow_pickle is False
