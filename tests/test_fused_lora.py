"""The fused LoRA layer is peft's arithmetic: same loss and gradients, same saved adapter, peft's path off the
plain case."""
import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import layer as lora_layer
from transformers import AutoModelForCausalLM

from finetune.methods import apply_method, fused_lora
from finetune.methods.fused_lora import FusedLoraLinear, keep_mask
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
def test_fused_layer_gives_peft_loss_and_gradients(family, dropout, request, tokenizer, monkeypatch):
    """The arithmetic is peft's; with dropout, the fused layer is given ``nn.Dropout``'s masks (its own cheap masks
    are not bit-equal to them: their statistics are tested below)."""
    path = request.getfixturevalue(f"tiny_{family}")
    monkeypatch.setattr(fused_lora, "keep_mask",
                        lambda x, p: (torch.native_dropout(x, p, True)[1], 1 / (1 - p)))  # nn.Dropout's kernel
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


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_cheap_dropout_masks_keep_at_the_rate_asked_and_independently(p):
    """Four 16-bit fields of one random word make four mask elements: each position of the word, each element's
    neighbour and the next call's mask must be independent of it, and the kept fraction times the scale is 1."""
    torch.manual_seed(0)
    x = torch.empty(1024, 2048)
    keep, scale = keep_mask(x, p)
    assert keep.shape == x.shape and keep.dtype == torch.bool
    q = keep.double().mean().item()
    n = keep.numel()
    assert abs(q - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5  # 5 standard deviations of a binomial proportion
    assert abs(q * scale - 1) < 5 * (p * (1 - p) / n) ** 0.5 * scale
    dropped = ~keep.flatten()
    by_field = dropped.view(-1, 4).double().mean(0)  # the four fields of each word
    assert (by_field - p).abs().max() < 5 * (p * (1 - p) / (n / 4)) ** 0.5
    # Pairs: fields of one word (i, i+1), across words (i, i+4), and the same element in the next call's mask.
    following, _ = keep_mask(x, p)
    for a, b in ((dropped[:-1], dropped[1:]), (dropped[:-4], dropped[4:]), (dropped, ~following.flatten())):
        both = (a & b).double().mean().item()
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / a.numel()) ** 0.5, (p, both)
    assert not torch.equal(keep, following)
    torch.manual_seed(0)
    assert torch.equal(keep_mask(x, p)[0], keep)  # the seed decides the masks (set_seed, resumed checkpoints)


def test_fused_layer_with_its_own_dropout_matches_autograd_on_the_same_mask(tiny_llama, monkeypatch):
    """With the cheap masks, forward and every gradient equal plain autograd over the mask the layer drew, and the
    output averaged over many draws is the undropped output (the kept values are scaled right)."""
    layer = next(m for m in _lora(tiny_llama, "llama", fused=True, dropout=0.2).modules()
                 if isinstance(m, FusedLoraLinear))
    drawn = []
    monkeypatch.setattr(fused_lora, "keep_mask", lambda x, p: drawn.append(keep_mask(x, p)) or drawn[-1])
    torch.manual_seed(3)
    x = torch.randn(4, 8, layer.in_features, requires_grad=True)
    out = layer(x)
    out.backward(grad := torch.randn_like(out))
    (mask, scale), = drawn
    weight, a, b = layer.get_base_layer().weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x_ref = x.detach().clone().requires_grad_()
    ref = x_ref @ weight.T + layer.scaling["default"] * (x_ref * mask.view(x.shape) * scale) @ a.T @ b.T
    assert torch.allclose(out, ref, atol=1e-5)
    grads = torch.autograd.grad(ref, (x_ref, a, b), grad)
    assert torch.allclose(x.grad, grads[0], atol=1e-5)
    assert torch.allclose(a.grad, grads[1], atol=1e-5) and torch.allclose(b.grad, grads[2], atol=1e-5)
    with torch.no_grad():
        adapter = layer(x) - x @ weight.T
        expected = layer.scaling["default"] * x @ a.T @ b.T
        mean = sum(layer(x) - x @ weight.T for _ in range(2000)) / 2000
    assert (mean - expected).abs().mean() < 0.05 * expected.abs().mean() and not torch.allclose(adapter, expected)


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
