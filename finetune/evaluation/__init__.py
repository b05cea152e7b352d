"""Evaluation of a model in memory: batched generation with the run's own template, ROUGE/BLEU-4 and exact-match
scores (ChatGLM2's recipe for Chinese, the usual one for English), scoring label data by answer likelihood, the
generation metrics logged at every evaluation during training, and the before/after comparison a run ends with. It
sits above training (generation pads batches with its collator, the comparison reads the trainer's state) and knows
nothing of saved runs: loading one, and the ``python -m finetune.evaluate`` command line, are workflows above it.
"""
from .before_after import BeforeAfter
from .generation import generate
from .generation_eval import GenerationEval
from .metrics import compute_scores, format_table, score_difference, score_predictions
from .verbalizer import verbalizer_accuracy

__all__ = ["BeforeAfter", "GenerationEval", "compute_scores", "format_table", "generate", "score_difference",
           "score_predictions", "verbalizer_accuracy"]
