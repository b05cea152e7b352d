"""Answer-mapping (verbalizer) scoring for classification data, as prompt-based learning (PET, P-Tuning) does it.

Generation is a poor test of a classifier: a model can rank the right label first and still phrase its answer
differently, or stop early. Here every label is represented by a word (the verbalizer, e.g.
``{"positive": "great", "negative": "terrible"}``); after the run's templated prompt the model's log-likelihood of
each word is compared, and the likeliest word's label is the prediction. Each candidate is tokenized on its own and
appended to the prompt ids, exactly as the encoder joins a prompt and its answer in training, so the scored tokens
are the ones the model was trained to produce.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..conversation import prompt_messages
from ..data.tokenize import Encoder
from ..errors import UsageError

__all__ = ["score_candidates", "verbalizer_accuracy"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def score_candidates(model, prompt_ids: Sequence[int], candidates: Sequence[Sequence[int]],
                     normalize: bool = False) -> list[float]:
    """Log-likelihood of each candidate continuation of one prompt, in a single forward pass.

    Args:
        model: a causal LM, PEFT model or ``PrefixModel`` (anything whose forward takes ``input_ids`` and
            ``attention_mask`` and returns ``logits``).
        prompt_ids: the templated prompt, ending where the answer starts.
        candidates: token ids of each candidate answer.
        normalize: divide by the candidate's token count, so a long word is not penalised for its length alone.

    Returns:
        One score per candidate: the sum (or mean) of its tokens' log-probabilities given the prompt.
    """
    if not prompt_ids or any(not c for c in candidates):
        raise ValueError("the prompt and every candidate need at least one token")
    start = len(prompt_ids)
    width = start + max(len(c) for c in candidates)
    # Right padding: the padded tail comes after every scored position, so it cannot change their logits.
    ids = torch.zeros(len(candidates), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, candidate in enumerate(candidates):
        sequence = list(prompt_ids) + list(candidate)
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    # Position t predicts token t + 1; keep only the positions that predict candidate tokens.
    logprobs = logits[:, start - 1:].float().log_softmax(-1).cpu()
    scores = []
    for row, candidate in enumerate(candidates):
        picked = logprobs[row, torch.arange(len(candidate)), torch.tensor(candidate)]
        scores.append(float(picked.sum() / len(candidate) if normalize else picked.sum()))
    return scores


def verbalizer_accuracy(model, tokenizer, template, examples: Sequence[list[dict]], verbalizer: Mapping[str, str],
                        normalize: bool = False, progress: bool = True) -> dict:
    """Classify each example by its likeliest verbalizer word and compare with its label.

    Args:
        model: the model to score with (left in the mode it came in).
        tokenizer: its tokenizer.
        template: the template the model was trained with.
        examples: conversations whose last assistant message is the gold label, written either as a label
            (a key of ``verbalizer``) or as its word.
        verbalizer: label -> answer word, e.g. ``{"positive": "great", "negative": "terrible"}``.
        normalize: length-normalise the scores (mean instead of sum of token log-probabilities).
        progress: show a progress bar.

    Returns:
        ``{"accuracy"}`` (percent, like the other metrics), ``"correct"``, ``"examples"``, ``"per_label"``
        (label -> gold count, predicted count, correct count) and ``"predictions"`` (per example: gold label,
        predicted label, score of every label).

    Raises:
        ValueError: an empty verbalizer, a word that tokenizes to nothing, or a gold answer that is neither a
            label nor a verbalizer word.
    """
    if not verbalizer:
        raise UsageError("the verbalizer is empty; give at least two label -> word pairs")
    labels = list(verbalizer)
    by_word = {word.strip(): label for label, word in verbalizer.items()}
    encoder = Encoder(tokenizer, template, max_length=10**9)
    candidates = [tokenizer(verbalizer[label], add_special_tokens=False)["input_ids"] for label in labels]
    for label, ids in zip(labels, candidates):
        if not ids:
            raise UsageError(f"verbalizer word for label {label!r} tokenizes to no tokens")
    was_training = model.training
    model.eval()
    predictions, gold, predicted, correct = [], Counter(), Counter(), Counter()
    for index, conversation in enumerate(tqdm(examples, desc="Scoring labels", disable=not progress)):
        messages, answer = prompt_messages(conversation)
        label = answer.strip() if answer.strip() in verbalizer else by_word.get(answer.strip())
        if label is None:
            raise UsageError(f"example {index}: answer {answer!r} is neither a verbalizer label {labels} nor one of "
                             "their words; is this classification data?")
        scores = score_candidates(model, encoder.encode_prompt(messages), candidates, normalize)
        choice = labels[max(range(len(labels)), key=scores.__getitem__)]
        gold[label] += 1
        predicted[choice] += 1
        correct[label] += choice == label
        predictions.append({"reference": label, "prediction": choice, "scores": dict(zip(labels, scores))})
    model.train(was_training)
    total = sum(correct.values())
    return {"accuracy": 100.0 * total / len(predictions) if predictions else 0.0, "correct": total,
            "examples": len(predictions),
            "per_label": {label: {"gold": gold[label], "predicted": predicted[label], "correct": correct[label]}
                          for label in labels},
            "predictions": predictions}
