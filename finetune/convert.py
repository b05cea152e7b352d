"""The former name of :mod:`finetune.convert_checkpoint` (checkpoints, not data: that is ``finetune.data convert``),
kept so ``python -m finetune.convert chatglm2 SRC DST`` still works."""
from __future__ import annotations

import sys

from .convert_checkpoint import main

__all__ = ["main"]

if __name__ == "__main__":
    main(sys.argv[1:])
