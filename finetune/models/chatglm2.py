"""ChatGLM2 checkpoints on transformers' native ``GlmForCausalLM``, without ``trust_remote_code``.

ChatGLM2-6B's remote code no longer runs on transformers 5.x, but ``GlmForCausalLM`` has the same architecture
(RMSNorm, fused-QKV attention with bias and multi-query groups, rotary embeddings on the first half of each head's
dims in interleaved pairs, SwiGLU). Loading a ChatGLM2 folder therefore means renaming and splitting its weights
and translating its config; ``save_converted`` writes the result as a standard Glm folder that
``AutoModelForCausalLM`` opens directly.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from transformers import GlmConfig, GlmForCausalLM

from ..errors import UsageError, UserError
from ..left_padded_positions import left_padded_position_ids  # re-exported: part of the port's API
from .chatglm2_tokenizer import ChatGLM2Tokenizer, is_chatglm2_tokenizer_folder, load_chatglm2_tokenizer

__all__ = ["CheckpointKeyError", "ChatGLM2Tokenizer", "left_padded_position_ids", "convert_config",
           "convert_state_dict", "is_chatglm2_checkpoint", "load_chatglm2", "load_chatglm2_tokenizer",
           "read_chatglm2_weights", "save_converted", "to_chatglm2_state_dict"]

logger = logging.getLogger(__name__)

_LAYER = "transformer.encoder.layers.{}."
# ChatGLM2 name -> Glm name for everything but the fused query_key_value, which is split.
_LAYER_MAP = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}
_TOP_MAP = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
_INV_FREQ = "transformer.rotary_pos_emb.inv_freq"
# Architecture switches ChatGLM2 has but GlmForCausalLM does not: field -> the only value Glm can represent.
_REQUIRED = {"rmsnorm": True, "add_bias_linear": False, "apply_residual_connection_post_layernorm": False,
             "post_layer_norm": True}


class CheckpointKeyError(UserError, KeyError):
    """The checkpoint's weight names do not match the architecture its config describes."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def _read_config(path: str | os.PathLike) -> dict:
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a ChatGLM2 model folder.")
    return json.loads(file.read_text())


