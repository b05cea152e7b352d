"""One run, top to bottom: tokenizer -> template -> data -> model + method -> collator -> trainer -> save.

Read :func:`train` first; every other function here is a step it calls in order.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Optional

import torch
from transformers import AutoModelForCausalLM, TrainingArguments, set_seed

from .checkpoints import COMPLETE, GracefulStop, MarkComplete, latest_checkpoint, latest_run_dir
from .collators import PaddingCollator, PaddingFreeCollator
from .data import LabelAudit, build_datasets, plain_messages, show_example
from .generate import generate, prompt_messages
from .generation_eval import GenerationEval
from .methods import apply_method, count_parameters
from .methods.ptuning import PrefixModel
from .models import check_context_window, load_config, load_model, load_tokenizer, resolve_family, resolve_model_path
from .precision import resolve_dtype, upcast_trainable, weights_dtype
from .recipe import Recipe, TrainingSpec, resolved_batching
from .templates import get_template
from .tracking import finish_tracking, tokens_seen_mode, tracking_callbacks, training_report_to
from .trainers import SFTTrainer, trainer_class

__all__ = ["train", "training_arguments", "make_collator", "RunResult"]

logger = logging.getLogger("finetune")


@dataclasses.dataclass
class RunResult:
    """Where a run was saved and how it went."""

    output_dir: Optional[Path]
    eval_loss_before: Optional[float] = None
    eval_loss_after: Optional[float] = None
    samples: list = dataclasses.field(default_factory=list)
    interrupted: bool = False


def train(recipe: Recipe, dry_run: bool = False, resume: bool | str = False) -> RunResult:
    """Fine-tune as the recipe says.

    Args:
        dry_run: stop after the label audit and the trainable-parameter count.
        resume: continue from the latest complete checkpoint of the run folder (``training.output_dir``, or the
            newest ``runs/<name>-*``), or from the checkpoint folder given as a path.
    """
    set_seed(recipe.training.seed)
    path = resolve_model_path(recipe.model.path)
    family = resolve_family(recipe.model, path)
    check_context_window(load_config(path, family, recipe.model), recipe.model)  # fail before any tokenizing
    tokenizer = load_tokenizer(path, family, recipe.model.trust_remote_code)
    template = get_template(family.template if recipe.data.template == "auto" else recipe.data.template)
    logger.info("Model %s (family %s), template %s", path, family.name, template.name)

    data = build_datasets(recipe.data, tokenizer, template, recipe.model.max_length, recipe.training.seed)
    audit = LabelAudit.of(data.train, tokenizer, data.skipped)
    logger.info("%s\n  tokenized in %.1fs%s", audit.format("train"), data.tokenize_seconds,
                " (cache hit)" if data.cache_hit else "")
    logger.info("Example 0 (supervised tokens in [[ ]], the rest has label -100):\n%s",
                show_example(data.train[0]["input_ids"], data.train[0]["labels"], tokenizer))
    if data.eval is not None:
        logger.info("Eval split: %d examples", len(data.eval))

    if dry_run:
        model = apply_method(_skeleton(path, family, recipe), recipe.method, family)
        trainable, total = count_parameters(model)
        logger.info("Dry run: %d train examples, %d tokens; trainable parameters %s of %s (%.3f%%)",
                    audit.examples, audit.tokens, f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        return RunResult(None)

    dtype = weights_dtype(recipe.model.dtype, recipe.method.trains_base)  # finetune/precision.py
    model = upcast_trainable(apply_method(load_model(path, family, recipe.model, dtype=dtype), recipe.method, family))
    trainable, total = count_parameters(model)
    logger.info("Trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    output_dir, checkpoint = _run_dir(recipe, resume)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "audit.json").write_text(json.dumps(audit.to_dict(), indent=2))
    stop, tracking = GracefulStop(), tracking_callbacks(recipe, audit, output_dir)
    batching = resolved_batching(recipe)
    generation = _generation_eval(recipe, data.eval, output_dir)
    trainer = trainer_class(recipe.method.name)(
        model=model, args=training_arguments(recipe.training, output_dir, batching, resolve_dtype(recipe.model.dtype)),
        train_dataset=data.train, eval_dataset=data.eval,
        data_collator=make_collator(batching, tokenizer, recipe.model.attn_implementation),
        processing_class=tokenizer, template=template, recipe=recipe, callbacks=[stop, MarkComplete(), *tracking],
        generation_eval=generation,
    )
    result = RunResult(output_dir)
    if data.eval is not None:
        samples = list(data.eval.select(range(min(recipe.eval.samples, len(data.eval))))["messages"])
        with _untrained(trainer.model):  # "before" is the base model: a fresh random prefix is not a baseline
            before = _held_out(trainer, tokenizer, template, samples, recipe)

    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.received:
        finish_tracking(tracking)
        write_report(output_dir)
        logger.warning("Stopped by %s at step %d; checkpoint saved in %s. Resume with:\n  python -m finetune.run "
                       "RECIPE training.output_dir=%s --resume", stop.received, trainer.state.global_step,
                       output_dir, output_dir)
        return RunResult(output_dir, interrupted=True)
    trainer.save_model(str(output_dir))
    _write_best(trainer, output_dir)

    if data.eval is not None:
        after = _held_out(trainer, tokenizer, template, samples, recipe)
        result.eval_loss_before, result.eval_loss_after = before[0], after[0]
        result.samples = [_sample(c, b, a) for c, b, a in zip(samples, before[1], after[1])]
        scores = _scores(result.samples)
        (output_dir / "samples.json").write_text(json.dumps(
            {"eval_loss_before": before[0], "eval_loss_after": after[0], "scores": scores,
             "samples": result.samples}, indent=2, ensure_ascii=False))
        logger.info("%s", _comparison(result))
        if scores:
            from .evaluate import format_table

            logger.info("Held-out metrics on %d generated answers (base = before training):\n%s",
                        len(result.samples), format_table(scores))
    finish_tracking(tracking)  # last, so the after-training eval reaches the trackers
    write_report(output_dir)
    logger.info("Saved to %s (report: %s)", output_dir, output_dir / "report.html")
    return result


def _run_dir(recipe: Recipe, resume: bool | str) -> tuple[Path, Optional[Path]]:
    """The run folder, and the checkpoint to resume from (None for a fresh run)."""
    if resume and not isinstance(resume, bool):
        checkpoint = Path(resume)
        if not (checkpoint / COMPLETE).exists():
            raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint folder (no {COMPLETE} marker).")
        return checkpoint.parent, checkpoint
    if not resume:
        return Path(recipe.training.output_dir or f"runs/{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"), None
    run_dir = Path(recipe.training.output_dir) if recipe.training.output_dir else latest_run_dir(recipe.name)
    checkpoint = latest_checkpoint(run_dir) if run_dir else None
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint in {run_dir or f'runs/{recipe.name}-*'}; set "
                                "training.save_strategy=steps to write checkpoints, or start a fresh run.")
    logger.info("Resuming from %s", checkpoint)
    return run_dir, checkpoint


def make_collator(batching: str, tokenizer, attn_implementation: str = "auto"):
    """The collator for a resolved ``data.batching``; padding rounds to 8 only on GPUs (tensor cores); packed rows
    carry flash-attention's varlen arguments when that kernel runs."""
    if batching == "padding_free":
        return PaddingFreeCollator(flash_attn_kwargs=attn_implementation.startswith("flash_attention"))
    return PaddingCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else None)


