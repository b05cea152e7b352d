"""Generation evaluation of a saved run: ``python -m finetune.evaluate RUN_DIR [--baseline] [--data FILE]``.

Every held-out prompt is answered with the run's own template (greedy by default, so a number can be reproduced),
the answers are scored with :func:`finetune.evaluation.metrics.compute_scores` (ChatGLM2's ROUGE/BLEU-4 for Chinese,
ROUGE and exact match for English), and ``predictions.jsonl`` and ``metrics.json`` are written to ``RUN_DIR/eval``.
``--baseline`` runs the untrained base model on the same prompts with the same template, so the table shows what
fine-tuning changed; ``--verbalizer`` scores label data by answer likelihood instead
(:mod:`finetune.evaluation.verbalizer`).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

from transformers import set_seed

from .conversation import drop_none, plain_messages, prompt_messages, user_text
from .data import build_datasets, read_examples
from .errors import UsageError, add_verbose_flag, guarded
from .evaluation import format_table, generate, score_difference, score_predictions, verbalizer_accuracy
from .inference import load_run
from .paths import check_target

__all__ = ["eval_conversations", "evaluate_model", "evaluate_run", "main"]

logger = logging.getLogger(__name__)


def eval_conversations(recipe, tokenizer, template, data: Optional[str] = None,
                       fmt: Optional[str] = None) -> list[list[dict]]:
    """The conversations to evaluate: ``data`` if given, else the recipe's eval file, else its held-out split.

    The held-out split is rebuilt with the same ``build_datasets`` call training made (tokenizer, template,
    max_length, seed), not by splitting the raw file again: training drops examples without a supervised token
    before it splits, so a raw split would hold out different examples. The tokenized data is a cache hit when the
    cache is still there.

    Raises:
        ValueError: the recipe has no eval data and ``data`` is not given, or an example has no prompt.
    """
    spec = recipe.data
    if data or spec.eval:
        path = data or spec.eval
        # The recipe's column mapping belongs to its format; the source options are read as training read them.
        conversations = read_examples(path, fmt or spec.format, prompt_column=spec.prompt_column,
                                      response_column=spec.response_column, text_column=spec.text_column,
                                      system=spec.system, columns=None if fmt else spec.columns, split=spec.split,
                                      subset=spec.subset, revision=spec.revision).conversations
    elif spec.eval_split:
        built = build_datasets(spec, tokenizer, template, recipe.model.max_length, recipe.training.seed)
        conversations = [plain_messages(c) for c in built.eval["messages"]]
    else:
        raise UsageError("the recipe has neither data.eval nor data.eval_split; pass --data FILE")
    if any(not any(m["role"] == "user" for m in c) for c in conversations):
        raise UsageError("some examples have no user turn (format 'text'?): there is no prompt to answer; "
                         "pass --data FILE with prompt/answer examples")
    return conversations


def evaluate_model(model, tokenizer, template, conversations: Sequence[list[dict]], *, max_new_tokens: int = 64,
                   batch_size: int = 8, language: str = "auto", verbalizer: Optional[Mapping[str, str]] = None,
                   normalize: bool = False, **generate_kwargs) -> tuple[list[dict], dict]:
    """Answer (or, with a verbalizer, classify) every conversation's last turn and score the answers.

    Works on a model already in memory, so training can evaluate its own model without saving and reloading it.

    Returns:
        Per-example rows ``{"prompt", "reference", "prediction"}`` and the scores (the dict of ``compute_scores``
        plus ``"language"``, or the accuracy dict of ``verbalizer_accuracy`` without its per-example list).

    Raises:
        ValueError: no conversations, or (verbalizer) an answer that is not a label.
    """
    if not conversations:
        raise UsageError("no examples to evaluate")
    if verbalizer:
        result = verbalizer_accuracy(model, tokenizer, template, conversations, verbalizer, normalize)
        rows = [{"prompt": user_text(prompt_messages(c)[0][-1]), **p}
                for c, p in zip(conversations, result.pop("predictions"))]
        return rows, result
    prompts = [prompt_messages(c)[0] for c in conversations]
    predictions = generate(model, tokenizer, template, prompts, max_new_tokens, batch_size, **generate_kwargs)
    return score_predictions(conversations, predictions, language)


def evaluate_run(run_dir: str | Path, data: Optional[str] = None, baseline: bool = False, *,
                 fmt: Optional[str] = None, max_new_tokens: Optional[int] = None, batch_size: int = 8,
                 limit: Optional[int] = None, language: str = "auto", verbalizer: Optional[Mapping[str, str]] = None,
                 normalize: bool = False, out: Optional[str | Path] = None, overwrite: bool = False,
                 **generate_kwargs) -> dict:
    """Evaluate a saved run (and optionally its base model) and write ``predictions.jsonl`` and ``metrics.json``.

    Args:
        run_dir: the run folder written by training.
        data: eval file; default the recipe's ``data.eval`` or its held-out split.
        baseline: also evaluate the untrained base model with the same template and prompts.
        fmt: format of ``data`` (default the recipe's ``data.format``).
        max_new_tokens: answer length (default the recipe's ``eval.max_new_tokens``).
        batch_size: prompts per ``generate`` call.
        limit: evaluate only the first ``limit`` examples.
        language: ``"auto"`` (from the references), ``"zh"`` or ``"en"``.
        verbalizer: label -> word; score label data by answer likelihood instead of generating.
        normalize: length-normalise verbalizer scores.
        out: output folder (default ``RUN_DIR/eval``).
        overwrite: write into ``out`` even when it holds files an earlier evaluation did not write.
        **generate_kwargs: passed to ``generate``, e.g. ``do_sample=True, top_p=0.7, temperature=0.95``.

    Returns:
        What ``metrics.json`` holds: ``{"run_dir", "data", "examples", "options", "scores"}`` plus ``"baseline"`` and
        ``"difference"`` (run minus base, numeric scores only) with ``baseline``.
    """
    out = Path(out) if out else Path(run_dir) / "eval"
    check_target(out, lambda path: (path / "metrics.json").exists(), overwrite, "finetune.evaluate")
    run = load_run(run_dir)
    recipe, tokenizer, template = run.recipe, run.tokenizer, run.template
    conversations = eval_conversations(recipe, tokenizer, template, data, fmt)[:limit]
    options = {"max_new_tokens": max_new_tokens or recipe.eval.max_new_tokens, "batch_size": batch_size,
               "language": language, "verbalizer": verbalizer, "normalize": normalize, **generate_kwargs}
    set_seed(recipe.training.seed)  # only matters when sampling: the same seed gives the same samples
    rows, scores = evaluate_model(run.model, tokenizer, template, conversations, **options)
    report = {"run_dir": str(run_dir), "data": data or recipe.data.eval or f"eval_split={recipe.data.eval_split}",
              "examples": len(rows), "options": drop_none(options),
              "scores": scores}
    if baseline:
        run.model = None  # let the fine-tuned model go before the base model is loaded
        base = load_run(run_dir, base=True)
        set_seed(recipe.training.seed)
        base_rows, base_scores = evaluate_model(base.model, tokenizer, template, conversations, **options)
        for row, base_row in zip(rows, base_rows):
            row["baseline"] = base_row["prediction"]
        report["baseline"] = base_scores
        report["difference"] = score_difference(scores, base_scores)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info("Wrote %s and %s", out / "predictions.jsonl", out / "metrics.json")
    return report


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="run folder written by python -m finetune.run")
    parser.add_argument("--data", help="eval file (default: the recipe's data.eval or its held-out split)")
    parser.add_argument("--format", dest="fmt", help="format of --data (default: the recipe's data.format)")
    parser.add_argument("--baseline", action="store_true", help="also evaluate the untrained base model")
    parser.add_argument("--max-new-tokens", type=int, help="answer length (default: the recipe's eval setting)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="evaluate only the first N examples")
    parser.add_argument("--language", choices=("auto", "zh", "en"), default="auto")
    parser.add_argument("--verbalizer", help='JSON file {"label": "word", ...}: score labels by likelihood')
    parser.add_argument("--length-normalize", action="store_true", help="mean instead of sum of log-probs")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even when it holds other files")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--top-p", type=float, default=0.7)
    parser.add_argument("--temperature", type=float, default=0.95)
    add_verbose_flag(parser)
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return guarded(lambda: _evaluate(args), args.verbose)


def _evaluate(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:  # [:-1] would silently evaluate all but the last example
        raise UsageError(f"--limit {args.limit}: give the number of examples to evaluate (1 or more).")
    sampling = {"do_sample": True, "top_p": args.top_p, "temperature": args.temperature} if args.do_sample else {}
    verbalizer = _read_verbalizer(args.verbalizer) if args.verbalizer else None
    report = evaluate_run(args.run_dir, args.data, args.baseline, fmt=args.fmt, max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, limit=args.limit, language=args.language,
                          verbalizer=verbalizer, normalize=args.length_normalize, out=args.out,
                          overwrite=args.overwrite, **sampling)
    print(f"{report['examples']} examples from {report['data']}")
    print(format_table(report))
    return 0


def _read_verbalizer(path: str) -> dict:
    try:
        verbalizer = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as err:
        raise UsageError(f"--verbalizer {path}: not JSON ({err}); expected {{\"label\": \"word\", ...}}.") from None
    if not isinstance(verbalizer, dict):
        raise UsageError(f"--verbalizer {path}: expected a JSON object {{\"label\": \"word\", ...}}.")
    return verbalizer


if __name__ == "__main__":
    sys.exit(main())
