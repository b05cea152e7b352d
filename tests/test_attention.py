"""sdpa_packed: per-example SDPA over packed rows equals attention on each example alone, for every family."""
import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GlmConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from finetune.errors import UsageError
from finetune.methods.ptuning import apply_ptuning
from finetune.models.attention import PACKED_SDPA, resolve_attention, segment_lengths
from finetune.recipe import PTuningSpec
from finetune.training.collators import PaddingCollator, PaddingFreeCollator
from finetune.training.loss import causal_lm_loss

CONFIGS = {  # hidden sizes multiples of 32; kv heads < heads where the family has grouped-query attention
    "llama": LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "opt": OPTConfig(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256, word_embed_proj_dim=64, pad_token_id=0),
    "glm": GlmConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                     pad_token_id=0, eos_token_id=2),
}
_SMALL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
# Today's families, each with what our kernels must not get wrong: Qwen3's q/k norms, Mistral's and Gemma 3's
# sliding windows (8 tokens, shorter than the longest example), Gemma 2's soft-capped attention logits, Phi-3's
# fused projections. ``auto`` picks each one's kernel (resolve_attention); padding-free must equal padded there.
TODAY = {
    "qwen2": Qwen2Config(**_SMALL),
    "qwen3": Qwen3Config(**_SMALL, head_dim=16),
    "mistral": MistralConfig(**_SMALL, sliding_window=8),
    "gemma2": Gemma2Config(**_SMALL, head_dim=16, sliding_window=8, attn_logit_softcapping=50.0,
                           final_logit_softcapping=30.0),
    "gemma3_text": Gemma3TextConfig(**_SMALL, head_dim=16, sliding_window=8, sliding_window_pattern=2),
    "phi3": Phi3Config(**_SMALL, pad_token_id=0),
}
CONFIGS.update({name: TODAY[name] for name in ("qwen2", "qwen3", "phi3")})  # the ones sdpa_packed serves
LENGTHS = (9, 23, 1, 14, 6)


def model(family: str, attention: str, seed: int = 0):
    torch.manual_seed(seed)
    config = {**CONFIGS, **TODAY}[family]
    config = config.__class__.from_dict(config.to_dict())
    net = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)
    return net.eval()  # no dropout (OPT has some), so runs compare exactly; gradients still flow


def features(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": ids, "labels": ([-100] * 2 + ids[2:])[:len(ids)]}
            for ids in (torch.randint(5, 500, (n,), generator=generator).tolist() for n in LENGTHS)]


def loss_and_grads(net, batch):
    batch = dict(batch)
    labels = batch.pop("labels")
    net.zero_grad()
    loss = causal_lm_loss(net(**batch, use_cache=False).logits[:, :-1], labels[:, 1:])
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(TODAY))
def test_todays_families_train_padding_free_exactly_as_padded_with_the_kernel_auto_picks(family):
    """The default path (padding-free rows, the kernel ``auto`` resolves to) gives the padded batch's loss and
    gradients: sliding windows and soft-capping included, never silently wrong."""
    attention = resolve_attention("auto", TODAY[family].to_dict())
    expected = {"gemma2": "eager", "mistral": "sdpa", "gemma3_text": "sdpa"}.get(family, PACKED_SDPA)
    assert attention == expected
    packed = loss_and_grads(model(family, attention), PaddingFreeCollator()(features()))
    padded = loss_and_grads(model(family, attention), PaddingCollator(pad_token_id=0)(features()))
    assert torch.allclose(packed[0], padded[0], atol=1e-5), (packed[0], padded[0])
    assert packed[1].keys() == padded[1].keys() and packed[1]
    for name, grad in packed[1].items():
        assert torch.allclose(grad, padded[1][name], atol=1e-5), name


@pytest.mark.parametrize("family", ["gemma2", "mistral"])
def test_the_packed_kernel_is_refused_where_it_would_be_wrong(family):
    with pytest.raises(UsageError, match="cannot run this model: .*(soft-capped|sliding window)"):
        resolve_attention(PACKED_SDPA, TODAY[family].to_dict())


