"""Generation metrics at every evaluation during training (ROUGE/BLEU-4 beside ``eval_loss``).

For SFT the eval loss is a weak proxy for answer quality; what users compare — ChatGLM2's ADGEN numbers above
all — are scores of generated answers. :class:`GenerationEval` answers the held-out prompts with the model as it
is at that step (left-padded batches, greedy unless the recipe samples, the run's template) and scores them with
the same functions ``python -m finetune.evaluate`` uses, so a checkpoint's logged numbers and a later
``finetune.evaluate`` of that checkpoint agree.

Under DDP each process answers whole batches in turn (batch ``i`` on rank ``i % world``), so every batch is the
one a single process would form and the answers are the same; they are gathered and scored once.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..conversation import plain_messages, prompt_messages

__all__ = ["GenerationEval"]


@dataclass
class GenerationEval:
    """What to generate at each evaluation, and how.

    Args:
        conversations: held-out conversations; each is answered at its last assistant turn.
        max_new_tokens: answer length cap (the main cost control besides ``len(conversations)``).
        batch_size: prompts per ``generate`` call (as ``finetune.evaluate --batch-size``).
        language: ``auto`` (from the references), ``zh`` or ``en``: which metrics (see ``finetune.evaluation.metrics``).
        generate_kwargs: sampling settings (``do_sample``, ``top_p``, ``temperature``); greedy when empty.
        output_dir: where each evaluation's answers are written (by the main process), as
            ``generations/eval-K-step-N.jsonl`` (K counts evaluations: the before-training baseline is ``eval-0``,
            the one after training — on the best checkpoint with ``load_best_model_at_end`` — the last), or ``None``.
    """

    conversations: list
    max_new_tokens: int = 64
    batch_size: int = 8
    language: str = "auto"
    generate_kwargs: dict = field(default_factory=dict)
    output_dir: Optional[Path] = None
    tools: Optional[list] = None
    """Each conversation's tool schemas (JSON text or None), rendered into its prompt as in training."""
    evaluations: int = 0
    predictions: list = field(default_factory=list)
    """The answers of the latest evaluation, in the order of ``conversations``."""

    def __post_init__(self):
        self.conversations = [plain_messages(c) for c in self.conversations]

    def __call__(self, model, tokenizer, template, accelerator, step: int, prefix: str = "eval") -> dict:
        """Answer, gather, score; returns ``{prefix}_<metric>`` values and ``{prefix}_generate_seconds``."""
        from ..language import detect_language
        from .generation import generate
        from .metrics import compute_scores

        started = time.perf_counter()
        prompts, references = zip(*(prompt_messages(c) for c in self.conversations))
        rank, world = accelerator.process_index, accelerator.num_processes
        starts = range(0, len(prompts), self.batch_size)
        batches = [list(prompts[i:i + self.batch_size]) for i in starts]
        tools = [self.tools[i:i + self.batch_size] if self.tools else None for i in starts]
        mine = {i: generate(model, tokenizer, template, batch, self.max_new_tokens, self.batch_size,
                            progress=False, tools=tools[i], **self.generate_kwargs)
                for i, batch in enumerate(batches) if i % world == rank}
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, mine)
            mine = {i: answers for part in gathered for i, answers in part.items()}
        self.predictions = predictions = [answer for i in range(len(batches)) for answer in mine[i]]
        language = detect_language(list(references)) if self.language == "auto" else self.language
        scores = compute_scores(predictions, list(references), language)
        if self.output_dir is not None and accelerator.is_main_process:
            self._write(step, prompts, references, predictions)
        self.evaluations += 1
        metrics = {f"{prefix}_{k}": v for k, v in scores.items() if isinstance(v, (int, float))}
        metrics[f"{prefix}_generate_seconds"] = round(time.perf_counter() - started, 3)
        return metrics

    def answered(self, conversations: list) -> bool:
        """Whether the latest evaluation answered exactly these conversations first, greedily: then its answers
        serve as the before/after samples too, instead of a second generation pass over the same prompts."""
        return (not self.generate_kwargs.get("do_sample") and len(conversations) <= len(self.predictions)
                and [plain_messages(c) for c in conversations] == self.conversations[:len(conversations)])

    def _write(self, step: int, prompts, references, predictions) -> None:
        folder = Path(self.output_dir) / "generations"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"eval-{self.evaluations}-step-{step}.jsonl", "w", encoding="utf-8") as handle:
            for prompt, reference, prediction in zip(prompts, references, predictions):
                handle.write(json.dumps({"messages": prompt, "reference": reference, "prediction": prediction},
                                        ensure_ascii=False) + "\n")
