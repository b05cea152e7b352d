"""Loading a recipe's base model and tokenizer, with each family's quirks applied."""
from __future__ import annotations

import copy
import gc
import json
import logging
import os
import pickle
from pathlib import Path

import torch

from ..errors import UsageError, UserError
from ..precision import resolve_dtype
from ..recipe import ModelSpec
from ..safetensors_check import check_safetensors_in
from .attention import resolve_attention
from .embedded import embedded_model_path, is_embedded
from .family import Family, detect_family, get_family

__all__ = ["ModelNotFoundError", "ModelWeightsError", "check_weights", "resolve_model_path",
           "resolve_family", "load_tokenizer", "load_model", "quantized_device", "load_config", "native_window",
           "check_context_window", "read_config"]

logger = logging.getLogger(__name__)


class ModelNotFoundError(UserError, FileNotFoundError):
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


def read_config(path: Path) -> dict:
    """The model folder's ``config.json`` as a dict."""
    config = path / "config.json"
    if not config.exists():
        raise ModelNotFoundError(f"{path} has no config.json; model.path must be a Hugging Face model folder.")
    return json.loads(config.read_text())


def resolve_family(spec: ModelSpec, path: Path, raw: dict | None = None) -> Family:
    """``model.family``, or with ``auto`` the family of the config's ``model_type`` (``raw``: ``config.json`` as the
    caller read it)."""
    if spec.family != "auto":
        return get_family(spec.family)
    return detect_family((raw if raw is not None else read_config(path)).get("model_type", ""))


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
            raise UsageError(f"{path}: the tokenizer has no pad token distinct from EOS and none of "
                             f"{family.pad_candidates} exists; add a pad token to the tokenizer.")
        logger.info("Using %r as the pad token (was %r)", candidate, tokenizer.pad_token)
        tokenizer.pad_token = candidate
    tokenizer.padding_side = family.padding_side
    return tokenizer


def load_model(path: Path, family: Family, spec: ModelSpec, quantize: bool = True, dtype: torch.dtype | None = None,
               config=None, **kwargs):
    """Load the base model as the recipe says: dtype, 4-bit quantisation, RoPE scaling.

    Args:
        quantize: honour ``spec.quantization``; ``False`` loads the same base unquantised (merging, baselines).
        dtype: the weights' dtype when not ``spec.dtype`` (``precision.weights_dtype`` decides it for training).
        config: the config ``resolve_model`` read and checked (``ResolvedModel.config``): used as it is, and the
            context window and weights format are not checked again.
        kwargs: passed to ``from_pretrained``.
    """
    dtype = dtype or resolve_dtype(spec.dtype)
    raw = read_config(path)
    kwargs.setdefault("attn_implementation", resolve_attention(spec.attn_implementation, raw))
    if spec.quantization is not None and quantize:
        # Unquantised weights (embeddings, norms, head) are stored in the compute dtype, so the head's matmul
        # runs in it too (peft's prepare_model_for_kbit_training would upcast them all to fp32).
        kwargs.update(quantization_config=_bnb_config(spec.quantization), device_map={"": quantized_device()})
        dtype = resolve_dtype(spec.quantization.compute_dtype)
    if config is None:
        _check_weights_format(path, spec)
    if _is_original_chatglm2(family, raw):
        from .chatglm2 import load_chatglm2

        return _with_rope(load_chatglm2(path, dtype=dtype, **kwargs), spec, checked=config is not None)
    from transformers import AutoModelForCausalLM

    if config is None:
        config = load_config(path, family, spec, raw)
        check_context_window(config, spec)
    else:
        config = copy.deepcopy(config)  # loading writes into it (RoPE scaling, the kernel): not into the caller's
    if spec.rope_scaling:
        config.rope_parameters = rope_parameters(config, spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                     use_safetensors=not spec.allow_pickle,
                                                     trust_remote_code=spec.trust_remote_code, **kwargs)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused what the pickle holds: safe
        reason = str(err).strip().splitlines()[0]
        raise ModelWeightsError(f"{path}: its pickle (.bin) weights hold more than tensors, which weights-only "
                                f"loading refuses ({reason}); convert them to safetensors where you trust the "
                                "file, and train from that.") from None
    if "quantization_config" not in kwargs:
        return model
    return _keep_4bit_weights_trainable(_release_checkpoint_pages(model))


def _keep_4bit_weights_trainable(model):
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit``'s weight the first time it runs in eval
    mode without gradients (our before-training baseline, any evaluation) and from then on multiplies through
    ``gemv_4bit``, which has no autograd formula: training after that silently drops the gradient through every
    4-bit matmul (measured: QLoRA adapter gradients off by 120 % against LoRA over the dequantised base). Keeping
    the plain layout costs some CPU inference speed and nothing on GPUs.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def _release_checkpoint_pages(model):
    """Copy the unquantised tensors (embeddings, norms) off the memory-mapped checkpoint.

    Quantising reads every page of the full-precision file, and those pages stay resident while any tensor
    still points into the mapping; copying the few unquantised tensors lets the mapping close. Measured on
    SmolLM2-135M in NF4: resident memory after loading 1.10 GB -> 0.64 GB.
    """
    for tensor in list(model.parameters()) + list(model.buffers()):
        if type(tensor).__name__ != "Params4bit":
            tensor.data = tensor.data.clone()
    gc.collect()
    return model


