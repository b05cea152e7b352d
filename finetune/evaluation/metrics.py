"""ROUGE and BLEU for generated text, Chinese or English.

``chinese_scores`` reproduces the official ChatGLM2 P-Tuning ``compute_metrics`` (``ptuning/main.py``) number for
number, so results here can be set beside the ones published for ChatGLM2: ROUGE on jieba words, BLEU-4 on
characters, each rounded to 4 decimals per example and then averaged. ``english_scores`` is the usual English
counterpart (Google's ``rouge_score`` with stemming, BLEU-4 on whitespace words, exact match).

On top of them, what ``python -m finetune.evaluate`` and the before/after comparison of a run share: answers to
conversations scored (:func:`score_predictions`), run minus base (:func:`score_difference`) and the table of both.
"""
from __future__ import annotations

import logging
from typing import Sequence

import jieba
import numpy as np
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge
from rouge_score import rouge_scorer

from ..conversation import prompt_messages, user_text
from ..language import detect_language

__all__ = ["chinese_scores", "compute_scores", "english_scores", "format_table", "score_difference",
           "score_predictions"]

# jieba logs "Building prefix dict..." to stderr at DEBUG the first time it segments; keep only real problems.
jieba.setLogLevel(logging.WARNING)

# Method 3 (NIST geometric smoothing) is the official recipe: short answers with no 4-gram match still score > 0.
_SMOOTHING = SmoothingFunction().method3


def _check(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} references; "
                         "they must pair up one to one")
    if not predictions:
        raise ValueError("no predictions to score: an average over zero examples is undefined")


def chinese_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L and BLEU-4 exactly as the official ChatGLM2 P-Tuning ``compute_metrics`` computes them.

    ROUGE takes jieba words joined by spaces through ``rouge_chinese`` (which counts distinct n-grams); BLEU-4 takes
    characters, because Chinese has no spaces and a segmenter's mistakes should not move BLEU.

    Args:
        predictions: Generated texts, one per example.
        references: Target texts, in the same order.

    Returns:
        ``{"rouge-1", "rouge-2", "rouge-l", "bleu-4"}``, each an F-score (BLEU: the score) ×100 averaged over
        examples.

    Raises:
        ValueError: The lists differ in length or are empty.
    """
    _check(predictions, references)
    scores: dict[str, list[float]] = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    rouge = Rouge()
    for pred, label in zip(predictions, references):
        hypothesis, reference = " ".join(jieba.cut(pred)), " ".join(jieba.cut(label))
        # rouge_chinese raises on a side with no words (an empty or all-whitespace answer, common early in
        # training). The ChatGLM2 script itself would crash there; LLaMA-Factory's port of it adds this guard and
        # scores 0, and so do we, so one blank answer cannot abort an evaluation. BLEU already gives 0 there.
        if not hypothesis.split() or not reference.split():
            result = {key: {"f": 0.0} for key in ("rouge-1", "rouge-2", "rouge-l")}
        else:
            result = rouge.get_scores(hypothesis, reference)[0]
        for key, value in result.items():
            scores[key].append(round(value["f"] * 100, 4))
        bleu = sentence_bleu([list(label)], list(pred), smoothing_function=_SMOOTHING)
        scores["bleu-4"].append(round(bleu * 100, 4))
    # np.mean as the official script uses, so the averages agree to the last bit.
    return {key: float(np.mean(values)) for key, values in scores.items()}


def english_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L, exact match and BLEU-4 for English text.

    ROUGE stems (Porter) so "running" and "runs" match, as most English summarisation results do; BLEU-4 is on
    whitespace words with the same smoothing as the Chinese recipe, so short answers are not all zero.

    Args:
        predictions: Generated texts, one per example.
        references: Target texts, in the same order.

    Returns:
        ``{"rouge-1", "rouge-2", "rouge-l", "exact-match", "bleu-4"}``, each ×100 and averaged over examples;
        exact match ignores surrounding whitespace and case.

    Raises:
        ValueError: The lists differ in length or are empty.
    """
    _check(predictions, references)
    names = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-l"}
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    scores: dict[str, list[float]] = {key: [] for key in [*names.values(), "exact-match", "bleu-4"]}
    for pred, label in zip(predictions, references):
        rouge = scorer.score(label, pred)  # target first: rouge_score's order is (target, prediction)
        for name, key in names.items():
            scores[key].append(rouge[name].fmeasure * 100)
        scores["exact-match"].append(100.0 * (pred.strip().casefold() == label.strip().casefold()))
        bleu = sentence_bleu([label.split()], pred.split(), smoothing_function=_SMOOTHING)
        scores["bleu-4"].append(bleu * 100)
    return {key: float(np.mean(values)) for key, values in scores.items()}


def compute_scores(predictions: list[str], references: list[str], language: str = "auto") -> dict[str, float]:
    """Score generations with the Chinese or English recipe.

    Args:
        predictions: Generated texts, one per example.
        references: Target texts, in the same order.
        language: ``"zh"``, ``"en"``, or ``"auto"`` to detect it from the references — not the predictions, so a
            model that babbles in the wrong language is scored, badly, in the language it should have used.

    Returns:
        The dict of :func:`chinese_scores` or :func:`english_scores`.

    Raises:
        ValueError: The lists differ in length or are empty, or ``language`` is unknown.
    """
    _check(predictions, references)
    scorers = {"zh": chinese_scores, "en": english_scores}
    if language == "auto":
        language = detect_language(references)
    if language not in scorers:
        raise ValueError(f"unknown language {language!r}; expected one of 'auto', 'zh', 'en'")
    return scorers[language](predictions, references)


def score_predictions(conversations: Sequence[list[dict]], predictions: Sequence[str],
                      language: str = "auto") -> tuple[list[dict], dict]:
    """Score answers to the conversations' last turns.

    Returns:
        Per-example rows ``{"prompt", "reference", "prediction"}`` and the scores (the dict of
        :func:`compute_scores` plus ``"language"``, which ``auto`` detected from the references).
    """
    prompts, references = zip(*(prompt_messages(c) for c in conversations))
    if language == "auto":
        language = detect_language(list(references))  # recorded, so a reader knows which recipe scored it
    rows = [{"prompt": user_text(p[-1]), "reference": r, "prediction": a}
            for p, r, a in zip(prompts, references, predictions)]
    return rows, {**compute_scores(list(predictions), list(references), language), "language": language}


def score_difference(scores: dict, baseline: dict) -> dict:
    """Run minus base, for the numeric scores (``language`` and the like are left out)."""
    return {k: v - baseline[k] for k, v in scores.items() if _number(v)}


def format_table(report: dict) -> str:
    """The numeric scores as a table: one row per metric, columns run (and base, difference)."""
    columns = ["run"] + (["base", "diff"] if "baseline" in report else [])
    lines = [f"{'metric':<12}" + "".join(f"{c:>10}" for c in columns)]
    for key, value in report["scores"].items():
        if not _number(value):
            continue
        cells = [f"{value:10.2f}"]
        if "baseline" in report:
            cells += [f"{report['baseline'][key]:10.2f}", f"{report['difference'][key]:+10.2f}"]
        lines.append(f"{key:<12}" + "".join(cells))
    return "\n".join(lines)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
