"""P-Tuning v2 on ChatGLM2 (converted onto GlmForCausalLM), checked against ChatGLM2's own prefix semantics.

``chatglm2_reference`` implements ChatGLM2's forward *and* its P-Tuning v2 prefix (``get_prompt``: the encoder
output viewed as (batch, pre_seq_len, layers*2, groups, head_dim), unrotated prefix keys, pre_seq_len ones in
front of the attention mask, real tokens at positions 0, 1, ...) straight on the official state-dict names. Equal
logits therefore mean that our ``PrefixModel`` on Glm computes what a ChatGLM2 P-Tuning checkpoint computes, in
both directions (export and import of the official ``pytorch_model.bin`` layout).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from chatglm2_reference import (
    chatglm2_config,
    chatglm2_forward,
    chatglm2_prefix,
    random_chatglm2_state_dict,
    write_chatglm2_checkpoint,
)

from finetune import DataSpec, EvalSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec
from finetune.methods.ptuning import apply_ptuning, load_prefix_model
from finetune.methods.ptuning_io import OFFICIAL_PREFIX, export_official, read_prefix
from finetune.models.chatglm2 import left_padded_position_ids, load_chatglm2
from finetune.models.family import get_family
from finetune.train import train

ADGEN = Path(__file__).resolve().parents[1] / "data" / "adgen_sample"
SP_VOCAB = 1019  # the sample's 695 characters, 256 byte-fallback pieces and merges
PADDED_VOCAB = 1024  # SP_VOCAB + 5 GLM tokens ([MASK] [gMASK] [sMASK] sop eop), a multiple of 32
PRE_SEQ_LEN = 4
ATOL = 1e-5  # fp32; the measured max differences are ~1e-6


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """A sentencepiece model trained on the ADGEN sample's text (ChatGLM2's ids: <unk>=0, <s>=1, </s>=2)."""
    import sentencepiece as spm

    lines = []
    for split in ("train", "dev"):
        for line in (ADGEN / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            lines += [record["content"], record["summary"]]
    prefix = tmp_path_factory.mktemp("sp") / "chatglm2"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), model_type="bpe",
                                   vocab_size=SP_VOCAB, byte_fallback=True, character_coverage=1.0, num_threads=1,
                                   normalization_rule_name="identity", minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sp_model):
    """(config dict, state dict, folder) of a tiny random ChatGLM2 in its own format: 64 hidden, 128 ffn,
    2 layers, 4 heads sharing 2 key/value groups (multi-query attention), rope_ratio 2."""
    cfg = chatglm2_config(PADDED_VOCAB, rope_ratio=2)
    sd = random_chatglm2_state_dict(cfg, seed=1)
    folder = write_chatglm2_checkpoint(tmp_path_factory.mktemp("chatglm2") / "tiny", cfg, sd, "safetensors", sp_model)
    return cfg, sd, folder


def prefix_model(folder, projection: bool, seed: int = 0, **load_kwargs):
    spec = PTuningSpec(pre_seq_len=PRE_SEQ_LEN, prefix_projection=projection, prefix_dropout=0.0)
    base = load_chatglm2(folder, **load_kwargs)
    torch.manual_seed(seed)  # the projection's Linear layers draw from the global generator
    model = apply_ptuning(base, spec, get_family("chatglm2"))
    torch.nn.init.normal_(model.prefix_encoder.embedding.weight, std=1.0)  # a prefix that visibly matters
    return model


def padded_batch(seed: int = 0):
    """Two rows of 9 tokens, the first left-padded by 3 (pad id 0, as ChatGLM2's tokenizer pads)."""
    ids = torch.randint(3, SP_VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    return ids, mask


def max_real_diff(logits, expected, mask) -> float:
    return (logits - expected).abs().amax(-1)[mask.bool()].max().item()


@pytest.mark.parametrize("projection", [False, True])
def test_exported_prefix_matches_chatglm2_reference(checkpoint, tmp_path, projection):
    """Our prefix, written in ChatGLM2's layout and run by the reference, gives our logits (left padding too)."""
    cfg, sd, folder = checkpoint
    model = prefix_model(folder, projection).eval()
    official = torch.load(export_official(model, tmp_path), weights_only=True)
    assert ("transformer.prefix_encoder.trans.0.weight" in official) == projection
    ids, mask = padded_batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[:1, 3:]).logits[0]
    positions = left_padded_position_ids(mask)
    prefix = chatglm2_prefix(official, batch=2)
    expected = chatglm2_forward(sd, cfg, ids, mask, positions, prefix=prefix)
    diff = max_real_diff(logits, expected, mask)
    print(f"projection={projection}: max |logit diff| vs ChatGLM2 reference {diff:.2e}")
    assert diff <= ATOL
    assert (logits[0, 3:] - alone).abs().max() <= ATOL  # padding changes nothing for the real tokens

    # The comparison is sharp: each of these would be caught.
    without_prefix = chatglm2_forward(sd, cfg, ids, mask, positions)
    shifted = chatglm2_forward(sd, cfg, ids, mask, positions + PRE_SEQ_LEN, prefix=prefix)  # peft's numbering
    groups_swapped = prefix.view(2, PRE_SEQ_LEN, 4, 2, 16).flip(3).reshape(prefix.shape)  # (B, P, L*2, G, d)
    wrong_groups = chatglm2_forward(sd, cfg, ids, mask, positions, prefix=groups_swapped)
    for name, other in {"no prefix": without_prefix, "positions after the prefix": shifted,
                        "kv groups swapped": wrong_groups}.items():
        assert max_real_diff(logits, other, mask) > 1e-2, name


@pytest.mark.parametrize("projection", [False, True])
def test_official_prefix_checkpoint_loads_with_chatglm2_semantics(checkpoint, tmp_path, projection):
    """A ``pytorch_model.bin`` holding only ``transformer.prefix_encoder.*`` (as ChatGLM2's ptuning/main.py saves
    it), written here by hand, loads with ``load_prefix_model`` and gives the reference's logits."""
    cfg, sd, folder = checkpoint
    g = torch.Generator().manual_seed(2)
    kv_size = cfg["num_layers"] * 2 * cfg["multi_query_group_num"] * cfg["kv_channels"]
    state = {OFFICIAL_PREFIX + "embedding.weight": torch.randn(PRE_SEQ_LEN, kv_size, generator=g)}
    if projection:  # ChatGLM2: kv_size -> hidden_size -> kv_size
        hidden = cfg["hidden_size"]
        state.update({OFFICIAL_PREFIX + "trans.0.weight": torch.randn(hidden, kv_size, generator=g) * 0.2,
                      OFFICIAL_PREFIX + "trans.0.bias": torch.randn(hidden, generator=g) * 0.1,
                      OFFICIAL_PREFIX + "trans.2.weight": torch.randn(kv_size, hidden, generator=g) * 0.5,
                      OFFICIAL_PREFIX + "trans.2.bias": torch.randn(kv_size, generator=g) * 0.1})
    torch.save(state, tmp_path / "pytorch_model.bin")

    config, _ = read_prefix(tmp_path, load_chatglm2(folder).config)
    assert (config["pre_seq_len"], config["kv_heads"], config["head_dim"]) == (PRE_SEQ_LEN, 2, 16)
    assert config["prefix_projection"] == projection
    model = load_prefix_model(load_chatglm2(folder), tmp_path)
    ids, mask = padded_batch(seed=3)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = chatglm2_forward(sd, cfg, ids, mask, left_padded_position_ids(mask), prefix=chatglm2_prefix(state, 2))
    diff = max_real_diff(logits, expected, mask)
    print(f"projection={projection}: max |logit diff| of the imported official prefix {diff:.2e}")
    assert diff <= ATOL
    assert max_real_diff(logits, chatglm2_forward(sd, cfg, ids, mask, left_padded_position_ids(mask)), mask) > 1e-2


def test_generation_matches_step_by_step_forward(checkpoint):
    """The decode loop (cache pre-filled with the prefix, growing) agrees with full forwards on Glm."""
    _, _, folder = checkpoint
    model = prefix_model(folder, projection=False).eval()
    ids, mask = padded_batch(seed=6)
    out = model.generate(ids, mask, max_new_tokens=3)
    seq, seq_mask = ids.clone(), mask.clone()
    with torch.no_grad():
        for _ in range(3):
            nxt = model(input_ids=seq, attention_mask=seq_mask).logits[:, -1].argmax(-1, keepdim=True)
            seq, seq_mask = torch.cat([seq, nxt], 1), torch.cat([seq_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(out, seq)


def test_activation_checkpointing_gives_the_same_loss_and_prefix_gradients(checkpoint):
    _, _, folder = checkpoint
    ids, mask = padded_batch(seed=4)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    results = []
    for checkpointing in (False, True):
        model = prefix_model(folder, projection=True).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        assert model.base_model.model.gradient_checkpointing == checkpointing
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert set(grads_off) == {"prefix_encoder.embedding.weight", "prefix_encoder.trans.0.weight",
                              "prefix_encoder.trans.0.bias", "prefix_encoder.trans.2.weight",
                              "prefix_encoder.trans.2.bias"}
    assert torch.allclose(loss_off, loss_on, atol=1e-6)
    for name, grad in grads_off.items():
        assert grad.abs().sum() > 0, name
        assert torch.allclose(grad, grads_on[name], atol=1e-6), name


def test_prefix_trains_on_a_4bit_base(checkpoint):
    """NF4 base (bitsandbytes on CPU, float32 compute): the prefix learns, the 4-bit weights stay as loaded."""
    from bitsandbytes.nn import Linear4bit
    from transformers import BitsAndBytesConfig

    _, _, folder = checkpoint
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_compute_dtype=torch.float32)
    model = prefix_model(folder, projection=True, quantization_config=quantization, device_map="cpu")
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, Linear4bit)}
    assert len(quantized) == 12  # q, k, v, o, gate_up, down in both layers (lm_head stays unquantized)
    # Stay in train mode: in eval mode under no_grad bitsandbytes repacks 4-bit weights for its CPU kernel.
    frozen = {n: m.weight.data.clone() for n, m in quantized.items()}
    prefix_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(not p.requires_grad for p in model.base_model.parameters())

    ids, mask = padded_batch(seed=5)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    print(f"4-bit base: training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] < losses[0], losses
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), prefix_before[name]), name
    for name, module in quantized.items():
        assert module.weight.dtype == torch.uint8 and torch.equal(module.weight.data, frozen[name]), name


