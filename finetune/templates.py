"""Prompt templates: how a conversation becomes text, and which parts of it are trained.

A template turns ``messages`` (``{"role": "system" | "user" | "assistant", "content": ...}``, a user message may
carry an ``input`` field as in Alpaca data) into segments ``(text, supervised)``. Assistant answers are
supervised; everything else is context whose labels become -100. Each built-in template names its source in a
comment beside it; ``tests/test_templates.py`` pins each as a golden string.

Placeholders: ``{content}``, ``{input}``, ``{round}`` (counted from 1), ``{system}``, ``{bos}``, ``{eos}``.
``{bos}`` is the text of the special tokens the tokenizer itself prepends (``<s>`` for Llama-2, nothing for
SmolLM2, ``[gMASK]sop`` for ChatGLM2), so a template never doubles or drops them.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .conversation import user_text
from .errors import UsageError

__all__ = ["Template", "TemplateError", "TokenizerTemplate", "chat_messages", "get_template", "register_template",
           "template_names", "Segment"]

Segment = tuple[str, bool]
"""A piece of rendered text and whether its tokens are supervised."""

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information."
)


@dataclass(frozen=True)
class Template:
    """A prompt format described as data; :meth:`render` is the only logic."""

    name: str
    user: str
    """A user turn, including the header that introduces the answer (the generation prompt ends here)."""
    assistant: str = "{content}{eos}"
    """A supervised assistant turn."""
    user_with_input: Optional[str] = None
    """The first user turn when the example has a non-empty ``input`` (Alpaca's second prompt)."""
    system: str = "{system}"
    """How a system prompt is written; it is left out when the system prompt is empty."""
    default_system: str = ""
    default_system_with_input: Optional[str] = None
    """Alpaca uses a different header when the example has an input."""
    system_in_first_user: bool = False
    """Llama-2 writes the system block inside the first ``[INST]``."""
    prefix: str = "{bos}"
    separator: str = ""
    """Context text between an answer and the next user turn."""
    eos_every_turn: bool = True
    """False for formats (ChatGLM2) whose history answers carry no end token; the last answer still gets one."""
    strip_content: bool = False

    def render(self, messages: Sequence[dict], *, bos: str = "", eos: str = "", tokenizer: Any = None,
               tools: Optional[list] = None) -> list[Segment]:
        """Render a conversation; a trailing user turn renders as the generation prompt.

        The first segment is always the prefix (possibly empty), so the encoder can map ``{bos}`` to the
        tokenizer's own prefix ids instead of re-tokenizing its text.

        Args:
            messages: conversation, optionally starting with a system message.
            bos: text of the tokenizer's automatic prefix tokens.
            eos: the tokenizer's end-of-sequence token text.
            tokenizer: unused here; :class:`TokenizerTemplate` needs it.
            tools: refused: a named template has no way to show tool schemas or calls.

        Raises:
            TemplateError: the conversation has tools, tool calls or tool results.
        """
        if tools or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            raise TemplateError(f"template {self.name!r} cannot show tools, tool calls or tool results; train tool "
                                "data with the model's own chat template (data.template=tokenizer).")
        system, turns = _split_system(messages)
        has_input = bool(turns and turns[0].get("input"))
        if system is None:
            with_input = has_input and self.default_system_with_input
            system = self.default_system_with_input if with_input else self.default_system
        system_block = self.system.format(system=system) if system else ""
        segments: list[Segment] = [(self.prefix.format(bos=bos), False)]
        if system_block and not self.system_in_first_user:
            segments.append((system_block, False))
        n_answers = sum(m["role"] == "assistant" for m in turns)
        round_no = answers = 0
        for i, message in enumerate(turns):
            content = message["content"].strip() if self.strip_content else message["content"]
            if message["role"] == "user":
                round_no += 1
                if round_no == 1 and self.system_in_first_user:
                    content = system_block + content
                fmt = self.user_with_input if (message.get("input") and self.user_with_input) else self.user
                if not self.user_with_input:
                    content = user_text({**message, "content": content})
                if i > 0 and self.separator:
                    segments.append((self.separator, False))
                segments.append((fmt.format(content=content, input=message.get("input") or "", round=round_no,
                                            bos=bos, eos=eos), False))
            else:
                answers += 1
                end = eos if (self.eos_every_turn or answers == n_answers) else ""
                segments.append((self.assistant.format(content=content, eos=end), True))
        return segments[:1] + [s for s in segments[1:] if s[0]]

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"class": "Template", **asdict(self)}


