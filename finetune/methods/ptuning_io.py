"""Reading and writing prefix checkpoints: ours, and ChatGLM2's official P-Tuning layout.

Ours: ``prefix_encoder.safetensors`` + ``prefix_config.json``. Official (ChatGLM2 ``ptuning/main.py``):
``pytorch_model.bin`` holding ``transformer.prefix_encoder.embedding.weight`` (and ``trans.0.*``, ``trans.2.*`` when
trained with ``prefix_projection``); the shape of the prefix comes from the base model's config.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UsageError

__all__ = ["read_prefix", "write_prefix", "export_official", "prefix_shape", "OFFICIAL_PREFIX", "PREFIX_WEIGHTS",
           "PREFIX_CONFIG"]

PREFIX_WEIGHTS = "prefix_encoder.safetensors"
PREFIX_CONFIG = "prefix_config.json"
OFFICIAL_PREFIX = "transformer.prefix_encoder."


def prefix_shape(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of the past keys/values a prefix feeds a model with this transformers config
    (grouped and multi-query attention included)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


def write_prefix(state: dict, config: dict, directory: str | Path, base_model: str | None) -> None:
    """Write a prefix encoder's state (safetensors) and its shape; the base model is not written."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, directory / PREFIX_WEIGHTS)
    (directory / PREFIX_CONFIG).write_text(json.dumps({**config, "base_model_name_or_path": base_model}, indent=2))


def read_prefix(directory: str | Path, base_config=None) -> tuple[dict, dict]:
    """``(encoder kwargs, state dict)`` from a prefix checkpoint folder of either layout.

    Raises:
        FileNotFoundError: when the folder holds neither layout.
        ValueError: when an official checkpoint does not fit the base model.
    """
    directory = Path(directory)
    if (directory / PREFIX_WEIGHTS).exists():
        from safetensors.torch import load_file

        config = json.loads((directory / PREFIX_CONFIG).read_text())
        config.pop("base_model_name_or_path", None)
        return config, load_file(directory / PREFIX_WEIGHTS)
    official = directory / "pytorch_model.bin"
    if not official.exists():
        raise FileNotFoundError(f"{directory}: no {PREFIX_WEIGHTS} nor official pytorch_model.bin prefix checkpoint.")
    raw = torch.load(official, map_location="cpu", weights_only=True)
    state = {k[len(OFFICIAL_PREFIX):]: v for k, v in raw.items() if k.startswith(OFFICIAL_PREFIX)}
    if "embedding.weight" not in state:
        raise UsageError(f"{official}: no {OFFICIAL_PREFIX}embedding.weight key; is it a P-Tuning checkpoint?")
    if base_config is None:
        raise ValueError("Reading an official ChatGLM2 prefix needs the base model's config for its shape.")
    layers, kv_heads, head_dim = prefix_shape(base_config)
    pre_seq_len, kv_size = state["embedding.weight"].shape
    if kv_size != layers * 2 * kv_heads * head_dim:
        raise UsageError(f"{official}: prefix width {kv_size} does not match the base model "
                         f"({layers} layers x 2 x {kv_heads} kv heads x {head_dim}).")
    projection = "trans.0.weight" in state
    config = {"pre_seq_len": pre_seq_len, "num_layers": layers, "kv_heads": kv_heads,
              "head_dim": head_dim, "prefix_projection": projection,
              "hidden_size": state["trans.0.weight"].shape[0] if projection else 0, "dropout": 0.0}
    return config, state


def export_official(prefix_model, directory: str | Path) -> Path:
    """Write the prefix as ChatGLM2's official scripts save it, for tools that expect that layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {OFFICIAL_PREFIX + k: v.detach().cpu() for k, v in prefix_model.prefix_encoder.state_dict().items()}
    torch.save(state, directory / "pytorch_model.bin")  # their loader uses torch.load; the keys are plain tensors
    return directory / "pytorch_model.bin"
