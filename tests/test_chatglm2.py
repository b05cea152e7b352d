"""ChatGLM2 on transformers' GlmForCausalLM: conversion, loading, the CLI and the tokenizer.

A tiny random checkpoint in ChatGLM2's own on-disk format is compared against ``chatglm2_reference``, a forward
pass written independently from ChatGLM2's architecture; the tokenizer runs on a sentencepiece model trained here
on a few hundred lines of Chinese and English.
"""
from __future__ import annotations

import itertools
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from chatglm2_reference import chatglm2_config, chatglm2_forward, random_chatglm2_state_dict, write_chatglm2_checkpoint

from finetune.models.chatglm2 import (
    ChatGLM2Tokenizer,
    CheckpointKeyError,
    convert_config,
    convert_state_dict,
    is_chatglm2_checkpoint,
    left_padded_position_ids,
    load_chatglm2,
    load_chatglm2_tokenizer,
    to_chatglm2_state_dict,
)

ROOT = Path(__file__).resolve().parents[1]
SP_VOCAB = 512  # 256 byte-fallback pieces + the corpus' characters and merges
PADDED_VOCAB = 544  # SP_VOCAB + 5 GLM tokens, rounded up to a multiple of 32 as ChatGLM2 pads its vocabulary
ENGLISH = ["The weather is lovely today, so we walk in the park.", "People often say that patience is a virtue.",
           "Aesop wrote fables about foxes and grapes.", "Machine learning models need clean training data.",
           "Please translate this sentence into Chinese.", "How many people live in Beijing?",
           "A good answer is short and correct.", "The quick brown fox jumps over the lazy dog.",
           "Summarise the following dialogue in one line.", "She opened the window and the sun came in.",
           "Write a poem about the sea and the stars.", "Numbers like 42 and 3.14 appear in text too."]
CHINESE = ["今天天气很好，我们一起去公园散步吧。", "人工智能正在改变世界。", "学习一门语言需要时间和耐心。",
           "北京是中国的首都，有很多名胜古迹。", "请把这句话翻译成英文。", "你好，很高兴认识你！",
           "机器学习模型需要干净的训练数据。", "他每天早上六点起床跑步。", "这本书讲的是一个关于友谊的故事。",
           "问：中国有多少个省？答：三十四个省级行政区。", "春天来了，花都开了。", "谢谢你的帮助，再见。"]


def _corpus() -> list[str]:
    """~300 lines: every English sentence with every Chinese one, both orders, plus each alone."""
    pairs = [f"{e} {c}" for e, c in itertools.product(ENGLISH, CHINESE)]
    pairs += [f"{c}{e}" for c, e in itertools.product(CHINESE, ENGLISH)]
    return ENGLISH + CHINESE + pairs


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    import sentencepiece as spm

    prefix = tmp_path_factory.mktemp("sp") / "chatglm2"
    # Defaults give ChatGLM2's ids: <unk>=0, <s>=1, </s>=2.
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_prefix=str(prefix), model_type="bpe",
                                   vocab_size=SP_VOCAB, byte_fallback=True, character_coverage=1.0, num_threads=1,
                                   normalization_rule_name="identity",
                                   minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sp_model):
    """(config dict, ChatGLM2 state dict, one folder per weight format)."""
    cfg = chatglm2_config(PADDED_VOCAB, rope_ratio=4)  # rope_ratio as in ChatGLM3-6B-32k: base 40000
    sd = random_chatglm2_state_dict(cfg)
    root = tmp_path_factory.mktemp("chatglm2")
    folders = {fmt: write_chatglm2_checkpoint(root / fmt, cfg, sd, fmt, sp_model)
               for fmt in ("safetensors", "bin", "bin-sharded")}
    return cfg, sd, folders


@pytest.fixture(scope="module")
def glm_tokenizer(checkpoint):
    """Named apart from conftest's SmolLM2 ``tokenizer`` fixture."""
    return load_chatglm2_tokenizer(checkpoint[2]["safetensors"])


def _ids(seed: int, shape=(2, 11)) -> torch.Tensor:
    return torch.randint(3, SP_VOCAB + 5, shape, generator=torch.Generator().manual_seed(seed))


