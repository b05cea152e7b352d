"""The fused LoRA layer is peft's arithmetic: same loss and gradients, same saved adapter, peft's path off the
plain case."""
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import layer as lora_layer
from transformers import AutoModelForCausalLM

from finetune.methods import apply_method
from finetune.methods.fused_lora import FusedLoraLinear
from finetune.models import get_family
from finetune.recipe import LoraSpec


def _lora(path, family, fused, dropout=0.0, use_dora=False, dtype=torch.float32):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model = apply_method(model, LoraSpec(r=4, alpha=8, dropout=dropout, use_dora=use_dora, fused=fused),
                         get_family(family))
    torch.manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would leave half the arithmetic untested
            torch.nn.init.normal_(parameter, std=0.02)
    return model.train()


def _step(model, ids, seed=2):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family, dropout", [("llama", 0.0), ("llama", 0.1), ("opt", 0.0)])  # OPT: biased base
def test_fused_layer_gives_peft_loss_and_gradients(family, dropout, request, tokenizer):
    path = request.getfixturevalue(f"tiny_{family}")
    ids = torch.tensor([tokenizer("The capital of France is Paris. " * 3)["input_ids"]] * 2)
    peft_model, fused_model = (_lora(path, family, fused, dropout) for fused in (False, True))
    layers = [m for m in fused_model.modules() if isinstance(m, lora_layer.LoraLayer)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    assert not any(isinstance(m, FusedLoraLinear) for m in peft_model.modules())
    assert all(m._plain_adapter(ids.float()) == "default" for m in layers)
    (peft_loss, peft_grads), (fused_loss, fused_grads) = _step(peft_model, ids), _step(fused_model, ids)
    assert torch.allclose(peft_loss, fused_loss, atol=1e-6)
    assert peft_grads.keys() == fused_grads.keys()
    for name, grad in peft_grads.items():
        assert torch.allclose(grad, fused_grads[name], rtol=1e-4, atol=1e-7), name


def test_fused_adapter_saves_loads_and_merges_as_peft(tiny_llama, tokenizer, tmp_path):
    model = _lora(tiny_llama, "llama", fused=True).eval()
    ids = torch.tensor([tokenizer("Hello there, how are you?")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        model.save_pretrained(tmp_path / "adapter")
        base = AutoModelForCausalLM.from_pretrained(tiny_llama)
        loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()  # plain peft, no finetune code
        assert torch.allclose(loaded(input_ids=ids).logits, expected, atol=1e-5)
        merged = model.merge_and_unload()
        assert not any(isinstance(m, lora_layer.LoraLayer) for m in merged.modules())
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


@pytest.mark.bf16  # a bf16 base with fp32 adapters
def test_off_the_plain_path_peft_forward_runs(tiny_llama, tokenizer):
    """DoRA, merged weights, disabled adapters and a bf16 base with fp32 adapters take peft's own forward."""
    ids = torch.tensor([tokenizer("Hello there")["input_ids"]])
    x = torch.randn(1, 3, 256)
    dora = _lora(tiny_llama, "llama", fused=True, use_dora=True)
    layer = next(m for m in dora.modules() if isinstance(m, FusedLoraLinear))
    assert layer._plain_adapter(x) is None
    peft_dora = _lora(tiny_llama, "llama", fused=False, use_dora=True)
    assert torch.allclose(_step(dora, ids)[0], _step(peft_dora, ids)[0], atol=1e-6)

    bf16 = _lora(tiny_llama, "llama", fused=True, dtype=torch.bfloat16)  # peft keeps the adapters in fp32
    assert next(m for m in bf16.modules() if isinstance(m, FusedLoraLinear))._plain_adapter(x.bfloat16()) is None
    assert torch.isfinite(_step(bf16, ids)[0])

    plain = _lora(tiny_llama, "llama", fused=True)
    layer = next(m for m in plain.modules() if isinstance(m, FusedLoraLinear))
    with plain.disable_adapter():
        assert layer._plain_adapter(x) is None
        base_logits = plain(input_ids=ids).logits
    assert torch.allclose(base_logits, AutoModelForCausalLM.from_pretrained(tiny_llama)(input_ids=ids).logits,
                          atol=1e-5)
    layer.merge()
    assert layer._plain_adapter(x) is None
