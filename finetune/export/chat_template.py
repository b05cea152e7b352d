"""The run's prompt template rewritten for the runtimes: Jinja (GGUF ``tokenizer.chat_template``) and Go (Ollama).

A :class:`~finetune.templates.Template` is data (format strings plus a few flags), so both templates are
generated from its fields rather than written by hand per format; ``tests/test_export.py`` checks that
transformers' ``apply_chat_template`` renders exactly the string the project's template renders. Every literal is
emitted as a quoted string expression (``{{ "..." }}``), so neither Jinja's block trimming nor Go's whitespace
rules can change a character of the trained format.
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Callable, Optional

from ..data.tokenize import auto_prefix_ids
from ..templates import TokenizerTemplate
from .checks import ExportRefused

__all__ = ["PromptFormat", "jinja_chat_template", "ollama_template", "stop_strings"]


@dataclass(frozen=True)
class PromptFormat:
    """A run's template with the tokenizer texts and the system prompt it was trained with."""

    template: object
    """The run's ``template.json``: a :class:`Template` or :class:`TokenizerTemplate`."""
    bos: str
    """Text of the tokens the tokenizer prepends by itself (the template's ``{bos}``)."""
    eos: str
    system: Optional[str] = None
    """``data.system`` of the recipe: the system prompt of examples without one; ``None`` = template default."""

    @classmethod
    def for_tokenizer(cls, template, tokenizer, system: Optional[str] = None) -> "PromptFormat":
        """The format as ``tokenizer`` writes it: its automatic prefix (measured, not read from a flag) and EOS."""
        prefix = auto_prefix_ids(tokenizer)
        return cls(template, bos=tokenizer.decode(prefix) if prefix else "", eos=tokenizer.eos_token or "",
                   system=system)


def jinja_chat_template(fmt: PromptFormat, tokenizer_template: Optional[str] = None) -> str:
    """A Jinja chat template that renders conversations exactly as the run's template did in training.

    User turns end with the answer header, as in training, so ``add_generation_prompt`` changes nothing.

    Args:
        tokenizer_template: the tokenizer's own template, used as it is when the run trained with it.
    """
    template = fmt.template
    if isinstance(template, TokenizerTemplate):
        if not tokenizer_template:
            raise ExportRefused("the run trained with the tokenizer's chat template, but its tokenizer has none")
        return tokenizer_template
    fields = _JinjaFields(fmt)
    return "".join([
        "{%- set ns = namespace(round=0, answers=0) -%}",
        _jinja_system(fmt),
        f"{{%- set system_block = ({_expression(template.system, fields.field)}) if system else '' -%}}",
        f"{{{{ {_expression(template.prefix, fields.field)} }}}}",
        "" if template.system_in_first_user else "{{ system_block }}",
        "{%- for message in turns -%}{%- if message['role'] == 'user' -%}",
        _jinja_user(template, fields),
        "{%- elif message['role'] == 'assistant' -%}",
        _jinja_answer(fmt, fields),
        "{%- endif -%}{%- endfor -%}",
    ])


def _jinja_system(fmt: PromptFormat) -> str:
    """Sets ``system`` (the conversation's, else the trained default) and ``turns`` (the other messages)."""
    template = fmt.template
    default = _quote(template.default_system if fmt.system is None else fmt.system)
    with_input = ""
    if fmt.system is None and template.default_system_with_input:  # Alpaca's other header
        with_input = ("{%- if turns and turns[0]['input'] is defined and turns[0]['input'] -%}"
                      f"{{%- set system = {_quote(template.default_system_with_input)} -%}}{{%- endif -%}}")
    return ("{%- if messages and messages[0]['role'] == 'system' -%}"
            "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
            f"{{%- else -%}}{{%- set system = {default} -%}}{{%- set turns = messages -%}}{with_input}"
            "{%- endif -%}")


def _jinja_user(template, fields: "_JinjaFields") -> str:
    """A user turn, ending with the answer header (the generation prompt of training)."""
    content = "message['content'] | trim" if template.strip_content else "message['content']"
    if template.system_in_first_user:
        content = f"(system_block if ns.round == 1 else '') ~ {content}"
    user = _expression(template.user, fields.field)
    if template.user_with_input:
        user = f"({_expression(template.user_with_input, fields.field)} if input else {user})"
    join_input = "" if template.user_with_input else (
        "{%- if input -%}{%- set content = content ~ '\\n\\n' ~ input -%}{%- endif -%}")
    separator = (f"{{%- if loop.index0 > 0 -%}}{{{{ {_quote(template.separator)} }}}}{{%- endif -%}}"
                 if template.separator else "")
    return ("{%- set ns.round = ns.round + 1 -%}"
            "{%- set input = message['input'] if message['input'] is defined and message['input'] else '' -%}"
            f"{{%- set content = {content} -%}}{join_input}{separator}{{{{ {user} }}}}")


