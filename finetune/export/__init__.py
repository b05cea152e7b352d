"""Export a fine-tuned run to GGUF (llama.cpp, Ollama, LM Studio) with its trained prompt format.

``python -m finetune.export RUN_DIR OUT.gguf [--quant f16|q8_0|q4_0 ...]`` merges an adapter run, writes the GGUF
file (llama.cpp's architecture for Llama, Mistral, Qwen2, Qwen3 or Phi-3, tokenizer, RoPE, the trained template as
``tokenizer.chat_template``) and an Ollama Modelfile beside it. Modules: ``checks`` (what is refused and why),
``vocab`` (tokenizer keys), ``chat_template`` (Jinja and Go forms of a template), ``gguf_file`` (tensors and
hyper-parameters), ``modelfile``, ``pipeline``.
"""
from .chat_template import PromptFormat, jinja_chat_template, ollama_template, stop_strings
from .checks import QUANT_TYPES, ExportRefused, check_exportable, quant_type
from .gguf_file import permute_for_llama_cpp, write_gguf
from .modelfile import modelfile_text, write_modelfile
from .pipeline import export_run

__all__ = ["ExportRefused", "PromptFormat", "QUANT_TYPES", "check_exportable", "export_run", "jinja_chat_template",
           "modelfile_text", "ollama_template", "permute_for_llama_cpp", "quant_type", "stop_strings", "write_gguf",
           "write_modelfile"]
