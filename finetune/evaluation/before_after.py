"""How a training run ends: the held-out loss and sample answers of the untrained base beside the trained model's.

:class:`BeforeAfter` is a training helper, built by ``finetune.train`` around the run's trainer: it reads the
trainer's log history, its ``generation_eval`` and its model, and writes ``samples.json`` into the run folder.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ..conversation import plain_messages, prompt_messages
from .generation import generate
from .metrics import format_table, score_difference, score_predictions

__all__ = ["BeforeAfter"]

logger = logging.getLogger(__name__)


class BeforeAfter:
    """How a run ends: held-out eval loss and answers to the first ``eval.samples`` held-out prompts, from the
    untrained base (before) and the trained model (after), scored, logged and written to ``samples.json``.

    Args:
        trainer: the run's trainer (its ``evaluate`` gives the loss; its ``generation_eval``, when on, may already
            have answered the same prompts, and its answers are then reused instead of generated twice).
        eval_data: the tokenized held-out split (its ``messages`` column).
        untrained: the method's baseline context (``Method.untrained``).
    """

    def __init__(self, trainer, eval_data, spec, untrained):
        self.trainer, self.spec, self.untrained = trainer, spec, untrained
        count = min(spec.samples, len(eval_data))
        shown = eval_data.select(range(count))
        self.conversations = [plain_messages(c) for c in shown["messages"]]
        self.tools = shown["tools"] if "tools" in shown.column_names else None
        self.before: tuple[float, list[str]] = (float("nan"), [])

    def measure_before(self) -> None:
        with self.untrained(self.trainer.model):
            self.before = self._measure()

    def measure_after(self, output_dir: Path) -> dict:
        """Measure the trained model, log the comparison and write ``samples.json``; returns what it holds."""
        (loss_before, before), (loss_after, after) = self.before, self._measure()
        result = {"eval_loss_before": loss_before, "eval_loss_after": loss_after, "scores": None, "samples": []}
        if self.conversations:
            rows, scores = score_predictions(self.conversations, after)
            _, baseline = score_predictions(self.conversations, before, scores["language"])
            result["scores"] = {"scores": scores, "baseline": baseline,
                                "difference": score_difference(scores, baseline)}
            result["samples"] = [{"messages": prompt_messages(c)[0], "prompt": row["prompt"],
                                  "reference": row["reference"], "before": b, "after": row["prediction"]}
                                 for c, row, b in zip(self.conversations, rows, before)]
        if self.trainer.is_world_process_zero():
            (output_dir / "samples.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        logger.info("%s", _comparison(result))
        if result["scores"]:
            logger.info("Held-out metrics on %d generated answers (base = before training):\n%s",
                        len(result["samples"]), format_table(result["scores"]))
        return result

    def _measure(self) -> tuple[float, list[str]]:
        """Eval loss on the held-out split and answers to the sample prompts.

        With ``training.eval_strategy`` on, the Trainer has already evaluated the final weights at the last step
        (unless ``load_best_model_at_end`` swapped them since): that evaluation is used rather than run twice.
        """
        trainer = self.trainer
        last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
        final = trainer.state.global_step > 0 and not trainer.args.load_best_model_at_end
        if final and last is not None and last["step"] == trainer.state.global_step:
            loss = last["eval_loss"]
        else:
            loss = trainer.evaluate()["eval_loss"]
        generated = trainer.generation_eval
        if generated is not None and generated.answered(self.conversations):
            return loss, generated.predictions[:len(self.conversations)]
        prompts = [prompt_messages(c)[0] for c in self.conversations]
        answers = generate(trainer.model, trainer.processing_class, trainer.template, prompts,
                           self.spec.max_new_tokens, tools=self.tools) if prompts else []
        return loss, answers


def _comparison(result: dict) -> str:
    samples = result["samples"]
    lines = [f"Held-out eval loss: before {result['eval_loss_before']:.4f} -> after {result['eval_loss_after']:.4f}"]
    for i, s in enumerate(samples):
        lines += [f"--- held-out example {i}", f"prompt:    {_short(s['prompt'])}",
                  f"reference: {_short(s['reference'])}", f"before:    {_short(s['before'])}",
                  f"after:     {_short(s['after'])}"]
    if samples:
        after = sum(s["after"].strip() == s["reference"].strip() for s in samples)
        before = sum(s["before"].strip() == s["reference"].strip() for s in samples)
        lines.append(f"Exact match on {len(samples)} held-out prompts: before {before}, after {after}")
    return "\n".join(lines)


def _short(text: str, width: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