def training_arguments(spec: TrainingSpec, output_dir: Path, batching: str = "padded",
                       compute: torch.dtype = torch.float32) -> TrainingArguments:
    """``TrainingArguments`` from the recipe, with defaults that suit this framework.

    bf16 mixed precision when the compute dtype is bf16 (``model.dtype``, finetune/precision.py) unless
    ``training.bf16`` says otherwise; the GPU when there is one; loss-only evaluation (full-vocabulary eval logits
    are never gathered); columns kept because the collator picks what it needs.
    """
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in ("extra", "output_dir")}
    fields["bf16"] = compute == torch.bfloat16 if spec.bf16 is None else spec.bf16
    defaults = {
        "use_cpu": not torch.cuda.is_available(), "prediction_loss_only": True,
        "remove_unused_columns": False, "label_names": ["labels"], "disable_tqdm": False,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if spec.activation_checkpointing else None,
        "length_column_name": "num_tokens", "include_num_input_tokens_seen": tokens_seen_mode(batching),
    }
    if batching == "group_by_length":
        defaults["train_sampling_strategy"] = "group_by_length"
    accepted = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs = {k: v for k, v in {**defaults, **fields, **spec.extra}.items() if k in accepted}
    kwargs["report_to"] = training_report_to(spec.report_to)  # W&B and TensorBoard come as tracking callbacks
    return TrainingArguments(output_dir=str(output_dir), **kwargs)


