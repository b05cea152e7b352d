"""Writing a Llama-architecture model folder (config + safetensors) as a GGUF file with the ``gguf`` package.

Tensor names come from ``gguf``'s own name map for ``MODEL_ARCH.LLAMA``; metadata keys from ``GGUFWriter``'s
``add_*`` methods; quantisation from ``gguf.quants``. Tensors are read, converted and written one at a time
(header first, then data), so memory holds one tensor, not the model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import gguf
import numpy as np
from safetensors import safe_open
from tqdm.auto import tqdm

from .checks import ExportRefused

__all__ = ["write_gguf", "permute_for_llama_cpp"]

# For 4- and 5-bit files the embedding and output matrices stay at 8 bits: llama-quantize keeps them at higher
# precision too (Q6_K, which the gguf package cannot write), since they dominate the quantisation error.
KEEP_8BIT = (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT)
LOW_BIT = {gguf.GGMLQuantizationType[t] for t in ("Q4_0", "Q4_1", "Q5_0", "Q5_1")}


def write_gguf(model_dir: Path, out: Path, qtype: gguf.GGMLQuantizationType, name: str,
               add_tokenizer: Callable[[gguf.GGUFWriter], None], rope: Optional[dict] = None) -> dict:
    """Write ``model_dir`` (a saved Llama/Mistral model) to ``out``.

    Args:
        qtype: type of the 2-D weights; norms stay F32 as in every llama.cpp conversion.
        add_tokenizer: writes the tokenizer keys (``vocab.add_tokenizer`` bound to this model).
        rope: the run's RoPE parameters when the recipe scaled RoPE (``rope_type``, ``factor``).

    Returns:
        Counts of tensors per GGML type and the file size.
    """
    config = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_hparams(writer, config, qtype, name, rope)
    add_tokenizer(writer)
    plan = _plan_tensors(model_dir, config, qtype)
    for item in plan:
        writer.add_tensor_info(item["name"], item["stored_shape"], item["dtype"], item["nbytes"],
                               raw_dtype=item["type"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    total = sum(i["nbytes"] for i in plan)
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"Writing {out.name}") as bar:
        for item in plan:
            data = _converted(item, config)
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


def _add_hparams(writer: gguf.GGUFWriter, config: dict, qtype, name: str, rope: Optional[dict]) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope_params = {**(config.get("rope_parameters") or {}), **(rope or {})}
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(rope_params.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config["vocab_size"])
    rope_type = rope_params.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope_params["factor"])
    elif rope_type != "default":
        raise ExportRefused(
            f"RoPE type {rope_type!r} is not exported (only unscaled and linear RoPE are); merge the run with "
            "`python -m finetune.merge` and convert it with llama.cpp's convert_hf_to_gguf.py")
    writer.add_file_type(_file_type(qtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _file_type(qtype) -> gguf.LlamaFileType:
    return gguf.LlamaFileType.ALL_F32 if qtype.name == "F32" else gguf.LlamaFileType[f"MOSTLY_{qtype.name}"]


def _plan_tensors(model_dir: Path, config: dict, qtype) -> list[dict]:
    """Every tensor to write: GGUF name, source, GGML type and byte size, in file order."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
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
                    raise ExportRefused(f"tensor {key!r} has no place in llama.cpp's Llama architecture")
                shape = tuple(source.get_slice(key).get_shape())
                plan.append({"name": target, "key": key, "file": file, "shape": shape,
                             **_storage(target, shape, qtype, names)})
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


def _converted(item: dict, config: dict) -> np.ndarray:
    """The tensor as stored in the file: q/k permuted for llama.cpp's RoPE, then converted to its type."""
    with safe_open(item["file"], framework="pt") as source:
        data = source.get_tensor(item["key"]).float().numpy()
    heads = config["num_attention_heads"]
    if item["key"].endswith(("q_proj.weight", "q_proj.bias")):
        data = permute_for_llama_cpp(data, heads)
    elif item["key"].endswith(("k_proj.weight", "k_proj.bias")):
        data = permute_for_llama_cpp(data, config.get("num_key_value_heads") or heads)
    return gguf.quants.quantize(data, item["type"])
