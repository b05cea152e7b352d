"""What can be exported, and the reason and the alternative when something cannot."""
from __future__ import annotations

import gguf

from ..errors import UserError

__all__ = ["ExportRefused", "GGUF_ARCHITECTURES", "QUANT_TYPES", "quant_type", "check_exportable"]


class ExportRefused(UserError, ValueError):
    """The run or the option cannot become a working GGUF file; the message says why and what to do."""


QUANT_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
"""Types the gguf package's own quantisers write (``gguf.quants``), best first."""


def quant_type(name: str) -> gguf.GGMLQuantizationType:
    """The GGML type for ``--quant NAME``.

    Raises:
        ExportRefused: for a type the gguf package cannot write (K-quants, i-quants) or an unknown name.
    """
    key = name.lower()
    if key in QUANT_TYPES:
        return gguf.GGMLQuantizationType[key.upper()]
    known = set(gguf.GGMLQuantizationType.__members__) | {
        m.removeprefix("MOSTLY_") for m in gguf.LlamaFileType.__members__}
    if key.upper() in known:
        raise ExportRefused(
            f"--quant {name}: the gguf package has no quantiser for {key.upper()} (K- and i-quants need "
            f"llama.cpp's C code); export f16 and run `llama-quantize OUT.gguf OUT-{key}.gguf {key.upper()}`")
    raise ExportRefused(f"--quant {name}: unknown type; choose one of {', '.join(QUANT_TYPES)}")


GGUF_ARCHITECTURES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "phi3": gguf.MODEL_ARCH.PHI3,
}
"""llama.cpp's architecture for each family exported, as its ``convert_hf_to_gguf.py`` registers the Hugging Face
classes (``MistralForCausalLM`` is converted by its ``LlamaModel``); each is read back by transformers' GGUF loader in
``tests/test_export_families.py``."""

NOT_EXPORTED = {
    "gemma": "Gemma's SentencePiece tokenizer (byte fallback) needs the piece scores of tokenizer.model, which "
             "tokenizer.json does not hold, and its architecture (offset norms, soft-capping, sliding-window layers) "
             "is not written here; merge the run (`python -m finetune.merge RUN OUT`), copy the base model's "
             "tokenizer.model into OUT and convert OUT with llama.cpp's convert_hf_to_gguf.py",
}
"""Why a registered family is not exported, where there is more to say than that llama.cpp lacks it."""


def check_exportable(recipe, family_name: str, method) -> None:
    """Refuse runs no GGUF runtime can load, naming the reason and the way out.

    Args:
        method: the run's ``finetune.methods.Method``: its run folder holds the whole model, or it merges.

    Raises:
        ExportRefused: for a method that does neither (P-Tuning v2 prefixes), families not in
            ``GGUF_ARCHITECTURES``, and RoPE scaling llama.cpp lacks.
    """
    if not (method.weights_in_run or method.merges):
        raise ExportRefused(method.not_exported or f"a {method.name} run neither holds the whole model nor merges "
                            "into the base, and a GGUF file needs one of them")
    if family_name not in GGUF_ARCHITECTURES:
        raise ExportRefused(f"the {family_name} family is not exported: " + NOT_EXPORTED.get(
            family_name, f"this exporter writes the {', '.join(GGUF_ARCHITECTURES)} families only; merge the run "
            "(`python -m finetune.merge RUN OUT`) and convert OUT with llama.cpp's convert_hf_to_gguf.py if it "
            "supports the architecture"))
    if recipe.model.rope_scaling == "dynamic":
        raise ExportRefused(
            "model.rope_scaling=dynamic (NTK) has no llama.cpp equivalent, so positions past the native window "
            "would be served differently than trained; retrain with model.rope_scaling=linear to export")
