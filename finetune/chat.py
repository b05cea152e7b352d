"""Chat with a saved run in its training template: ``python -m finetune.chat RUN_DIR [--prompt TEXT]``.

The whole history is rendered with the run's own template on every turn, so the model sees the prompt format it was
trained on, previous answers included. PEFT and plain models stream their answer token by token through
transformers' ``TextStreamer``; a P-Tuning ``PrefixModel`` decodes in its own loop, which takes no streamer, so its
answer is printed when it is complete. ``/reset`` clears the history, ``/exit`` or end of input quits.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from transformers import TextStreamer

from .data.tokenize import Encoder
from .errors import add_verbose_flag, guarded
from .evaluation import generate
from .inference import load_run
from .methods.ptuning import PrefixModel

__all__ = ["Chat", "main"]

logger = logging.getLogger(__name__)


class Chat:
    """A conversation with one model: the history, and how it is rendered and answered.

    Args:
        model: the model (PEFT, plain or ``PrefixModel``).
        tokenizer: its tokenizer.
        template: the template it was trained with.
        system: system prompt; ``None`` keeps the template's default.
        max_new_tokens: longest answer.
        **generate_kwargs: sampling settings passed to ``generate`` (greedy when empty).
    """

    def __init__(self, model, tokenizer, template, system: Optional[str] = None, max_new_tokens: int = 256,
                 **generate_kwargs):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.system, self.max_new_tokens, self.generate_kwargs = system, max_new_tokens, generate_kwargs
        self.encoder = Encoder(tokenizer, template, max_length=10**9)
        self.messages: list[dict] = []
        self.reset()

    @property
    def streams(self) -> bool:
        """Whether answers can be streamed (transformers' ``generate`` takes a streamer; ``PrefixModel``'s not)."""
        return not isinstance(self.model, PrefixModel)

    def reset(self) -> None:
        """Forget the conversation, keeping the system prompt."""
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []

    def render(self, user_text: Optional[str] = None) -> str:
        """The prompt text the model would see: the history, plus ``user_text`` as a new turn if given."""
        messages = self.messages + ([{"role": "user", "content": user_text}] if user_text is not None else [])
        return "".join(text for text, _ in self.encoder.render(messages))

    def ask(self, text: str, stream: bool = False) -> str:
        """Answer ``text`` in the context of the history and add both turns to it.

        Args:
            text: the user's message.
            stream: write the answer to stdout as it is generated (only when :attr:`streams`).

        Returns:
            The answer, stripped, as ``generate`` returns it.
        """
        messages = self.messages + [{"role": "user", "content": text}]
        kwargs = dict(self.generate_kwargs)
        if stream and self.streams:
            kwargs["streamer"] = TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        answer = generate(self.model, self.tokenizer, self.template, [messages], self.max_new_tokens, batch_size=1,
                          progress=False, **kwargs)[0]
        self.messages = messages + [{"role": "assistant", "content": answer}]
        return answer


def _loop(chat: Chat) -> None:
    """Read user turns from stdin until ``/exit`` or end of input."""
    while True:
        try:
            text = input("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if text == "/exit":
            return
        if text == "/reset":
            chat.reset()
            print("(history cleared)")
            continue
        if not text:
            continue
        print("assistant> ", end="", flush=True)
        answer = chat.ask(text, stream=True)
        if not chat.streams:
            print(answer)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.chat", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by python -m finetune.run")
    parser.add_argument("--prompt", help="answer this one message, print the answer and exit (for scripts)")
    parser.add_argument("--system", help="system prompt (default: the template's)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--base", action="store_true", help="chat with the untrained base model instead")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.7)
    parser.add_argument("--temperature", type=float, default=0.95)
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    return guarded(lambda: _chat(args), args.verbose)


def _chat(args: argparse.Namespace) -> int:
    run = load_run(args.run_dir, base=args.base)
    sampling = {"do_sample": True, "top_p": args.top_p, "temperature": args.temperature} if args.do_sample else {}
    chat = Chat(run.model, run.tokenizer, run.template, args.system, args.max_new_tokens, **sampling)
    if args.prompt is not None:
        print(chat.ask(args.prompt))
        return 0
    print(f"Chatting with {args.run_dir} (template {run.template.name}). /reset clears the history, /exit quits.")
    _loop(chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