# --- model ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["safetensors", "bin", "bin-sharded"])
def test_logits_match_reference(checkpoint, fmt):
    cfg, sd, folders = checkpoint
    assert is_chatglm2_checkpoint(folders[fmt])
    model = load_chatglm2(folders[fmt]).eval()
    assert type(model).__name__ == "GlmForCausalLM" and model.dtype == torch.float32
    ids = _ids(0)
    with torch.no_grad():
        logits = model(ids).logits
    expected = chatglm2_forward(sd, cfg, ids)
    assert (logits - expected).abs().max() <= 1e-5
    assert expected.abs().max() > 1.0  # the logits are not trivially small


def test_left_padded_batch_matches_reference(checkpoint):
    cfg, sd, folders = checkpoint
    model = load_chatglm2(folders["safetensors"]).eval()
    ids = _ids(1)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    ids[0, :4] = 0  # pad = <unk>
    positions = left_padded_position_ids(mask)  # real tokens count from 0, as ChatGLM2's tokenizer gives them
    assert positions[0].tolist() == [0] * 5 + list(range(1, 7)) and positions[1].tolist() == list(range(11))
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=positions).logits
        alone = model(ids[:1, 4:]).logits[0]
    expected = chatglm2_forward(sd, cfg, ids, mask, positions)
    real = mask.bool()
    assert (logits - expected).abs().amax(-1)[real].max() <= 1e-5
    assert (logits[0, 4:] - alone).abs().max() <= 1e-5  # padding changes nothing for the real tokens
    # The comparison is sensitive to the rotary base: rope_ratio 1 instead of 4 is far off.
    wrong_base = chatglm2_forward(sd, dict(cfg, rope_ratio=1), ids, mask, positions)
    assert (logits - wrong_base).abs().amax(-1)[real].max() > 1e-3


