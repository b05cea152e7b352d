"""The label audit: what the loss will actually see, printed before every run.

Silently all-masked labels and models that never learn to stop (EOS masked, or pad == EOS with a collator that
masks pad) cost users days; these numbers make both visible before any compute is spent.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .tokenize import IGNORE_INDEX

__all__ = ["LabelAudit", "example_spans", "show_example"]


@dataclass
class LabelAudit:
    """Label statistics of one tokenized split."""

    examples: int
    tokens: int
    supervised: int
    eos_labelled: int
    truncated: int
    dropped_turns: int
    pad_is_eos: bool
    skipped: Counter = field(default_factory=Counter)

    @classmethod
    def of(cls, dataset, tokenizer, skipped: Counter | None = None) -> "LabelAudit":
        columns = dataset.select_columns(["num_tokens", "num_supervised", "eos_labelled", "truncated",
                                          "dropped_turns"]).to_dict()
        return cls(
            examples=len(dataset), tokens=sum(columns["num_tokens"]), supervised=sum(columns["num_supervised"]),
            eos_labelled=sum(columns["eos_labelled"]), truncated=sum(columns["truncated"]),
            dropped_turns=sum(columns["dropped_turns"]), skipped=Counter(skipped or {}),
            pad_is_eos=tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id,
        )

    @property
    def supervised_fraction(self) -> float:
        return self.supervised / max(self.tokens, 1)

    def warnings(self) -> list[str]:
        notes = []
        if self.eos_labelled < self.examples:
            notes.append(f"{self.examples - self.eos_labelled} examples have no supervised EOS token: the model "
                         "will not learn to stop on them (truncated answers, or a template without {eos}).")
        if self.pad_is_eos:
            notes.append("pad token == EOS token: collators that mask pad would also mask EOS. finetune's collator "
                         "pads labels with -100 itself, but set a distinct pad token if you use another.")
        if self.truncated:
            notes.append(f"{self.truncated} answers were cut at model.max_length; raise it if that is too many.")
        return notes

    def to_dict(self) -> dict:
        return {
            "examples": self.examples, "tokens": self.tokens, "supervised_tokens": self.supervised,
            "supervised_fraction": round(self.supervised_fraction, 4), "eos_labelled": self.eos_labelled,
            "truncated_answers": self.truncated, "dropped_turns": self.dropped_turns,
            "pad_is_eos": self.pad_is_eos, "skipped": dict(self.skipped),
        }

    def format(self, title: str = "train") -> str:
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        lines = [
            f"Label audit ({title}): {self.examples} examples, {self.tokens:,} tokens, "
            f"{self.supervised:,} supervised ({self.supervised_fraction:.1%})",
            f"  EOS labelled in {self.eos_labelled}/{self.examples} examples; answers truncated: {self.truncated}; "
            f"turns dropped: {self.dropped_turns}; skipped: {skipped}",
        ]
        return "\n".join(lines + [f"  warning: {note}" for note in self.warnings()])


def example_spans(input_ids: list[int], labels: list[int], tokenizer) -> list[tuple[str, bool]]:
    """One example as consecutive ``(text, supervised)`` spans: what the loss sees and what it does not."""
    spans, run, run_supervised = [], [], None
    for token, label in zip(input_ids, labels):
        supervised = label != IGNORE_INDEX
        if run and supervised != run_supervised:
            spans.append((tokenizer.decode(run), run_supervised))
            run = []
        run.append(token)
        run_supervised = supervised
    if run:
        spans.append((tokenizer.decode(run), run_supervised))
    return spans


def show_example(input_ids: list[int], labels: list[int], tokenizer, width: int = 1200) -> str:
    """Decode one example with its masked context and supervised spans marked.

    Supervised spans are wrapped in ``[[`` ``]]``; everything outside them has label -100.
    """
    text = "".join(f"[[{t}]]" if supervised else t for t, supervised in example_spans(input_ids, labels, tokenizer))
    return text if len(text) <= width else text[: width // 2] + " … " + text[-width // 2:]
