"""Model families, the embedded default model, loading, and the packed attention kernel models are loaded with."""
from ..precision import resolve_dtype
from .attention import PACKED_SDPA
from .embedded import EMBEDDED_MODELS, embedded_model_path
from .family import Family, detect_family, family_names, get_family, register_family
from .loading import (
    ModelNotFoundError,
    check_context_window,
    load_config,
    load_model,
    load_tokenizer,
    resolve_family,
    resolve_model_path,
)
from .resolve import ResolvedModel, resolve_model

__all__ = ["EMBEDDED_MODELS", "PACKED_SDPA", "Family", "ModelNotFoundError", "detect_family", "embedded_model_path",
           "family_names", "get_family", "check_context_window", "load_config", "load_model", "load_tokenizer",
           "register_family", "resolve_dtype", "ResolvedModel", "resolve_model",
           "resolve_family", "resolve_model_path"]