@dataclass(frozen=True)
class TokenizerTemplate:
    """The tokenizer's own chat template (``apply_chat_template``), split into supervised segments.

    The text is the one ``apply_chat_template`` renders for the whole conversation, so a model trains on exactly
    what it is shown at inference; the encoder tokenizes it in one piece (``whole_text``), so the ids equal
    ``apply_chat_template(..., tokenize=True)``. Each assistant turn is found in that text by the two strings the
    template writes around every answer, read off the template once: the generation prompt before it
    (``<|im_start|>assistant\n``) and the end of the turn after it (``<|im_end|>\n``). An answer is supervised as
    the full text shows it: Qwen3's template drops the reasoning of answers before the last user query, so those
    train without it (rendering each turn alone and slicing, the earlier method, cut the next user turn instead).
    """

    name: str = "tokenizer"
    enable_thinking: Optional[bool] = None
    """Passed to the chat template (Qwen3's switch); ``False`` when the run trained without reasoning
    (``data.thinking=drop``), so inference opens the answer with the same empty think block."""

    whole_text = True
    """The encoder tokenizes the concatenated segments once and splits the ids at segment boundaries."""

    def render(self, messages: Sequence[dict], *, bos: str = "", eos: str = "", tokenizer: Any = None,
               tools: Optional[list] = None) -> list[Segment]:
        chat = chat_messages(messages)
        text = self.apply(tokenizer, chat, tools=tools, add_generation_prompt=chat[-1]["role"] != "assistant")
        header, opening, closing = self.markers(tokenizer)
        segments: list[Segment] = [("", False)]
        cursor = 0
        for turn, message in enumerate(chat):
            if message["role"] != "assistant":
                continue
            found = text.find(header, cursor)
            end = text.find(closing, found + len(header)) if found >= 0 else -1
            if end < 0:
                raise TemplateError(f"assistant turn {turn}: the chat template did not write it between {header!r} "
                                    f"and {closing!r} as it does for every other answer; use a named template.")
            # The rest of the generation prompt (Qwen3's empty think block when thinking is off) is context.
            start = found + (len(opening) if text.startswith(opening, found) else len(header))
            segments += [(text[cursor:start], False), (text[start:end + len(closing)], True)]
            cursor = end + len(closing)
        segments.append((text[cursor:], False))
        return segments[:1] + [seg for seg in segments[1:] if seg[0]]

    def apply(self, tokenizer: Any, chat: list[dict], **kwargs) -> str:
        """``apply_chat_template`` as text, with this template's switches and one clear error for what it refuses."""
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UsageError("Template 'tokenizer' needs a tokenizer with a chat_template; pick a named template.")
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        if kwargs.get("tools") is None:
            kwargs.pop("tools", None)
        try:
            return tokenizer.apply_chat_template(chat, tokenize=False, **kwargs)
        except Exception as err:  # jinja's raise_exception() in the template: "System role not supported", ...
            raise TemplateError(f"the tokenizer's chat template refused this conversation: {err}") from None

    def markers(self, tokenizer: Any) -> tuple[str, str, str]:
        """What the template writes around every answer: the header before it, the generation prompt (the header
        and whatever inference adds to it) and the end of the turn. Read off a two-turn probe once per tokenizer."""
        key = (id(tokenizer), tokenizer.chat_template, self.enable_thinking)
        if key not in _MARKERS:
            _MARKERS[key] = self._probe(tokenizer)
        return _MARKERS[key]

    def _probe(self, tokenizer: Any) -> tuple[str, str, str]:
        first, second = "\ue000", "\ue001"  # private-use characters: no template changes them
        user = {"role": "user", "content": "x"}
        bare = self.apply(tokenizer, [user])
        asked = self.apply(tokenizer, [user], add_generation_prompt=True)
        two = self.apply(tokenizer, [user, {"role": "assistant", "content": first}, user,
                                     {"role": "assistant", "content": second}])
        if not (asked.startswith(bare) and two.startswith(bare) and first in two and second in two):
            raise TemplateError("the chat template does not render a conversation's beginning the same way as the "
                                "whole conversation, so answers cannot be located; use a named template.")
        opening = asked[len(bare):]
        header = os.path.commonprefix([opening, two[len(bare):two.index(first)]])
        closing = os.path.commonprefix([two[two.index(first) + 1:], two[two.index(second) + 1:]])
        if not header or not closing:
            raise TemplateError(f"the chat template writes no generation prompt ({opening!r}) or no end of turn "
                                f"({closing!r}), so answers cannot be located (Llama 3.0's first template appends "
                                "the prompt to every rendering); use a named template (data.template=llama3, ...).")
        return header, opening, closing

    def to_dict(self) -> dict:
        return {"class": "TokenizerTemplate", "name": self.name, "enable_thinking": self.enable_thinking}