class ModelWeightsError(UserError, ValueError):
    """The model folder's weights are missing or in a format the recipe does not allow."""


def _check_weights_format(path: Path, spec: ModelSpec) -> None:
    """Refuse pickle-only checkpoints unless the recipe opts in: unpickling can execute code."""
    if spec.allow_pickle or any(Path(path).glob("*.safetensors")):
        return
    if any(Path(path).glob("*.bin")):
        raise ModelWeightsError(f"{path} holds only .bin (pickle) weights. Convert them to safetensors, or set "
                                "model.allow_pickle=true if you trust the source (ChatGLM2 .bin files are then read "
                                "with torch.load(weights_only=True)).")


def check_weights(path: Path, spec: ModelSpec) -> None:
    """What loading would find wrong with the folder's weights, found without loading them (``--dry-run`` and
    the start of every run): pickle-only weights the recipe does not allow, no weights, a damaged safetensors file.

    Raises:
        ModelWeightsError: no usable weights. CorruptFileError: a safetensors file is cut short.
    """
    _check_weights_format(path, spec)
    if not check_safetensors_in(path) and not any(Path(path).glob("*.bin")):
        raise ModelWeightsError(f"{path} (model.path) has no model weights: expected *.safetensors (or .bin) "
                                "files beside config.json.")


def _is_original_chatglm2(family: Family, raw: dict) -> bool:
    """A ChatGLM2 folder in THUDM's own format (converted on load), not one already converted to ``glm``."""
    return family.name == "chatglm2" and raw.get("model_type") == "chatglm"


def load_config(path: Path, family: Family, spec: ModelSpec, raw: dict | None = None):
    """The transformers config of the base model (an original ChatGLM2 config is converted).

    Args:
        raw: ``config.json`` already read by the caller, to avoid reading it again.
    """
    raw = raw if raw is not None else read_config(path)
    if _is_original_chatglm2(family, raw):
        from .chatglm2 import convert_config

        return convert_config(raw)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)


def native_window(config) -> int | None:
    """The context length the model was trained with, under whichever name its config uses."""
    for name in ("max_position_embeddings", "n_positions", "seq_length"):
        if getattr(config, name, None):
            return int(getattr(config, name))
    return None


def check_context_window(config, spec: ModelSpec) -> None:
    """Refuse a max_length past the native window unless RoPE scaling stretches the window far enough."""
    window = native_window(config)
    if window is None or spec.max_length <= window:
        return
    if not spec.rope_scaling:
        raise UsageError(f"model.max_length={spec.max_length} exceeds the model's native window of {window} tokens; "
                         f"lower it, or set model.rope_scaling=linear (or dynamic) with "
                         f"model.rope_factor>={spec.max_length / window:.2f}.")
    if getattr(config, "model_type", "") == "opt":
        raise UsageError("OPT uses learned absolute positions: RoPE scaling cannot extend its window.")
    if spec.max_length > window * spec.rope_factor:
        raise UsageError(f"model.max_length={spec.max_length} exceeds native window {window} x rope_factor "
                         f"{spec.rope_factor}; raise model.rope_factor to >= {spec.max_length / window:.2f}.")


def rope_parameters(config, spec: ModelSpec) -> dict:
    """transformers 5's ``rope_parameters`` with the recipe's scaling added (theta and partial factor kept)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.update(rope_type=spec.rope_scaling, factor=spec.rope_factor)
    if spec.rope_scaling == "dynamic":
        params.setdefault("original_max_position_embeddings", native_window(config))
    return params


def _with_rope(model, spec: ModelSpec, checked: bool = False):
    if not checked:
        check_context_window(model.config, spec)
    if spec.rope_scaling:  # a converted ChatGLM2 is built in memory: rebuild its rotary tables, scaled
        model.config.rope_parameters = rope_parameters(model.config, spec)
        rotary = model.model.rotary_emb
        fresh = type(rotary)(config=model.config)
        model.model.rotary_emb = fresh.to(rotary.inv_freq.device)
    return model


def quantized_device() -> str:
    """This process's device: where a 4-bit model must be built (bitsandbytes quantises on the device it loads
    to), and where a loaded run answers (``finetune.inference.load_run``).

    Under torchrun this is the process's own GPU, ``cuda:LOCAL_RANK``: the model is loaded before the Trainer
    sets the current device, so ``torch.cuda.current_device()`` would put every rank on GPU 0.
    """
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def _bnb_config(quant):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
                              bnb_4bit_use_double_quant=quant.double_quant,
                              bnb_4bit_compute_dtype=resolve_dtype(quant.compute_dtype))
