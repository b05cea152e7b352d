"""An independent ChatGLM2 forward pass and tiny ChatGLM2 checkpoints, for testing the Glm conversion.

The forward is written from ChatGLM2's architecture, straight on its own state-dict names and config fields, so
that it shares no code (and no mistakes) with ``finetune.models.chatglm2`` or transformers' ``GlmForCausalLM``:

* RMSNorm before attention and before the MLP, and once more at the end;
* one fused ``query_key_value`` projection with bias, rows ``[q heads | k groups | v groups]``; query head ``h``
  reads key/value group ``h // (heads // groups)`` (multi-query attention);
* rotary embeddings on the first ``head_dim / 2`` dims of every head, consecutive pairs ``(2i, 2i+1)`` rotated as
  complex numbers by ``position * base ** (-2i / rot_dim)``, base ``10000 * rope_ratio``; the rest passes through;
* causal attention where pad keys (attention mask 0) are never attended;
* SwiGLU: ``dense_h_to_4h`` gives ``[gate | up]``, the output is ``dense_4h_to_h(silu(gate) * up)``;
* no tied embeddings: ``output_layer`` is separate.

P-Tuning v2 as ChatGLM2's own code does it (``ChatGLMModel.get_prompt`` and ``forward``), also written apart from
``finetune.methods.ptuning``: the prefix encoder's output (batch, pre_seq_len, layers*2*groups*head_dim) is viewed
as (batch, pre_seq_len, layers*2, groups, head_dim) and split per layer into a key and a value, which go in front
of that layer's keys and values *without* rotary embeddings; the attention mask gets pre_seq_len ones in front, and
the real tokens' positions still start at 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

__all__ = ["chatglm2_config", "chatglm2_forward", "chatglm2_prefix", "random_chatglm2_state_dict",
           "write_chatglm2_checkpoint"]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_pairs(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate consecutive pairs of the first half of the last dim. x: (B, T, N, D); positions: (B, T)."""
    rot = x.shape[-1] // 2
    exponents = torch.arange(0, rot, 2, dtype=torch.float64) / rot
    angles = positions.double()[..., None] * base ** -exponents  # (B, T, rot/2)
    rotation = torch.polar(torch.ones_like(angles), angles)[:, :, None, :]  # broadcast over heads
    pairs = torch.view_as_complex(x[..., :rot].double().reshape(*x.shape[:-1], rot // 2, 2).contiguous())
    rotated = torch.view_as_real(pairs * rotation).reshape(*x.shape[:-1], rot)
    return torch.cat([rotated.to(x.dtype), x[..., rot:]], dim=-1)


def chatglm2_prefix(prefix_sd: dict, batch: int) -> torch.Tensor:
    """ChatGLM2's ``PrefixEncoder`` output (B, pre_seq_len, layers*2*groups*head_dim) from its official weights.

    ``prefix_sd`` holds ``transformer.prefix_encoder.embedding.weight`` and, when trained with
    ``prefix_projection``, ``trans.0.*`` / ``trans.2.*`` (Linear -> Tanh -> Linear); the prefix tokens are
    ``0 .. pre_seq_len - 1``, as ``ChatGLMModel.prefix_tokens``.
    """
    p = "transformer.prefix_encoder."
    prefix = prefix_sd[p + "embedding.weight"][None].expand(batch, -1, -1)  # prefix_tokens = 0 .. pre_seq_len - 1
    if p + "trans.0.weight" in prefix_sd:
        hidden = torch.tanh(prefix @ prefix_sd[p + "trans.0.weight"].T + prefix_sd[p + "trans.0.bias"])
        prefix = hidden @ prefix_sd[p + "trans.2.weight"].T + prefix_sd[p + "trans.2.bias"]
    return prefix


def chatglm2_forward(sd: dict, cfg: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     position_ids: torch.Tensor | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, padded_vocab_size) of a ChatGLM2 model given its own state dict and config.json dict.

    ``prefix`` is a P-Tuning v2 prefix encoder's output (B, pre_seq_len, layers*2*groups*head_dim), e.g. from
    :func:`chatglm2_prefix`; ``position_ids`` default to ``0 .. T-1`` with or without it, as in ChatGLM2.
    """
    batch, length = input_ids.shape
    heads, d = cfg["num_attention_heads"], cfg["kv_channels"]
    groups = cfg["multi_query_group_num"] if cfg.get("multi_query_attention") else heads
    eps, base = cfg["layernorm_epsilon"], 10000.0 * cfg.get("rope_ratio", 1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = torch.arange(length).expand(batch, length)
    allowed = torch.ones(length, length).tril().bool()[None] & attention_mask.bool()[:, None, :]  # (B, Tq, Tk)
    allowed |= torch.eye(length, dtype=torch.bool)[None]  # pad queries see themselves: no all-masked rows
    past = None
    if prefix is not None:
        pre_seq_len = prefix.shape[1]
        # get_prompt: view, then permute to (layers*2, P, B, groups, d) and split(2): per layer [key, value].
        past = prefix.view(batch, pre_seq_len, cfg["num_layers"] * 2, groups, d).permute(2, 1, 0, 3, 4).split(2)
        allowed = torch.cat([torch.ones(batch, length, pre_seq_len, dtype=torch.bool), allowed], dim=-1)

    x = sd["transformer.embedding.word_embeddings.weight"][input_ids]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        h = _rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        qkv = h @ sd[p + "self_attention.query_key_value.weight"].T + sd[p + "self_attention.query_key_value.bias"]
        q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
        q = _rotate_pairs(q.reshape(batch, length, heads, d), position_ids, base)
        k = _rotate_pairs(k.reshape(batch, length, groups, d), position_ids, base)
        v = v.reshape(batch, length, groups, d)
        if past is not None:  # ChatGLM2's kv_cache layout is (P, B, groups, d); the prefix keys are not rotated
            k = torch.cat([past[i][0].transpose(0, 1), k], dim=1)
            v = torch.cat([past[i][1].transpose(0, 1), v], dim=1)
        group_of_head = torch.arange(heads) // (heads // groups)
        k, v = k[:, :, group_of_head], v[:, :, group_of_head]  # (B, T, heads, d)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        context = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(batch, length, heads * d)
        x = x + context @ sd[p + "self_attention.dense.weight"].T
        h = _rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate, up = (h @ sd[p + "mlp.dense_h_to_4h.weight"].T).chunk(2, dim=-1)
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.dense_4h_to_h.weight"].T
    x = _rms_norm(x, sd["transformer.encoder.final_layernorm.weight"], eps)
    return x @ sd["transformer.output_layer.weight"].T


def chatglm2_config(padded_vocab_size: int = 416, **overrides) -> dict:
    """A tiny config.json in ChatGLM2-6B's own format (same fields; 64 hidden, 2 layers, 4 heads, 2 groups)."""
    cfg = {
        "_name_or_path": "tiny-chatglm2", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                     "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
        "add_bias_linear": False, "add_qkv_bias": True, "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
        "attention_softmax_in_fp32": True, "bias_dropout_fusion": True, "ffn_hidden_size": 128,
        "fp32_residual_connection": False, "hidden_dropout": 0.0, "hidden_size": 64, "kv_channels": 16,
        "layernorm_epsilon": 1e-05, "multi_query_attention": True, "multi_query_group_num": 2,
        "num_attention_heads": 4, "num_layers": 2, "original_rope": True, "padded_vocab_size": padded_vocab_size,
        "post_layer_norm": True, "rmsnorm": True, "seq_length": 256, "use_cache": True, "torch_dtype": "float32",
        "transformers_version": "4.27.1", "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0,
    }
    cfg.update(overrides)
    return cfg


def random_chatglm2_state_dict(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 weights under ChatGLM2's names, scaled so that every layer visibly changes the logits."""
    g = torch.Generator().manual_seed(seed)
    hidden, d, heads = cfg["hidden_size"], cfg["kv_channels"], cfg["num_attention_heads"]
    groups = cfg["multi_query_group_num"] if cfg.get("multi_query_attention") else heads
    qkv_rows = (heads + 2 * groups) * d

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    sd = {"transformer.embedding.word_embeddings.weight": rand(cfg["padded_vocab_size"], hidden, scale=1.0)}
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        sd.update({
            p + "input_layernorm.weight": 1 + rand(hidden),
            p + "self_attention.query_key_value.weight": rand(qkv_rows, hidden, scale=0.3),
            p + "self_attention.query_key_value.bias": rand(qkv_rows),
            p + "self_attention.dense.weight": rand(hidden, heads * d),
            p + "post_attention_layernorm.weight": 1 + rand(hidden),
            p + "mlp.dense_h_to_4h.weight": rand(2 * cfg["ffn_hidden_size"], hidden),
            p + "mlp.dense_4h_to_h.weight": rand(hidden, cfg["ffn_hidden_size"]),
        })
    sd["transformer.encoder.final_layernorm.weight"] = 1 + rand(hidden)
    sd["transformer.output_layer.weight"] = rand(cfg["padded_vocab_size"], hidden)
    # ChatGLM2 stores its rotary buffer (base 10000, over kv_channels/2 dims) in its checkpoints.
    rot = d // 2
    sd["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    return sd


def write_chatglm2_checkpoint(folder: Path, cfg: dict, sd: dict, fmt: str = "safetensors",
                              tokenizer_model: Path | None = None) -> Path:
    """Save ``sd`` as ChatGLM2 does: ``fmt`` is ``safetensors``, ``bin`` or ``bin-sharded`` (two shards + index)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    elif fmt == "bin":
        torch.save(sd, folder / "pytorch_model.bin")
    elif fmt == "bin-sharded":
        keys = sorted(sd)
        shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        for name, names in shards.items():
            torch.save({k: sd[k] for k in names}, folder / name)
        weight_map = {k: name for name, names in shards.items() for k in names}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        raise ValueError(f"Unknown checkpoint format {fmt!r}.")
    if tokenizer_model is not None:
        (folder / "tokenizer.model").write_bytes(Path(tokenizer_model).read_bytes())
        # ChatGLM2-6B's own tokenizer_config.json (it names the remote-code class).
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "name_or_path": "THUDM/chatglm2-6b", "remove_space": False, "do_lower_case": False,
            "tokenizer_class": "ChatGLMTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]}}))
    return folder