def is_chatglm2_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ChatGLM2-format folder (remote-code config, ``transformer.*`` weights)."""
    try:
        cfg = _read_config(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    fields = ("multi_query_group_num", "padded_vocab_size")
    return (cfg.get("model_type") == "chatglm" and any(f in cfg for f in fields)) or all(f in cfg for f in fields)


def convert_config(cfg: dict) -> GlmConfig:
    """Translate ChatGLM2's ``config.json`` fields into a ``GlmConfig``.

    Raises:
        ValueError: for quantized checkpoints or architecture switches that ``GlmForCausalLM`` cannot express.
    """
    if cfg.get("quantization_bit"):
        raise UsageError(f"ChatGLM2 checkpoints quantized by its remote code (quantization_bit="
                         f"{cfg['quantization_bit']}) cannot be converted; use the unquantized weights.")
    bad = {k: cfg[k] for k, v in _REQUIRED.items() if k in cfg and bool(cfg[k]) != v}
    if bad:
        raise UsageError(f"GlmForCausalLM cannot represent these ChatGLM2 settings: {bad} (it needs {_REQUIRED}).")
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("kv_channels") or cfg["hidden_size"] // heads
    kv_heads = cfg["multi_query_group_num"] if cfg.get("multi_query_attention") else heads
    return GlmConfig(
        vocab_size=cfg["padded_vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"], num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        max_position_embeddings=cfg.get("seq_length", 32768), rms_norm_eps=cfg.get("layernorm_epsilon", 1e-5),
        attention_bias=cfg.get("add_qkv_bias", True), attention_dropout=cfg.get("attention_dropout", 0.0),
        # ChatGLM2 rotates kv_channels/2 dims per head; ChatGLM3's rope_ratio scales the base.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0 * cfg.get("rope_ratio", 1),
                         "partial_rotary_factor": 0.5},
        # GlmConfig's defaults are GLM-4's ids (151329...), not ChatGLM2's.
        pad_token_id=cfg.get("pad_token_id", 0), eos_token_id=cfg.get("eos_token_id", 2),
        bos_token_id=cfg.get("bos_token_id", 1),
        tie_word_embeddings=False, use_cache=cfg.get("use_cache", True))


def _expected_chatglm2_keys(config: GlmConfig) -> set[str]:
    per_layer = [*_LAYER_MAP, "self_attention.query_key_value.weight"]
    if config.attention_bias:
        per_layer.append("self_attention.query_key_value.bias")
    return set(_TOP_MAP) | {_LAYER.format(i) + k for i in range(config.num_hidden_layers) for k in per_layer}


def _check_keys(found, expected, what: str) -> None:
    unexpected, missing = sorted(set(found) - expected), sorted(expected - set(found))
    if unexpected or missing:
        raise CheckpointKeyError(f"{what} does not match its config: unexpected keys {unexpected[:10]}"
                                 f"{' ...' if len(unexpected) > 10 else ''}, missing keys {missing[:10]}"
                                 f"{' ...' if len(missing) > 10 else ''}.")


def _qkv_sizes(config: GlmConfig) -> list[int]:
    kv = config.num_key_value_heads * config.head_dim
    return [config.num_attention_heads * config.head_dim, kv, kv]


def convert_state_dict(sd: dict[str, torch.Tensor], config: GlmConfig | dict) -> dict[str, torch.Tensor]:
    """Rename ChatGLM2's ``transformer.*`` weights to Glm's and split each fused ``query_key_value``.

    The fused rows are laid out ``[heads*head_dim | groups*head_dim | groups*head_dim]`` (q, k, v) for both the
    weight and the bias. The rotary ``inv_freq`` buffer is dropped: Glm recomputes it from the config.

    Args:
        sd: ChatGLM2-format state dict.
        config: The converted ``GlmConfig``, or ChatGLM2's raw config dict.

    Raises:
        CheckpointKeyError: naming unexpected and missing keys (e.g. a quantized or P-Tuning checkpoint).
    """
    config = convert_config(config) if isinstance(config, dict) else config
    sd = {k: v for k, v in sd.items() if k != _INV_FREQ}
    _check_keys(sd, _expected_chatglm2_keys(config), "The ChatGLM2 checkpoint")
    out = {glm: sd[src] for src, glm in _TOP_MAP.items()}
    for i in range(config.num_hidden_layers):
        src, dst = _LAYER.format(i), f"model.layers.{i}."
        out.update({dst + glm: sd[src + k] for k, glm in _LAYER_MAP.items()})
        for kind in ("weight", "bias") if config.attention_bias else ("weight",):
            fused = sd[f"{src}self_attention.query_key_value.{kind}"]
            if fused.shape[0] != sum(_qkv_sizes(config)):
                raise ValueError(f"{src}self_attention.query_key_value.{kind} has {fused.shape[0]} rows, the config "
                                 f"implies {sum(_qkv_sizes(config))} (q, k, v = {_qkv_sizes(config)}).")
            for name, part in zip("qkv", fused.split(_qkv_sizes(config), dim=0)):
                out[f"{dst}self_attn.{name}_proj.{kind}"] = part.clone()
    return out


def to_chatglm2_state_dict(sd: dict[str, torch.Tensor], config: GlmConfig,
                           include_inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """Inverse of ``convert_state_dict``: Glm weights back to ChatGLM2's names and fused ``query_key_value``.

    Args:
        sd: ``GlmForCausalLM`` state dict.
        config: Its ``GlmConfig``.
        include_inv_freq: Recreate ChatGLM2's persistent rotary buffer (base 10000; ``rope_ratio`` is applied at
            run time there), as ChatGLM2's own checkpoints contain it.
    """
    glm_keys = {glm: src for src, glm in _TOP_MAP.items()}
    for i in range(config.num_hidden_layers):
        src, dst = _LAYER.format(i), f"model.layers.{i}."
        glm_keys.update({dst + glm: src + k for k, glm in _LAYER_MAP.items()})
        glm_keys.update({f"{dst}self_attn.{n}_proj.{kind}": None for n in "qkv"
                         for kind in (("weight", "bias") if config.attention_bias else ("weight",))})
    _check_keys(sd, set(glm_keys), "The Glm state dict")
    out = {src: sd[glm] for glm, src in glm_keys.items() if src is not None}
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias") if config.attention_bias else ("weight",):
            parts = [sd[f"model.layers.{i}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
            out[f"{_LAYER.format(i)}self_attention.query_key_value.{kind}"] = torch.cat(parts, dim=0)
    if include_inv_freq:
        dim = config.head_dim // 2
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        out[_INV_FREQ] = inv_freq.to(sd["model.embed_tokens.weight"].dtype)
    return out


def read_chatglm2_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a folder's ``.safetensors`` or ``.bin`` weights, single-file or sharded with an index.

    ``.bin`` files are read with ``weights_only=True``, so a pickle cannot run code.

    Raises:
        FileNotFoundError: naming the folder when no weights (or a shard named by the index) are there.
    """
    from safetensors.torch import load_file

    path = Path(path)
    for index, single, pattern in (("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
                                   ("pytorch_model.bin.index.json", "pytorch_model.bin", "*.bin")):
        if (path / index).is_file():
            files = [path / f for f in sorted(set(json.loads((path / index).read_text())["weight_map"].values()))]
        elif (path / single).is_file():
            files = [path / single]
        else:
            files = sorted(path.glob(pattern))
        if not files:
            continue
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: {index} names weight files that are not there: {missing}.")
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            logger.info("Reading %s", f)
            sd.update(load_file(str(f)) if f.suffix == ".safetensors"
                      else torch.load(f, map_location="cpu", weights_only=True))
        return sd
    raise FileNotFoundError(f"{path} has no model weights: expected model.safetensors, pytorch_model.bin, "
                            f"sharded *.safetensors / *.bin files or their index.json.")


def load_chatglm2(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                  **from_pretrained_kwargs) -> GlmForCausalLM:
    """Load a ChatGLM2-format folder as a ``GlmForCausalLM``.

    The converted weights go through ``from_pretrained(None, config=..., state_dict=...)`` so that its options
    (``quantization_config``, ``device_map``, ...) work as for any model; every weight must load.

    Args:
        path: ChatGLM2 folder (``config.json`` in ChatGLM2's format plus weights).
        dtype: Parameter dtype.
        **from_pretrained_kwargs: Passed to ``GlmForCausalLM.from_pretrained``.

    Raises:
        FileNotFoundError: when the folder lacks ``config.json`` or weights.
        CheckpointKeyError: when the weights do not match the config.
    """
    config = convert_config(_read_config(path))
    sd = convert_state_dict(read_chatglm2_weights(path), config)
    from_pretrained_kwargs.pop("output_loading_info", None)
    from_pretrained_kwargs.pop("trust_remote_code", None)  # nothing remote runs here
    model, info = GlmForCausalLM.from_pretrained(None, config=config, state_dict=sd, dtype=dtype,
                                                 output_loading_info=True, **from_pretrained_kwargs)
    problems = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if problems or info.get("error_msgs"):
        raise CheckpointKeyError(f"{path}: converted weights did not load cleanly: {problems} "
                                 f"{info.get('error_msgs') or ''}")
    model.name_or_path = str(path)
    return model


def save_converted(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Write ChatGLM2 folder ``src`` as a standard ``GlmForCausalLM`` folder ``dst`` (weights keep their dtype).

    The tokenizer (ChatGLM2's ``tokenizer.model`` with ``tokenizer_class: ChatGLM2Tokenizer``) is saved beside it
    when ``src`` has one; load it with ``load_chatglm2_tokenizer(dst)``: ``AutoTokenizer`` does not know the class
    and silently builds a generic sentencepiece tokenizer instead (other ids, no ``[gMASK] sop`` prefix).

    Returns:
        Names of the files written into ``dst``.

    Raises:
        ValueError: when ``src`` is not a ChatGLM2 checkpoint.
    """
    if not is_chatglm2_checkpoint(src):
        raise UsageError(f"{src} is not a ChatGLM2 checkpoint (config.json with model_type 'chatglm' and "
                         f"multi_query_group_num / padded_vocab_size).")
    config = convert_config(_read_config(src))
    sd = convert_state_dict(read_chatglm2_weights(src), config)
    dtype = sd["model.embed_tokens.weight"].dtype
    model = GlmForCausalLM.from_pretrained(None, config=config, state_dict=sd, dtype=dtype)
    Path(dst).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    if is_chatglm2_tokenizer_folder(src):
        ChatGLM2Tokenizer.from_pretrained(str(src)).save_pretrained(dst)
    else:
        logger.warning("%s has no ChatGLM2 tokenizer.model; %s holds the model only.", src, dst)
    return sorted(p.name for p in Path(dst).iterdir())
