"""The Ollama ``Modelfile`` beside the GGUF file: the trained template, its stop strings and system prompt.

Ollama guesses a template from the GGUF metadata when a Modelfile gives none, and a guess is how models end up
served in a format they were not trained on; so the Modelfile states all three, derived from ``template.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

from .chat_template import PromptFormat, ollama_template, stop_strings, trained_system

__all__ = ["modelfile_text", "write_modelfile"]


def modelfile_text(gguf_name: str, fmt: PromptFormat) -> str:
    """The Modelfile for ``gguf_name`` (a path relative to the Modelfile)."""
    template = ollama_template(fmt)
    lines = [f"# {getattr(fmt.template, 'name', 'template')} prompt format, as trained (from the run's template.json)",
             f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    system = trained_system(fmt)
    if system:
        lines.append(f'SYSTEM """{system}"""')
    # JSON quoting: Ollama reads the quoted value with Go's string syntax, which JSON's escapes are a subset of.
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stop_strings(fmt)]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_path: Path, fmt: PromptFormat) -> Path:
    """Write ``NAME.Modelfile`` beside ``NAME.gguf`` (several exports can share a folder)."""
    path = gguf_path.with_suffix(".Modelfile")
    path.write_text(modelfile_text(gguf_path.name, fmt), encoding="utf-8")
    return path
