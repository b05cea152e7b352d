"""The chunked LM-head loss equals the plain one in value and gradients, alone and inside SFTTrainer."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import finetune.training.loss
from finetune.methods import apply_method
from finetune.models import get_family
from finetune.recipe import LoraSpec, TrainingSpec
from finetune.train import training_arguments
from finetune.training.collators import PaddingCollator, PaddingFreeCollator
from finetune.training.loss import causal_lm_loss, chunked_linear_cross_entropy, fusable_causal_lm
from finetune.training.trainers import SFTTrainer


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_loss_equals_plain_loss_and_gradients(smoothing, bias, monkeypatch):
    # 3 positions per chunk: several chunks, a ragged one
    monkeypatch.setattr(finetune.training.loss, "CHUNK_ELEMENTS", 3 * 50)
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(2, 7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 7))
    targets[0, :3] = targets[1, 5:] = -100
    results = []
    for fn in (lambda: causal_lm_loss(head(hidden), targets, smoothing, 11),
               lambda: chunked_linear_cross_entropy(hidden, head, targets, smoothing, 11)):
        hidden.grad = None
        head.zero_grad()
        loss = fn()
        (3.0 * loss).backward()  # a scaled loss, as gradient accumulation and DDP scaling produce
        results.append([loss.detach(), hidden.grad.clone()] + [p.grad.clone() for p in head.parameters()])
    for plain, chunked in zip(*results):
        assert torch.allclose(plain, chunked, atol=1e-6)


def _grads_after_compute_loss(model, batch, fused: bool, smoothing=0.0):
    trainer = SFTTrainer(model=model, args=training_arguments(TrainingSpec(label_smoothing_factor=smoothing), "x"))
    if not fused:
        trainer._fusable_causal_lm = lambda model: None
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trainer_step_is_the_same_with_the_chunked_loss(method, tiny_llama, tokenizer):
    """LoRA (frozen tied head) and full fine-tuning (the tied head trains): same loss and gradients either way."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    if method == "lora":
        model = apply_method(model, LoraSpec(r=4, alpha=8, dropout=0.0), get_family("llama"))
    model.train()
    assert fusable_causal_lm(model) is not None
    ids = [tokenizer(text)["input_ids"] for text in ("The capital of France is Paris.", "Hello there", "A b c d e")]
    features = [{"input_ids": x, "labels": [-100] * 2 + x[2:]} for x in ids]
    for batch in (PaddingCollator(tokenizer.pad_token_id)(features), PaddingFreeCollator()(features)):
        plain, fused = (_grads_after_compute_loss(model, batch, f, smoothing=0.1) for f in (False, True))
        assert torch.allclose(plain[0], fused[0], atol=1e-6)
        assert plain[1].keys() == fused[1].keys() and plain[1]
        for name, grad in plain[1].items():
            assert torch.allclose(grad, fused[1][name], atol=1e-6), name