def test_train_chatglm2_ptuning_on_adgen_sample(checkpoint, tmp_path, monkeypatch):
    """``train()`` from the original ChatGLM2-format folder: only the prefix and the run files are saved."""
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))
    _, _, folder = checkpoint
    recipe = Recipe(
        name="tiny_chatglm2_ptuning", model=ModelSpec(path=str(folder), family="chatglm2", max_length=128),
        data=DataSpec(train=str(ADGEN / "train.jsonl"), eval=str(ADGEN / "dev.jsonl"), format="adgen",
                      template="chatglm2"),
        method=PTuningSpec(pre_seq_len=8, prefix_dropout=0.0),
        # A random model's loss moves slowly under a prefix; a large constant step shows learning within 8 steps.
        training=TrainingSpec(output_dir=str(tmp_path / "run"), max_steps=8, per_device_train_batch_size=8,
                              per_device_eval_batch_size=10, learning_rate=3e-1, lr_scheduler_type="constant",
                              logging_steps=1, activation_checkpointing=True, eval_strategy="steps", eval_steps=4),
        eval=EvalSpec(samples=2, max_new_tokens=4, generate=True))
    result = train(recipe)
    run = result.output_dir
    files = {p.name for p in run.iterdir()}
    assert {"generations", "prefix_config.json", "prefix_encoder.safetensors", "recipe.json", "template.json",
            "tokenizer.model", "tokenizer_config.json", "samples.json"} <= files  # ChatGLM2's own tokenizer files
    assert not {"model.safetensors", "pytorch_model.bin"} & files
    # ADGEN's scores (jieba ROUGE + character BLEU-4) at every evaluation: before, at steps 4 and 8 (the last).
    evals = [e for e in map(json.loads, (run / "logs.jsonl").read_text().splitlines()) if "eval_loss" in e]
    assert [e["step"] for e in evals] == [0, 4, 8]
    assert all(isinstance(e[k], float) for e in evals for k in ("eval_rouge-1", "eval_rouge-l", "eval_bleu-4"))
    answers = [json.loads(line) for line in (run / "generations" / "eval-2-step-8.jsonl").read_text().splitlines()]
    assert len(answers) == 20 and all(a["reference"] for a in answers)
    config, state = read_prefix(run)
    assert (config["pre_seq_len"], config["num_layers"], config["kv_heads"], config["head_dim"]) == (8, 2, 2, 16)
    assert set(state) == {"embedding.weight"}
    saved = json.loads((run / "prefix_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(folder)  # the ChatGLM2 folder, not "None"
    assert json.loads((run / "template.json").read_text())["name"] == "chatglm2"
    print(f"eval loss {result.eval_loss_before:.4f} -> {result.eval_loss_after:.4f}")
    assert result.eval_loss_after < result.eval_loss_before
