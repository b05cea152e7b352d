"""Loading a recipe's base model and tokenizer, with each family's quirks applied."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..recipe import ModelSpec
from .embedded import embedded_model_path, is_embedded
from .family import Family, detect_family, get_family

__all__ = ["ModelNotFoundError", "resolve_model_path", "resolve_family", "load_tokenizer", "load_model",
           "resolve_dtype"]

logger = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """The recipe's model is not on this machine; the message says how to get it."""


def resolve_model_path(path: str) -> Path:
    """A local folder for ``path``: the embedded default, a folder, or a hub id already in the local cache.

    Raises:
        ModelNotFoundError: when nothing is on disk (runs are offline: nothing is downloaded implicitly).
    """
    if is_embedded(path):
        return embedded_model_path(path)
    if Path(path).expanduser().is_dir():
        return Path(path).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not on disk"
        raise ModelNotFoundError(
            f"Model {path!r} (recipe field model.path) is not on this machine. Download it where there is internet "
            f"(`hf download {path} --local-dir DIR`), copy DIR here and run with model.path=DIR.") from None


def _config(path: Path) -> dict:
    config = path / "config.json"
    if not config.exists():
        raise ModelNotFoundError(f"{path} has no config.json; model.path must be a Hugging Face model folder.")
    return json.loads(config.read_text())


def resolve_family(spec: ModelSpec, path: Path) -> Family:
    if spec.family != "auto":
        return get_family(spec.family)
    return detect_family(_config(path).get("model_type", ""))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else torch.float32
    return getattr(torch, name)


def load_tokenizer(path: Path, family: Family, trust_remote_code: bool = False):
    """Load the tokenizer and give it a pad token distinct from EOS, so EOS stays a learnable target."""
    if family.name == "chatglm2":
        from .chatglm2 import load_chatglm2_tokenizer

        tokenizer = load_chatglm2_tokenizer(path)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        candidate = next((t for t in family.pad_candidates if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if candidate is None:
            raise ValueError(f"{path}: the tokenizer has no pad token distinct from EOS and none of "
                             f"{family.pad_candidates} exists; add a pad token to the tokenizer.")
        logger.info("Using %r as the pad token (was %r)", candidate, tokenizer.pad_token)
        tokenizer.pad_token = candidate
    tokenizer.padding_side = family.padding_side
    return tokenizer


def load_model(path: Path, family: Family, spec: ModelSpec, **kwargs):
    """Load the base model (``kwargs`` go to ``from_pretrained``, e.g. ``quantization_config``)."""
    dtype = resolve_dtype(spec.dtype)
    if family.name == "chatglm2" and _config(path).get("model_type") == "chatglm":
        from .chatglm2 import load_chatglm2

        return load_chatglm2(path, dtype=dtype, **kwargs)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                                                **kwargs)