_MARKERS: dict[tuple, tuple[str, str, str]] = {}


class TemplateError(UsageError):
    """A conversation the template cannot render, or a template whose answers cannot be located."""


def chat_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as chat templates expect them: an Alpaca ``input`` joined to its instruction, ``tool_calls`` as
    objects (they travel as JSON text in the data cache), and an empty system prompt (``data.system=""``) left
    out, since inference never sends one."""
    chat = []
    for message in messages:
        out = {k: v for k, v in message.items() if k != "input" and v is not None}
        out["content"] = user_text(message)
        if isinstance(out.get("tool_calls"), str):
            out["tool_calls"] = json.loads(out["tool_calls"])
        if not (out["role"] == "system" and not out["content"]):
            chat.append(out)
    return chat


def _split_system(messages: Sequence[dict]) -> tuple[Optional[str], list[dict]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return None, list(messages)


_REGISTRY: dict[str, Any] = {}


def register_template(template) -> None:
    """Add a template; names are unique and entries immutable."""
    if template.name in _REGISTRY:
        raise ValueError(f"Template {template.name!r} is already registered.")
    _REGISTRY[template.name] = template


def get_template(name: str):
    """Look a template up by name.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _REGISTRY:
        raise UsageError(f"Unknown template {name!r}; known templates: {', '.join(template_names())}.")
    return _REGISTRY[name]


def template_names() -> list[str]:
    return sorted(_REGISTRY)


def template_from_dict(data: dict):
    """Rebuild a template saved with ``to_dict`` (a run folder's ``template.json``)."""
    data = dict(data)
    cls = {"Template": Template, "TokenizerTemplate": TokenizerTemplate}[data.pop("class")]
    return cls(**data)


ALPACA_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.")

