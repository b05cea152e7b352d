"""Command line: convert a checkpoint into a folder that plain transformers loads.

    python -m finetune.convert_checkpoint chatglm2 SRC DST

``chatglm2`` turns a ChatGLM2-6B folder (remote-code format) into a ``GlmForCausalLM`` folder plus ChatGLM2's
tokenizer, so training and inference need no ``trust_remote_code``. Converting once up front also saves the
per-run conversion when the same base model is used many times.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["main"]


def _chatglm2(src: Path, dst: Path) -> list[str]:
    from .models.chatglm2 import is_chatglm2_checkpoint, save_converted

    if not is_chatglm2_checkpoint(src):
        raise SystemExit(f"error: {src} is not a ChatGLM2 checkpoint (expected config.json with model_type "
                         f"'chatglm' and multi_query_group_num / padded_vocab_size).")
    return save_converted(src, dst)


CONVERTERS = {"chatglm2": _chatglm2}
"""Source format -> function(src, dst) returning the names of the files written."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune.convert_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("format", choices=sorted(CONVERTERS), help="source checkpoint format")
    parser.add_argument("src", type=Path, help="folder of the source checkpoint")
    parser.add_argument("dst", type=Path, help="output folder (created if missing)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.src.is_dir():
        raise SystemExit(f"error: {args.src} is not a folder.")
    written = CONVERTERS[args.format](args.src, args.dst)
    print(f"Wrote {args.dst}:")
    for name in written:
        print(f"  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
