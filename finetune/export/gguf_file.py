"""Writing a model folder (config + safetensors) as a GGUF file with the ``gguf`` package.

The architecture is llama.cpp's (``LLAMA`` for Llama and Mistral, ``QWEN2``, ``QWEN3``, ``PHI3``: see
``checks.GGUF_ARCHITECTURES``); tensor names come from ``gguf``'s own name map for it, metadata keys from
``GGUFWriter``'s ``add_*`` methods, quantisation from ``gguf.quants``. What differs per architecture follows
llama.cpp's ``convert_hf_to_gguf.py``. Tensors are read, converted and written one at a time (header first, then
data), so memory holds one tensor, not the model.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Optional

import gguf
import numpy as np
from safetensors import safe_open
from tqdm.auto import tqdm

from .checks import ExportRefused

__all__ = ["write_gguf", "permute_for_llama_cpp", "llama3_rope_factors"]

logger = logging.getLogger(__name__)

# For 4- and 5-bit files the embedding and output matrices stay at 8 bits: llama-quantize keeps them at higher
# precision too (Q6_K, which the gguf package cannot write), since they dominate the quantisation error.
KEEP_8BIT = (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT)
LOW_BIT = {gguf.GGMLQuantizationType[t] for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")}


def write_gguf(model_dir: Path, out: Path, qtype: gguf.GGMLQuantizationType, name: str,
               add_tokenizer: Callable[[gguf.GGUFWriter], None], rope: Optional[dict] = None,
               arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA) -> dict:
    """Write ``model_dir`` (a saved model of a family ``checks.GGUF_ARCHITECTURES`` maps to ``arch``) to ``out``.

    Args:
        qtype: type of the 2-D weights; norms stay F32 as in every llama.cpp conversion.
        add_tokenizer: writes the tokenizer keys (``vocab.add_tokenizer`` bound to this model).
        rope: the run's RoPE parameters when the recipe scaled RoPE (``rope_type``, ``factor``).
        arch: llama.cpp's architecture to write.

    Returns:
        Counts of tensors per GGML type and the file size.
    """
    config = json.loads((model_dir / "config.json").read_text())
    rope_params = {**(config.get("rope_parameters") or {}), **(rope or {})}
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    _add_hparams(writer, config, arch, qtype, name, rope_params)
    add_tokenizer(writer)
    plan = _plan_tensors(model_dir, config, arch, qtype, rope_params)
    for item in plan:
        writer.add_tensor_info(item["name"], item["stored_shape"], item["dtype"], item["nbytes"],
                               raw_dtype=item["type"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(i["nbytes"] for i in plan)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"Writing {out.name}") as bar:
        for item in plan:
            data = _converted(item, config, arch)
            writer.write_tensor_data(data)
            bar.update(data.nbytes)
    writer.close()
    types: dict[str, int] = {}
    for item in plan:
        types[item["type"].name] = types.get(item["type"].name, 0) + 1
    return {"tensor_types": types, "tensors": len(plan), "bytes": out.stat().st_size}


def permute_for_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotate-half RoPE layout to the interleaved pairs llama.cpp rotates.

    The same reshuffle as llama.cpp's ``LlamaModel.permute`` (transformers' GGUF loader undoes it on load).
    """
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def llama3_rope_factors(config: dict, rope_params: dict) -> np.ndarray:
    """llama.cpp's ``rope_freqs`` tensor: the divisor of each RoPE frequency that makes Llama 3.1's "llama3" scaling.

    llama.cpp has no "llama3" scaling type; its converter (``LlamaModel.generate_extra_tensors``) writes these
    factors instead and the runtime divides each frequency by its factor: 1 for high frequencies, ``factor`` for low
    ones, a smooth blend between. Computed here as there, with one difference: the converter reads
    ``original_max_position_embeddings`` from the config's top level (default 8192, the value in every Llama 3.1 and
    3.2 checkpoint), while this reads it where transformers does when it trains, from the RoPE parameters.
    """
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    dim = int(head_dim * _partial_rotary_factor(config, rope_params))
    base = rope_params.get("rope_theta", config.get("rope_theta", 10000.0))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rope_params.get("factor", 8.0)
    low, high = rope_params.get("low_freq_factor", 1.0), rope_params.get("high_freq_factor", 4.0)
    old_context = rope_params.get("original_max_position_embeddings", 8192)
    wavelen = 2 * math.pi / freqs
    smooth = (old_context / wavelen - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < old_context / high, 1.0, np.where(wavelen > old_context / low, factor, blended))
    return factors.astype(np.float32)


def _add_hparams(writer: gguf.GGUFWriter, config: dict, arch, qtype, name: str, rope_params: dict) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope_params.get("rope_theta", config.get("rope_theta", 10000.0)))
    # Partial rotary (Phi-4-mini) rotates the first head_dim * factor dimensions, as transformers does.
    writer.add_rope_dimension_count(int(head_dim * _partial_rotary_factor(config, rope_params)))
    if config.get("head_dim") or head_dim != config["hidden_size"] // heads:  # as llama.cpp's converter
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    _add_rope_scaling(writer, arch, rope_params)
    _add_attention_window(writer, config, arch)
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _partial_rotary_factor(config: dict, rope_params: dict) -> float:
    return rope_params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))


