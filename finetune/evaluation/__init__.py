"""Evaluation of a model in memory: batched generation with the run's own template, ROUGE/BLEU-4 and exact-match
scores (ChatGLM2's recipe for Chinese, the usual one for English), scoring label data by answer likelihood, and the
generation metrics logged at every evaluation during training. It sits above training (generation pads batches with
its collator) and knows nothing of saved runs: loading one and the ``python -m finetune.evaluate`` command line are
workflows above it.
"""
from .generation import generate
from .generation_eval import GenerationEval
from .metrics import compute_scores
from .verbalizer import verbalizer_accuracy

__all__ = ["GenerationEval", "compute_scores", "generate", "verbalizer_accuracy"]