def test_state_dict_round_trip(checkpoint):
    cfg, sd, _ = checkpoint
    config = convert_config(cfg)
    glm = convert_state_dict(sd, config)
    assert "model.layers.1.self_attn.k_proj.bias" in glm and "lm_head.weight" in glm
    assert glm["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16, 64)
    assert glm["model.layers.0.self_attn.v_proj.bias"].shape == (2 * 16,)
    back = to_chatglm2_state_dict(glm, config)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_convert_config_fields():
    config = convert_config(chatglm2_config(rope_ratio=2))
    assert (config.vocab_size, config.intermediate_size, config.num_hidden_layers) == (416, 128, 2)
    assert (config.num_key_value_heads, config.head_dim, config.max_position_embeddings) == (2, 16, 256)
    assert config.rope_parameters["rope_theta"] == 20000.0 and config.rope_parameters["partial_rotary_factor"] == 0.5
    assert (config.pad_token_id, config.eos_token_id, config.tie_word_embeddings) == (0, 2, False)
    assert convert_config(chatglm2_config(multi_query_attention=False)).num_key_value_heads == 4
    with pytest.raises(ValueError, match="add_bias_linear"):
        convert_config(chatglm2_config(add_bias_linear=True))


def test_bad_checkpoints_fail_clearly(checkpoint, tmp_path):
    cfg, sd, _ = checkpoint
    broken = dict(sd, **{"transformer.prefix_encoder.embedding.weight": torch.zeros(1)})
    del broken["transformer.output_layer.weight"]
    with pytest.raises(CheckpointKeyError, match=r"prefix_encoder.*missing keys \['transformer.output_layer.weight"):
        convert_state_dict(broken, cfg)
    write_chatglm2_checkpoint(tmp_path, cfg, {}, "bin")
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_chatglm2(tmp_path)
    assert not is_chatglm2_checkpoint(tmp_path / "nowhere")


def test_convert_cli(checkpoint, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    cfg, sd, folders = checkpoint
    dst = tmp_path / "glm"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "finetune.convert_checkpoint", "chatglm2", str(folders["bin"]),
                          str(dst)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "model.safetensors" in run.stdout and "tokenizer.model" in run.stdout
    model = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert type(model).__name__ == "GlmForCausalLM" and not is_chatglm2_checkpoint(dst)
    ids = _ids(2)
    with torch.no_grad():
        assert (model(ids).logits - chatglm2_forward(sd, cfg, ids)).abs().max() <= 1e-5
    converted_tokenizer = load_chatglm2_tokenizer(dst)
    assert isinstance(converted_tokenizer, ChatGLM2Tokenizer)
    original_tokenizer = load_chatglm2_tokenizer(folders["bin"])
    assert converted_tokenizer("你好 people").input_ids == original_tokenizer("你好 people").input_ids

    # The former name still runs it (in-process: a second start costs ~5 s).
    monkeypatch.setattr(sys, "argv", ["finetune.convert", "chatglm2", str(dst), str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="is not a ChatGLM2 checkpoint"):
        runpy.run_module("finetune.convert", run_name="__main__")


# --- tokenizer --------------------------------------------------------------------------------------------------

def test_tokenizer_special_ids(glm_tokenizer):
    assert isinstance(glm_tokenizer, ChatGLM2Tokenizer) and glm_tokenizer.vocab_size == SP_VOCAB
    ids = glm_tokenizer.convert_tokens_to_ids(["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"])
    assert ids == list(range(SP_VOCAB, SP_VOCAB + 5)) and len(glm_tokenizer) == SP_VOCAB + 5
    tok = glm_tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 0, 1, 2)
    assert glm_tokenizer.eos_token == "</s>" and glm_tokenizer.padding_side == "left"


def test_tokenizer_prefix_and_plain_text(glm_tokenizer, sp_model):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    gmask, sop = glm_tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])
    text = "How many people live in Beijing? 北京是中国的首都。"
    assert glm_tokenizer(text).input_ids == [gmask, sop] + sp.encode(text)
    # "people" holds "eop" and "Aesop" holds "sop": ordinary text never yields a GLM token.
    for line in _corpus()[:40] + ["eop", "sop", "people eop Aesop", "🙂 emoji via byte fallback"]:
        assert glm_tokenizer(line, add_special_tokens=False).input_ids == sp.encode(line)
    assert glm_tokenizer("x", "y").input_ids == [gmask, sop] + sp.encode("x") + sp.encode("y") + [2]


def test_tokenizer_special_tokens_in_text(glm_tokenizer):
    gmask, sop = glm_tokenizer.convert_tokens_to_ids(["[gMASK]", "sop"])
    ids = glm_tokenizer("[gMASK]sop问：你好</s>", add_special_tokens=False).input_ids
    assert ids[:2] == [gmask, sop] and ids[-1] == glm_tokenizer.eos_token_id
    assert glm_tokenizer.decode(ids) == "[gMASK]sop问：你好</s>"


def test_tokenizer_left_padding_and_decode(glm_tokenizer):
    batch = glm_tokenizer(["你好", "The quick brown fox jumps over the lazy dog."], padding=True, return_tensors="pt")
    short = glm_tokenizer("你好").input_ids
    width = batch.input_ids.shape[1]
    assert batch.input_ids[0].tolist() == [0] * (width - len(short)) + short
    assert batch.attention_mask[0].tolist() == [0] * (width - len(short)) + [1] * len(short)
    text = "今天天气很好，我们一起去公园散步吧。 Numbers like 42 🙂"
    ids = glm_tokenizer(text).input_ids
    assert glm_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert glm_tokenizer.decode(ids).startswith("[gMASK]sop")


def test_tokenizer_save_load_round_trip(glm_tokenizer, tmp_path):
    glm_tokenizer.save_pretrained(tmp_path)
    assert {"tokenizer.model", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = ChatGLM2Tokenizer.from_pretrained(tmp_path)
    text = "问：中国有多少个省？答：三十四个省级行政区。 people"
    assert loaded(text).input_ids == glm_tokenizer(text).input_ids
    assert loaded.padding_side == "left" and len(loaded) == len(glm_tokenizer)
    assert loaded.convert_tokens_to_ids("eop") == SP_VOCAB + 4
