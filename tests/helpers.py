"""Small helpers shared by tests (tests/ is on sys.path under pytest's default import mode)."""
import json
from pathlib import Path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def four_examples(path: Path) -> Path:
    """Four examples with different numbers of supervised tokens: one global batch of 4 however it is split across
    processes (the distributed and launcher tests compare N processes with one)."""
    return write_jsonl(path, [
        {"instruction": "Name it.", "input": c, "output": name} for c, name in
        [("þ", "LATIN SMALL LETTER THORN"), ("Ω", "GREEK CAPITAL LETTER OMEGA"), ("ß", "LATIN SMALL LETTER SHARP S"),
         ("ā", "LATIN SMALL LETTER A WITH MACRON AND A LONGER TAIL OF WORDS")]])


def built_trainer(recipe, callbacks=(), seed: int = 0):
    """The recipe's trainer and its data, built with the functions ``finetune.train.train`` calls, in its order
    (without the run folder around them): for tests that look inside a trainer. The model's new parameters are
    initialised under ``seed``, so two builds of one recipe start from the same weights."""
    import torch

    from finetune.build import build_trainer, method_model, run_arguments
    from finetune.data import build_datasets
    from finetune.models import resolve_model
    from finetune.recipe import resolved_batching

    resolved = resolve_model(recipe.model, recipe.data.template)
    batching = resolved_batching(recipe, resolved.attention)
    data = build_datasets(recipe.data, resolved.tokenizer, resolved.template, recipe.model.max_length, 0)
    args = run_arguments(recipe, Path(recipe.training.output_dir), resolved.attention, batching)
    torch.manual_seed(seed)
    model = method_model(resolved.path, resolved.family, recipe.model, recipe.method, config=resolved.config)
    return build_trainer(recipe, resolved, model, data, args, list(callbacks), batching=batching), data