def _write_best(trainer, output_dir: Path) -> None:
    """``best.json``: the checkpoint ``metric_for_best_model`` picked (the run folder holds it when
    ``load_best_model_at_end``), for the report and for anyone choosing a checkpoint later."""
    state, args = trainer.state, trainer.args
    if state.best_model_checkpoint and trainer.is_world_process_zero():
        checkpoint = Path(state.best_model_checkpoint)
        (output_dir / "best.json").write_text(json.dumps({
            "checkpoint": checkpoint.name, "step": int(checkpoint.name.rsplit("-", 1)[-1]),
            "metric": args.metric_for_best_model, "value": state.best_metric,
            "loaded_at_end": bool(args.load_best_model_at_end)}, indent=2))


def _generation_eval(recipe: Recipe, eval_data, output_dir: Path) -> Optional[GenerationEval]:
    """Scored generations at every evaluation when ``eval.generate`` asks for them and there is held-out data."""
    if not recipe.eval.generate or eval_data is None:
        return None
    spec = recipe.eval
    limit = spec.generate_limit or len(eval_data)
    sampling = {"do_sample": True, "top_p": spec.top_p, "temperature": spec.temperature} if spec.do_sample else {}
    return GenerationEval([plain_messages(c) for c in eval_data.select(range(min(limit, len(eval_data))))["messages"]],
                          spec.max_new_tokens, recipe.training.per_device_eval_batch_size, generate_kwargs=sampling,
                          output_dir=output_dir)


def _skeleton(path: Path, family, recipe: Recipe):
    """The model's architecture on the meta device: parameter counts without reading any weights."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(load_config(path, family, recipe.model))


def write_report(output_dir: Path) -> None:
    from .report import write_report as write  # matplotlib loads only when a run ends

    write(output_dir)


def _untrained(model):
    """A context in which the model answers as its untrained base."""
    if isinstance(model, PrefixModel):
        return model.disable_prefix()
    if hasattr(model, "disable_adapter"):  # peft; LoRA's B starts at zero, so this only makes it explicit
        return model.disable_adapter()
    return contextlib.nullcontext()


def _held_out(trainer: SFTTrainer, tokenizer, template, samples: list, recipe: Recipe) -> tuple[float, list[str]]:
    """Eval loss on the held-out split and generations for a few of its prompts.

    With ``training.eval_strategy`` on, the Trainer has already evaluated the final weights at the last step (unless
    ``load_best_model_at_end`` swapped them since): that evaluation is used rather than run twice.
    """
    last = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    final = trainer.state.global_step > 0 and not trainer.args.load_best_model_at_end
    if final and last is not None and last["step"] == trainer.state.global_step:
        loss = last["eval_loss"]
    else:
        loss = trainer.evaluate()["eval_loss"]
    generated = trainer.generation_eval
    if generated is not None and generated.answered(samples):  # that evaluation already answered these prompts
        return loss, generated.predictions[:len(samples)]
    prompts = [prompt_messages(c)[0] for c in samples]
    answers = generate(trainer.model, tokenizer, template, prompts, recipe.eval.max_new_tokens) if prompts else []
    return loss, answers


def _scores(samples: list[dict]) -> Optional[dict]:
    """Before/after generation metrics in ``finetune.evaluate``'s report shape (so its table prints them)."""
    if not samples:
        return None
    from .metrics import compute_scores  # jieba/nltk/rouge load only when there is something to score

    references = [s["reference"] for s in samples]
    after = compute_scores([s["after"] for s in samples], references)
    before = compute_scores([s["before"] for s in samples], references)
    difference = {k: after[k] - before[k] for k in after if isinstance(after[k], float)}
    return {"scores": after, "baseline": before, "difference": difference}


def _sample(conversation: list[dict], before: str, after: str) -> dict:
    messages, reference = prompt_messages(conversation)
    messages = plain_messages(messages)
    last = messages[-1]
    prompt = f"{last['content']}\n\n{last['input']}" if last.get("input") else last["content"]
    return {"messages": messages, "prompt": prompt, "reference": reference, "before": before, "after": after}


def _comparison(result: RunResult) -> str:
    lines = [f"Held-out eval loss: before {result.eval_loss_before:.4f} -> after {result.eval_loss_after:.4f}"]
    for i, s in enumerate(result.samples):
        lines += [f"--- held-out example {i}", f"prompt:    {_short(s['prompt'])}",
                  f"reference: {_short(s['reference'])}", f"before:    {_short(s['before'])}",
                  f"after:     {_short(s['after'])}"]
    matches = sum(s["after"].strip() == s["reference"].strip() for s in result.samples)
    matches_before = sum(s["before"].strip() == s["reference"].strip() for s in result.samples)
    if result.samples:
        lines.append(f"Exact match on {len(result.samples)} held-out prompts: before {matches_before}, "
                     f"after {matches}")
    return "\n".join(lines)


def _short(text: str, width: int = 160) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"
