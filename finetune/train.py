"""One run, top to bottom: model resolved -> data -> model + method -> trainer -> train -> save -> before/after.

Read :func:`train` first; the parts it is built from are in ``finetune/build.py`` and the held-out comparison it
ends with in ``finetune/evaluation/before_after.py``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

from transformers import set_seed

from .build import build_trainer, make_collator, method_model, run_arguments, skeleton, training_arguments
from .data import LabelAudit, build_datasets, example_spans, plain_messages, show_example
from .evaluation import BeforeAfter
from .methods import count_parameters, get_method
from .models import resolve_model
from .recipe import Recipe, check_settings_agree, resolved_batching
from .runs import (
    GracefulStop,
    MarkComplete,
    RunStatus,
    check_free_space,
    expected_bytes,
    latest_checkpoint,
    open_run_folder,
    save_or_rescue,
    write_best,
)
from .template_check import check_conversations
from .training import ShareCores, check_trackers, finish_tracking, tracking_callbacks

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
    model: object = None
    """The trained model in memory (what was saved), for use without reloading."""
    preview: Optional[dict] = None
    """A dry run's findings: the label audit, the first examples split into masked and supervised text, the
    template and its check, the trainable parameters (what the web app's data preview shows)."""


def train(recipe: Recipe, dry_run: bool = False, resume: bool | str = False,
          resume_weights_only: bool = False) -> RunResult:
    """Fine-tune as the recipe says.

    Args:
        dry_run: stop after the label audit and the trainable-parameter count.
        resume: continue from the latest complete checkpoint of the run folder (``training.output_dir``, or the
            newest ``runs/<name>-*``), or from the checkpoint folder given as a path.
        resume_weights_only: allow resuming from a checkpoint without optimizer/schedule/RNG state.
    """
    check_settings_agree(recipe)
    set_seed(recipe.training.seed)
    resolved = resolve_model(recipe.model, recipe.data.template, thinking=recipe.data.thinking)  # before tokenizing
    logger.info("Model %s (family %s), template %s", resolved.path, resolved.family.name, resolved.template.name)
    check_trackers(recipe.training.report_to)
    # Settings TrainingArguments refuses stop here, and the run folder is claimed and probed, before any compute.
    # The arguments come first: under torchrun they start the process group the folder's name is shared over,
    # and ZeRO-3 and FSDP load the model sharded only when they exist.
    batching = resolved_batching(recipe, resolved.attention)  # ``auto`` decided once: the arguments and the collator
    args = run_arguments(recipe, Path(recipe.training.output_dir or "runs"), resolved.attention, batching)
    folder = open_run_folder(recipe, resume, dry_run, resume_weights_only)
    status = RunStatus(folder.path, enabled=folder.claimed)  # status.json: what the web app lists runs by
    cores = None
    try:
        args.output_dir, output_dir = str(folder.path), folder.path
        if not dry_run:
            status.set("running")

        data = build_datasets(recipe.data, resolved.tokenizer, resolved.template, recipe.model.max_length,
                              recipe.training.seed)
        audit = LabelAudit.of(data.train, resolved.tokenizer, data.skipped)
        logger.info("%s\n  tokenized in %.1fs%s", audit.format("train"), data.tokenize_seconds,
                    " (cache hit)" if data.cache_hit else "")
        logger.info("Example 0 (supervised tokens in [[ ]], the rest has label -100):\n%s",
                    show_example(data.train[0]["input_ids"], data.train[0]["labels"], resolved.tokenizer))
        if data.eval is not None:
            logger.info("Eval split: %d examples", len(data.eval))

        if dry_run:
            sample = data.train.select(range(min(5, len(data.train))))
            check = check_conversations(resolved.tokenizer, resolved.template,
                                        [plain_messages(m) for m in sample["messages"]], sample["tools"],
                                        recipe.data.thinking, recipe.data.system)
            (logger.info if check.ok else logger.warning)("Template check (python -m finetune.check template): %s",
                                                          check.format())
            trainable, total = count_parameters(skeleton(resolved.path, resolved.family, recipe.model, recipe.method))
            logger.info("Dry run: %d train examples, %d tokens; trainable parameters %s of %s (%.3f%%); the run "
                        "would write to %s", audit.examples, audit.tokens, f"{trainable:,}", f"{total:,}",
                        100 * trainable / total, output_dir)
            return RunResult(None, preview={
                "audit": audit.to_dict(), "warnings": audit.warnings(), "template": resolved.template.name,
                "template_check": check.format(), "template_ok": check.ok, "trainable": trainable, "total": total,
                "output_dir": str(output_dir), "examples": [example_spans(ids, labels, resolved.tokenizer)
                                                            for ids, labels in zip(sample["input_ids"],
                                                                                   sample["labels"])]})

        method = get_method(recipe.method.name)
        model = method_model(resolved.path, resolved.family, recipe.model, recipe.method, method=method,
                             config=resolved.config)
        trainable, total = count_parameters(model)
        logger.info("Trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        needed = expected_bytes(model, args, whole_model=method.weights_in_run, tokenizer_dir=resolved.path)
        check_free_space(output_dir, needed)
        stop, tracking = GracefulStop(), tracking_callbacks(recipe, audit, output_dir)
        cores = ShareCores()  # two runs on one CPU each take their share of the cores, instead of spinning
        trainer = build_trainer(recipe, resolved, model, data, args, [stop, MarkComplete(), status, cores, *tracking],
                                folder.record, method=method, batching=batching)
        if trainer.is_world_process_zero():  # every file of the run folder is written by one process
            (output_dir / "audit.json").write_text(json.dumps(audit.to_dict(), indent=2))
        held_out = None
        if data.eval is not None:
            held_out = BeforeAfter(trainer, data.eval, recipe.eval, method.untrained)
            held_out.measure_before()

        trainer.train(resume_from_checkpoint=str(folder.checkpoint) if folder.checkpoint else None)
        if stop.received:
            _finish(trainer, tracking, output_dir)
            # The recipe the checkpoint was written with: resuming needs neither the recipe file nor its path.
            resume_command = (f"python -m finetune.run {latest_checkpoint(output_dir)}/recipe.json "
                              f"training.output_dir={output_dir} --resume")
            status.set("stopped", error=f"stopped by {stop.received}", resume=resume_command)
            logger.warning("Stopped by %s at step %d; checkpoint saved in %s. Resume with:\n  %s", stop.received,
                           trainer.state.global_step, output_dir, resume_command)
            return RunResult(output_dir, interrupted=True)
        trainer.divergence.finish(trainer.state.global_step)  # a run too short for the guard's patience
        save_or_rescue(trainer.save_model, output_dir)
        write_best(trainer, output_dir)
        result = RunResult(output_dir)
        if held_out is not None:
            compared = held_out.measure_after(output_dir)
            result.eval_loss_before, result.eval_loss_after = compared["eval_loss_before"], compared["eval_loss_after"]
            result.samples = compared["samples"]
        # Without accelerate's mixed-precision forward wrapper: the model as a user would load it from the run folder.
        result.model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        _finish(trainer, tracking, output_dir)  # last, so the after-training eval reaches the trackers
        status.set("finished", eval_loss_before=result.eval_loss_before, eval_loss_after=result.eval_loss_after)
        logger.info("Saved to %s (report: %s)", output_dir, output_dir / "report.html")
        return result
    except BaseException as err:
        status.failed(err)
        raise
    finally:
        folder.release()  # the run is over, whichever way it ended
        if cores is not None:
            cores.release()


def _finish(trainer, tracking: list, output_dir: Path) -> None:
    """Close the trackers and write ``report.html`` (matplotlib loads only when a run ends)."""
    finish_tracking(tracking)
    if trainer.is_world_process_zero():
        from .report import write_report

        write_report(output_dir)