def _jinja_answer(fmt: PromptFormat, fields: "_JinjaFields") -> str:
    """An assistant turn; formats that end only the last answer with EOS count the answers first."""
    template = fmt.template
    content = "message['content'] | trim" if template.strip_content else "message['content']"
    answer_eos = _quote(fmt.eos)
    if not template.eos_every_turn:
        answer_eos += (" if ns.answers == (turns | selectattr('role', 'equalto', 'assistant') | list | length)"
                       " else ''")
    return ("{%- set ns.answers = ns.answers + 1 -%}"
            f"{{%- set answer_eos = {answer_eos} -%}}{{%- set content = {content} -%}}"
            f"{{{{ {_expression(template.assistant, fields.answer_field)} }}}}")


def ollama_template(fmt: PromptFormat) -> str:
    """The same format as an Ollama ``TEMPLATE`` (Go text/template over ``.System`` and ``.Messages``).

    The system prompt comes from the Modelfile's ``SYSTEM`` line (``.System``). A ``{bos}`` at the very start
    is left to the runtime, which prepends BOS itself when the GGUF file says the tokenizer does.

    Raises:
        ExportRefused: for formats Go templates cannot express (numbered rounds, EOS on the last answer only) or
            a run trained with the tokenizer's own Jinja template.
    """
    template = fmt.template
    if isinstance(template, TokenizerTemplate):
        raise ExportRefused("the run trained with the tokenizer's own Jinja chat template, which has no Go "
                            "(Ollama) form to derive; the GGUF file carries it for llama.cpp and LM Studio")
    if "{round}" in template.user or not template.eos_every_turn:
        raise ExportRefused(f"template {template.name!r} numbers rounds or ends only the last answer with EOS, "
                            "which Ollama's Go templates cannot express; use llama.cpp with the GGUF's template")
    go = _GoFields(fmt)
    system_block = _go_text(template.system, go.field)
    user_content = "{{ .Content }}"
    if template.system_in_first_user:
        first_system = f"{{{{ if $first }}}}{{{{ if $.System }}}}{system_block}{{{{ end }}}}{{{{ end }}}}"
        user_content = first_system + user_content
    separator = f"{{{{ if not $first }}}}{_go_literal(template.separator)}{{{{ end }}}}" if template.separator else ""
    user = _go_text(template.user, go.field).replace("{{ .Content }}", user_content)
    return "".join([
        _go_text(template.prefix.removeprefix("{bos}"), go.field),
        "" if template.system_in_first_user else f"{{{{ if .System }}}}{system_block}{{{{ end }}}}",
        "{{- $first := true }}{{- range .Messages }}",
        f"{{{{- if eq .Role \"user\" }}}}{separator}{user}{{{{ $first = false }}}}",
        f"{{{{- else if eq .Role \"assistant\" }}}}{_go_text(template.assistant, go.field)}",
        "{{- end }}{{- end }}",
    ])


def stop_strings(fmt: PromptFormat) -> list[str]:
    """The strings that end an answer in the trained format: the answer's end marker and EOS when it is used."""
    template = fmt.template
    if isinstance(template, TokenizerTemplate):
        return [fmt.eos] if fmt.eos else []
    tail = template.assistant.split("{content}", 1)[-1]
    stops = [part.strip() for part in tail.split("{eos}")]
    if "{eos}" in tail and fmt.eos:
        stops.append(fmt.eos)
    return list(dict.fromkeys(s for s in stops if s))


def trained_system(fmt: PromptFormat) -> str:
    """The system prompt examples without one were trained with (Alpaca's with-input header aside)."""
    if fmt.system is not None:
        return fmt.system
    return "" if isinstance(fmt.template, TokenizerTemplate) else fmt.template.default_system


class _JinjaFields:
    """Jinja expressions for the template placeholders."""

    def __init__(self, fmt: PromptFormat):
        self.values = {"content": "content", "input": "input", "round": "ns.round", "system": "system",
                       "bos": _quote(fmt.bos), "eos": _quote(fmt.eos)}

    def field(self, name: str) -> str:
        return self.values[name]

    def answer_field(self, name: str) -> str:
        """In an answer, EOS may be left out (formats that end only the last answer with it)."""
        return "answer_eos" if name == "eos" else self.values[name]


class _GoFields:
    """Go template actions for the placeholders (inside a ``range .Messages``)."""

    def __init__(self, fmt: PromptFormat):
        self.values = {"content": "{{ .Content }}", "system": "{{ $.System }}",
                       "bos": f"{{{{ if not $first }}}}{_go_literal(fmt.bos)}{{{{ end }}}}" if fmt.bos else "",
                       "eos": _go_literal(fmt.eos), "input": ""}

    def field(self, name: str) -> str:
        return self.values[name]


def _expression(fmt: str, field: Callable[[str], str]) -> str:
    """A Jinja expression (``"lit" ~ var ~ ...``) for a ``str.format`` template."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        if literal:
            parts.append(_quote(literal))
        if name is not None:
            parts.append(field(name))
    return " ~ ".join(parts) or "''"


def _go_text(fmt: str, field: Callable[[str], str]) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(fmt):
        out.append(_go_literal(literal))
        if name is not None:
            out.append(field(name))
    return "".join(out)


def _quote(text: str) -> str:
    # JSON string syntax is valid in Jinja and in Go templates; non-ASCII stays as it is.
    return json.dumps(text, ensure_ascii=False)


def _go_literal(text: str) -> str:
    return f"{{{{ {_quote(text)} }}}}" if text else ""
