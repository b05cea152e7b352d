"""Safe defaults: pickle weights and remote code are refused unless the recipe opts in."""
import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, TrainingSpec
from finetune.errors import UserError
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


class Payload:
    """Any object in a pickle: ``torch.load(weights_only=True)`` refuses it."""


def test_a_pickle_that_weights_only_loading_refuses_is_one_clear_error(pickle_model, alpaca_file, tmp_path):
    """#30: model.allow_pickle=true on such a file ended in a raw UnpicklingError (safe, but not one line)."""
    state = torch.load(pickle_model / "pytorch_model.bin")
    torch.save({**state, "extra": Payload()}, pickle_model / "pytorch_model.bin")
    recipe = Recipe(name="t", model=ModelSpec(path=str(pickle_model), max_length=64, allow_pickle=True),
                    data=DataSpec(train=str(alpaca_file), template="chatml"), method=LoraSpec(r=2),
                    training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=1), eval=EvalSpec(samples=0))
    with pytest.raises(UserError, match="pickle .* weights hold more than tensors, which weights-only loading"):
        train(recipe)


@pytest.mark.parametrize("trust", [None, True])
def test_remote_code_reaches_from_pretrained_only_when_the_recipe_allows_it(trust, tiny_llama, monkeypatch):
    """What transformers receives, for the model and the tokenizer: ``trust_remote_code=False`` unless the recipe
    sets ``model.trust_remote_code=true``; and only safetensors unless ``model.allow_pickle``."""
    from transformers import AutoTokenizer

    from finetune.models import get_family, load_model, load_tokenizer

    seen = {}

    def spy(name, original):
        def wrapped(*args, **kwargs):
            seen[name] = kwargs
            return original(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy("model", AutoModelForCausalLM.from_pretrained))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", spy("tokenizer", AutoTokenizer.from_pretrained))
    spec = ModelSpec(path=str(tiny_llama)) if trust is None else ModelSpec(path=str(tiny_llama), trust_remote_code=True)
    load_model(tiny_llama, get_family("llama"), spec)
    load_tokenizer(tiny_llama, get_family("llama"), spec.trust_remote_code)
    expected = trust is True
    assert seen["model"]["trust_remote_code"] is expected and seen["tokenizer"]["trust_remote_code"] is expected
    assert seen["model"]["use_safetensors"] is True