for _template in [
    # stanford_alpaca PROMPT_DICT; the answer follows "### Response:" directly, as in its train.py.
    Template(
        name="alpaca", system="{system}\n\n", default_system=ALPACA_HEADER,
        default_system_with_input=(
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request."),
        user="### Instruction:\n{content}\n\n### Response:",
        user_with_input="### Instruction:\n{content}\n\n### Input:\n{input}\n\n### Response:", separator="\n\n"),
    # Meta's format; each human turn starts with BOS, each answer is " {a} </s>" (LinkSoul's encoding).
    Template(
        name="llama2", prefix="", system="<<SYS>>\n{system}\n<</SYS>>\n\n", default_system=LLAMA2_SYSTEM,
        system_in_first_user=True, user="{bos}[INST] {content} [/INST]", assistant=" {content} {eos}"),
    # Linly-Chinese-LLaMA-2's prompt (the prompt stripped); also in LLaMA-Factory's template list.
    Template(name="linly", user="### Instruction:{content} ### Response:", strip_content=True, separator="\n"),
    # Nous-Hermes' model card: Alpaca-like, with a newline after each header.
    Template(
        name="nous", user="### Instruction:\n{content}\n\n### Response:\n", separator="\n\n",
        user_with_input="### Instruction:\n{content}\n\n### Input:\n{input}\n\n### Response:\n"),
    # The yayi-7b-llama2 model card (its system prompt is Llama-2's, renamed to YaYi).
    Template(
        name="yayi", system="<|System|>:\n{system}\n\n", separator="\n\n",
        default_system=LLAMA2_SYSTEM.replace(
            "honest assistant.", "honest assistant named YaYi developed by Beijing Wenge Technology Co.,Ltd."),
        user="<|Human|>:\n{content}\n\n<|YaYi|>:\n"),
    # The StableBeluga2 model card.
    Template(
        name="stablebeluga2", system="### System:\n{system}\n\n", separator="\n\n",
        default_system=("You are Stable Beluga, an AI that follows instructions extremely well. Help as much as you "
                        "can. Remember, be safe, and don't do anything illegal."),
        user="### User: {content}\n\n### Assistant:\n"),
    # The Guanaco (QLoRA paper) model card: one-line turns.
    Template(
        name="guanaco", system="{system}\n", separator=" ",
        default_system=("A chat between a curious human and an artificial intelligence assistant. The assistant "
                        "gives helpful, detailed, and polite answers to the user's questions."),
        user="### Human: {content} ### Assistant: "),
    # ChatGLM2: history answers are plain text; only the final answer ends with EOS, as in its P-Tuning scripts.
    Template(
        name="chatglm2", system="{system}\n\n", system_in_first_user=True, eos_every_turn=False,
        user="[Round {round}]\n\n问：{content}\n\n答：", separator="\n\n"),
    # FastChat's vicuna_v1.1: "... USER: q ASSISTANT: a</s>USER: ..."
    Template(
        name="vicuna", system="{system} ", assistant=" {content}{eos}",
        default_system=("A chat between a curious user and an artificial intelligence assistant. The assistant "
                        "gives helpful, detailed, and polite answers to the user's questions."),
        user="USER: {content} ASSISTANT:"),
    # Plain text (format "text"): the whole text is the answer, as in TRL's dataset_text_field examples.
    Template(name="text", user="{content}"),
    # Firefly's multi-turn layout: <s>input1</s>target1</s>input2</s>target2</s>
    Template(name="firefly", user="{content}{eos}"),
    # ChatML (SmolLM2-Instruct's own chat template, without its default system message).
    Template(
        name="chatml", prefix="", system="<|im_start|>system\n{system}<|im_end|>\n", separator="\n",
        user="<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n", assistant="{content}<|im_end|>"),
    # The QLoRA write-up's DialogSum prompt: parts joined by blank lines, the answer closed by "### End".
    Template(
        name="dialogsum", system="{system}\n\n", default_system="\n" + ALPACA_HEADER,
        user="### Instruct: Summarize the below conversation.\n\n{content}\n\n### Output:\n",
        assistant="{content}\n\n### End{eos}", separator="\n\n"),
    # Today's families, for tokenizers that ship without their chat template (base checkpoints, gemma2's npm
    # package); each is the model's own template as its tokenizer_config.json writes it.
    # Llama 3 Instruct: headers per turn, <|eot_id|> ends each. Like Gemma's below, the template writes its BOS
    # itself, as its chat template does: not every Llama 3 tokenizer prepends one.
    Template(
        name="llama3", prefix="<|begin_of_text|>",
        system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant="{content}<|eot_id|>", strip_content=True),
    # Mistral-7B-Instruct v0.1/v0.2: no system role, so a system prompt opens the first [INST].
    Template(name="mistral", system="{system}\n\n", system_in_first_user=True, user="[INST] {content} [/INST]"),
    # Gemma (1, 2, 3): "model" turns; no system role, so a system prompt opens the first user turn (as Gemma 3's
    # own template does); <end_of_turn> ends each turn.
    Template(
        name="gemma", prefix="<bos>", system="{system}\n\n", system_in_first_user=True, strip_content=True,
        user="<start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n",
        assistant="{content}<end_of_turn>\n"),
    # Phi-3 / Phi-3.5 mini instruct: <|end|> ends each turn.
    Template(
        name="phi3", prefix="", system="<|system|>\n{system}<|end|>\n",
        user="<|user|>\n{content}<|end|>\n<|assistant|>\n", assistant="{content}<|end|>\n"),
    TokenizerTemplate(),
]:
    register_template(_template)