def _add_rope_scaling(writer: gguf.GGUFWriter, arch, rope_params: dict) -> None:
    """RoPE scaling as llama.cpp's converter writes it: a linear factor in metadata; Llama 3.1's "llama3" as the
    ``rope_freqs`` tensor (planned in ``_plan_tensors``), which llama.cpp reads for its Llama architecture only.

    Raises:
        ExportRefused: for any other type (YaRN, LongRoPE, ...): not written, as no test here verifies it.
    """
    rope_type = rope_params.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_params["factor"])
    elif not (rope_type == "default" or (rope_type == "llama3" and arch == gguf.MODEL_ARCH.LLAMA)):
        raise ExportRefused(
            f"RoPE type {rope_type!r} is not exported for llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} architecture (only "
            "unscaled, linear and, for Llama, Llama 3.1's llama3 RoPE are); merge the run with `python -m "
            "finetune.merge` and convert it with llama.cpp's convert_hf_to_gguf.py")


def _add_attention_window(writer: gguf.GGUFWriter, config: dict, arch) -> None:
    """Phi-3's sliding window (0 for none, as llama.cpp's converter writes Phi-4's) and original context; elsewhere
    a warning, since llama.cpp's Llama (Mistral's) and Qwen2 architectures have no sliding window."""
    window = config.get("sliding_window")
    if arch == gguf.MODEL_ARCH.PHI3:
        writer.add_rope_scaling_orig_ctx_len(config.get("original_max_position_embeddings")
                                             or config["max_position_embeddings"])
        writer.add_sliding_window(window or 0)
    elif window and window < config["max_position_embeddings"] and config.get("use_sliding_window", True):
        logger.warning("The model was trained with a sliding window of %d tokens, which llama.cpp's %s architecture "
                       "does not have (its own converter drops it too): prompts longer than %d tokens are served "
                       "with full attention, unlike training.", window, gguf.MODEL_ARCH_NAMES[arch], window)


def _file_type(qtype) -> gguf.LlamaFileType:
    return gguf.LlamaFileType.ALL_F32 if qtype.name == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype.name}"]


def _plan_tensors(model_dir: Path, config: dict, arch, qtype, rope_params: dict) -> list[dict]:
    """Every tensor to write: GGUF name, source (a file's key, or computed values), GGML type and byte size."""
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportRefused(f"{model_dir} has no safetensors weights")
    plan = []
    for file in files:
        with safe_open(file, framework="pt") as source:
            for key in source.keys():
                tied_head = key == "lm_head.weight" and config.get("tie_word_embeddings")
                if key.endswith("rotary_emb.inv_freq") or tied_head:
                    continue  # recomputed by the runtime / the embedding matrix serves as the output
                target = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ExportRefused(f"tensor {key!r} has no place in llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} "
                                        "architecture")
                shape = tuple(source.get_slice(key).get_shape())
                plan.append({"name": target, "key": key, "file": file, "shape": shape,
                             **_storage(target, shape, qtype, names)})
    if rope_params.get("rope_type") == "llama3":
        values = llama3_rope_factors(config, rope_params)
        target = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.append({"name": target, "values": values, "shape": values.shape,
                     **_storage(target, values.shape, qtype, names)})
    return plan


def _storage(target: str, shape: tuple, qtype, names) -> dict:
    """GGML type, numpy dtype, stored shape and byte count of one tensor."""
    kind = names.get_type(target, try_suffixes=(".weight", ".bias"))
    if len(shape) < 2 or qtype.name == "F32":
        chosen = gguf.GGMLQuantizationType.F32
    elif qtype in LOW_BIT and kind in KEEP_8BIT:
        chosen = gguf.GGMLQuantizationType.Q8_0
    else:
        chosen = qtype
    block, _ = gguf.GGML_QUANT_SIZES[chosen]
    if shape[-1] % block:  # rows that do not split into whole blocks cannot be quantised (llama.cpp: the same)
        chosen = gguf.GGMLQuantizationType.F16
    if chosen.name in ("F32", "F16"):
        dtype = np.float32 if chosen.name == "F32" else np.float16
        return {"type": chosen, "dtype": dtype, "stored_shape": shape,
                "nbytes": math.prod(shape) * np.dtype(dtype).itemsize}
    stored = gguf.quants.quant_shape_to_byte_shape(shape, chosen)
    return {"type": chosen, "dtype": np.uint8, "stored_shape": stored, "nbytes": math.prod(stored)}


def _converted(item: dict, config: dict, arch) -> np.ndarray:
    """The tensor as stored in the file: for the Llama architecture q/k permuted for llama.cpp's RoPE, then
    converted to its type.

    llama.cpp's Llama rotates adjacent pairs of dimensions, so its converter permutes the rows that Hugging Face
    rotates as two halves; its Qwen2, Qwen3 and Phi-3 rotate halves (NEOX RoPE) like Hugging Face, unpermuted.
    """
    if "values" in item:
        return gguf.quants.quantize(item["values"], item["type"])
    with safe_open(item["file"], framework="pt") as source:
        data = source.get_tensor(item["key"]).float().numpy()
    heads = config["num_attention_heads"]
    permuted = arch == gguf.MODEL_ARCH.LLAMA
    if permuted and item["key"].endswith(("q_proj.weight", "q_proj.bias")):
        data = permute_for_llama_cpp(data, heads)
    elif permuted and item["key"].endswith(("k_proj.weight", "k_proj.bias")):
        data = permute_for_llama_cpp(data, config.get("num_key_value_heads") or heads)
    return gguf.quants.quantize(data, item["type"])