def test_segment_lengths_follow_restarting_positions():
    assert segment_lengths(torch.tensor([[0, 1, 2, 0, 0, 1]])) == [[3, 1, 2]]
    assert segment_lengths(torch.tensor([[4, 5, 6]])) == [[3]]  # a continuation (generation) is one example
    assert segment_lengths(torch.tensor([[0, 1, 0], [0, 1, 2]])) == [[2, 1], [3]]


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_packed_row_equals_padded_batch_in_loss_and_gradients(family):
    """The packed row under sdpa_packed trains exactly like the padded batch under plain SDPA."""
    packed = loss_and_grads(model(family, PACKED_SDPA), PaddingFreeCollator()(features()))
    padded = loss_and_grads(model(family, "sdpa"), PaddingCollator(pad_token_id=0)(features()))
    assert torch.allclose(packed[0], padded[0], atol=1e-5)
    if family != "opt":  # OPT's forward does not hand position ids to its mask: plain SDPA mixes packed examples
        dense = loss_and_grads(model(family, "sdpa"), PaddingFreeCollator()(features()))  # the block mask
        assert torch.allclose(packed[0], dense[0], atol=1e-5)
    assert packed[1].keys() == padded[1].keys()
    for name, grad in packed[1].items():
        assert torch.allclose(grad, padded[1][name], atol=1e-5), name


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_padded_batches_and_generation_are_unchanged(family):
    """With padding the dense SDPA path runs: logits and greedy generation equal plain SDPA's."""
    ours, theirs = model(family, PACKED_SDPA).eval(), model(family, "sdpa").eval()
    batch = PaddingCollator(pad_token_id=0, padding_side="left")([{"input_ids": f["input_ids"][:8]}
                                                                  for f in features()[:3]])
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, theirs(**batch).logits, atol=1e-5)
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(**batch, **options), theirs.generate(**batch, **options))
    single = {"input_ids": batch["input_ids"][1:2, -5:]}  # no padding: the mask-free path, with a growing cache
    assert torch.equal(ours.generate(**single, **options), theirs.generate(**single, **options))


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_ptuning_packed_row_equals_padded_batch(family):
    """One shared prefix, many packed examples: loss and prefix gradients equal the padded batch's."""
    spec = PTuningSpec(pre_seq_len=4, prefix_projection=True, prefix_hidden_size=32)
    results = []
    for attention, collate in ((PACKED_SDPA, PaddingFreeCollator()), ("sdpa", PaddingCollator(pad_token_id=0))):
        torch.manual_seed(1)
        net = apply_ptuning(model(family, attention), spec, None)
        torch.nn.init.normal_(net.prefix_encoder.embedding.weight, std=1.0)  # a prefix that visibly matters
        results.append(loss_and_grads(net, collate(features())))
    (packed_loss, packed_grads), (padded_loss, padded_grads) = results
    assert torch.allclose(packed_loss, padded_loss, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for name, grad in packed_grads.items():
        assert torch.allclose(grad, padded_grads[name], atol=1e-5), name


def test_ptuning_refuses_a_packed_row_on_a_dense_kernel():
    net = apply_ptuning(model("llama", "sdpa"), PTuningSpec(pre_seq_len=4), None)
    batch = PaddingFreeCollator()(features())
    batch.pop("labels")
    with pytest.raises(ValueError, match="sdpa_packed"):
        net(**batch)


def test_auto_keeps_plain_sdpa_for_sliding_window_models():
    assert resolve_attention("auto", {"model_type": "llama"}) == PACKED_SDPA
    assert resolve_attention("auto", {"model_type": "mistral", "sliding_window": 4096}) == "sdpa"
    assert resolve_attention("eager", {}) == "eager"


def test_ptuning_packs_by_default_and_refuses_packing_on_a_dense_kernel():
    from finetune.recipe import DataSpec, ModelSpec, Recipe, RecipeError, resolved_batching

    assert resolved_batching(Recipe(name="p", data=DataSpec(train="x.jsonl"), method=PTuningSpec())) == "padding_free"
    eager = ModelSpec(attn_implementation="eager")
    assert resolved_batching(Recipe(name="p", model=eager, data=DataSpec(train="x.jsonl"),
                                    method=PTuningSpec())) == "padded"
    with pytest.raises(RecipeError, match="attn_implementation"):
        Recipe(name="p", model=eager, data=DataSpec(train="x.jsonl", batching="padding_free"), method=PTuningSpec())
