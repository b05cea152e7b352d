"""QLoRA (LoRA over an NF4 base, bitsandbytes' CPU path), DoRA, and RoPE scaling past the native window."""
import dataclasses

import pytest
import torch

from finetune import DataSpec, EvalSpec, LoraSpec, ModelSpec, Recipe, RecipeError, TrainingSpec, apply_overrides
from finetune.recipe import QuantSpec
from finetune.train import train

# bf16-sensitive (4-bit kernels and RoPE in the default precision, bf16 where native): make test-avx2 reruns
# them without native bf16.
pytestmark = pytest.mark.bf16


def recipe(model_path, train_file, tmp_path, **model):
    return Recipe(
        name="tiny", model=ModelSpec(path=str(model_path), **{"max_length": 96, **model}),
        data=DataSpec(train=str(train_file), format="alpaca", template="chatml", eval_split=0.25),
        method=LoraSpec(r=4, alpha=8, dropout=0.0),
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                              learning_rate=1e-2, logging_steps=1),
        eval=EvalSpec(samples=1, max_new_tokens=4))


def test_qlora_trains_adapters_over_a_4bit_nf4_base(tiny_llama, alpaca_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(recipe(tiny_llama, alpaca_file, tmp_path, quantization=QuantSpec(compute_dtype="float32")))
    assert result.eval_loss_after < result.eval_loss_before
    assert (result.output_dir / "adapter_model.safetensors").exists()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.output_dir)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in model.state_dict().items())


def test_4bit_layers_are_really_quantised(tiny_llama):
    import bitsandbytes as bnb

    from finetune.models import get_family, load_model

    spec = ModelSpec(path=str(tiny_llama), quantization=QuantSpec(compute_dtype="float32"))
    model = load_model(tiny_llama, get_family("llama"), spec)
    quantised = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantised) == 2 * 7 and quantised[0].weight.quant_state.quant_type == "nf4"


def test_float16_compute_with_a_4bit_base_is_refused_with_advice():
    with pytest.raises(RecipeError, match="float16 with a 4-bit base .* bfloat16"):
        QuantSpec(compute_dtype="float16")
    assert QuantSpec(compute_dtype="float16", allow_float16=True).compute_dtype == "float16"


def test_quantization_overrides_are_nested():
    base = Recipe(name="t", data=DataSpec(train="x.jsonl"))
    on = apply_overrides(base, ["model.quantization.quant_type=fp4"])
    assert on.model.quantization == QuantSpec(quant_type="fp4")
    assert apply_overrides(on, ["model.quantization=none"]).model.quantization is None
    with pytest.raises(RecipeError, match="did you mean model.quantization.quant_type"):
        apply_overrides(base, ["model.quantization.quant_typ=nf4"])


def test_dora_flag_reaches_peft(tiny_llama, alpaca_file, tmp_path):
    import json

    run = recipe(tiny_llama, alpaca_file, tmp_path)
    run = dataclasses.replace(run, method=LoraSpec(r=4, alpha=8, dropout=0.0, use_dora=True))
    result = train(run)
    assert json.loads((result.output_dir / "adapter_config.json").read_text())["use_dora"] is True


def test_max_length_past_the_native_window_needs_rope_scaling(tiny_llama, alpaca_file, tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's native window of 512 .* model.rope_scaling=linear"):
        train(recipe(tiny_llama, alpaca_file, tmp_path, max_length=1024))


@pytest.mark.parametrize("kind", ["linear", "dynamic"])
def test_rope_scaling_runs_past_the_native_window_and_is_saved(kind, tiny_llama, tmp_path):
    import json

    from helpers import write_jsonl
    from peft import PeftModel

    from finetune.inference import load_run
    from finetune.models import get_family, load_model

    long_text = " ".join(f"word{i}" for i in range(700))  # ~1,400 tokens: past the 512-token window
    data = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "Repeat.", "input": "", "output": long_text}] * 2)
    run = recipe(tiny_llama, data, tmp_path, max_length=2048, rope_scaling=kind, rope_factor=4.0)
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, eval_split=0.0),
                              training=dataclasses.replace(run.training, max_steps=1, per_device_train_batch_size=1),
                              eval=EvalSpec(samples=0))
    result = train(run)
    saved = json.loads((result.output_dir / "recipe.json").read_text())["model"]
    assert saved["rope_scaling"] == kind and saved["rope_factor"] == 4.0
    reloaded = load_run(result.output_dir).model  # scaling re-applied from the saved recipe.json alone
    assert reloaded.config.rope_parameters["rope_type"] == kind and reloaded.config.rope_parameters["factor"] == 4.0
    native = dataclasses.replace(run.model, rope_scaling=None, max_length=512)
    unscaled = load_model(tiny_llama, get_family("llama"), native)
    unscaled = PeftModel.from_pretrained(unscaled, result.output_dir).eval()
    ids = torch.randint(0, 1000, (1, 1500))
    with torch.no_grad():
        expected, actual = result.model.eval()(ids).logits, reloaded(ids).logits
        plain = unscaled(ids).logits
    assert reloaded.config.rope_parameters == result.model.config.rope_parameters
    if kind == "linear":  # dynamic NTK keeps per-length state in its rotary module; linear is a pure function
        assert torch.equal(actual, expected)  # the reloaded run is the model that trained past the window
    assert (actual - plain).abs().max() > 1e-3  # the scaling is in it (a random model barely uses positions)


@pytest.mark.parametrize("evaluated_first", [False, True])
def test_qlora_gradients_equal_lora_over_the_dequantised_base(evaluated_first, tiny_llama):
    """Also after an eval-mode forward without gradients (every run's before-training baseline does one): on CPUs
    with AVX512-BF16 bitsandbytes would then repack the weights for a kernel without autograd and drop the
    gradient through every 4-bit matmul, unless load_model stops it."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from finetune.methods import apply_method
    from finetune.models import get_family, load_model

    family, lora = get_family("llama"), LoraSpec(r=4, alpha=8, dropout=0.0, fused=False)
    spec = ModelSpec(path=str(tiny_llama), quantization=QuantSpec(compute_dtype="float32"))
    qlora = apply_method(load_model(tiny_llama, family, spec), lora, family)
    dequantised = AutoModelForCausalLM.from_pretrained(tiny_llama)
    for name, module in qlora.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
            target = name.replace("base_model.model.", "").replace(".base_layer", "")
            dequantised.get_submodule(target).weight.data = weight.float()
    lora_model = apply_method(dequantised, lora, family)
    torch.manual_seed(0)
    adapters = {n: torch.randn_like(p) * 0.05 for n, p in qlora.named_parameters() if p.requires_grad}
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    grads = []
    for model in (qlora, lora_model):
        model.load_state_dict(adapters, strict=False)
        if evaluated_first:
            with torch.no_grad():
                model.eval()(input_ids=ids)
        model.train()(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 28
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], rtol=1e-4, atol=1e-7), name
