"""Run reports: PNG plots and one self-contained ``report.html`` per run, from the files in the run folder.

Everything is drawn from ``logs.jsonl`` (written by :class:`finetune.training.tracking.RunLog` whatever the
trackers), so a report needs neither W&B nor TensorBoard, and the HTML inlines its images so it can be mailed or
attached as is.

Usage::

    python -m finetune.report runs/tiny-20250101-120000             # rebuild that run's report
    python -m finetune.report runs/a-* runs/b-* --out runs/compare  # overlay several runs' loss curves
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import time
from pathlib import Path

from matplotlib.figure import Figure  # the object API draws with Agg and never opens a window

from .conversation import drop_none
from .errors import UsageError, guarded
from .paths import check_target

__all__ = ["write_report", "compare_runs", "read_logs", "main"]

logger = logging.getLogger("finetune")

PLOTS = {  # file stem -> (title, log keys drawn on it)
    "loss": ("Loss", ("loss", "eval_loss")),
    "learning_rate": ("Learning rate", ("learning_rate",)),
    "tokens_per_second": ("Real tokens/s (no padding)", ("tokens_per_second",)),
    "grad_norm": ("Gradient norm", ("grad_norm",)),
}
# Eval keys that are timings, not quality metrics.
_EVAL_TIMINGS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                 "eval_model_preparation_time", "eval_generate_seconds")


def read_logs(run_dir: str | Path) -> list[dict]:
    """The run's ``logs.jsonl`` entries; a torn last line (a killed run) is skipped, not fatal."""
    path = Path(run_dir) / "logs.jsonl"
    entries = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("Skipping an unreadable line in %s", path)
    return entries


def _series(logs: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in logs if isinstance(e.get(key), (int, float)) and "step" in e]
    return [p[0] for p in points], [p[1] for p in points]


def _eval_metrics(logs: list[dict]) -> list[str]:
    keys = {k for e in logs for k, v in e.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    return sorted(keys - set(_EVAL_TIMINGS))


def _figure(title: str, curves: list[tuple]) -> Figure | None:
    """One plot of ``(label, steps, values, line style[, colour index])`` curves; None if there is nothing to draw.

    Curves without a colour index get one each; a comparison passes the run's index so its train and eval
    curves share a colour.
    """
    curves = [(*c, i)[:5] for i, c in enumerate(curves) if c[1]]
    if not curves:
        return None
    # Fixed margins, not layout="tight": tight layout draws every figure once more to measure its labels, half of
    # the report's time (0.7 s a run); these fit the labels this module writes (ticks up to 6 characters).
    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.14, top=0.91)
    axes = figure.add_subplot()
    for label, steps, values, style, colour in curves:
        axes.plot(steps, values, style, label=label, color=f"C{colour % 10}", markersize=3)
    axes.set(title=title, xlabel="step")
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def _run_figures(logs: list[dict], best: dict | None = None) -> dict[str, Figure]:
    figures = {}
    for stem, (title, keys) in PLOTS.items():
        figures[stem] = _figure(title, [(k, *_series(logs, k), "o--" if k.startswith("eval_") else "-")
                                        for k in keys])
    metrics = _eval_metrics(logs)
    figures["eval_metrics"] = _figure("Eval metrics", [(k, *_series(logs, k), "o-") for k in metrics])
    if best:  # the checkpoint training kept (load_best_model_at_end) or would keep, by metric_for_best_model
        for stem in ("loss", "eval_metrics"):
            if figures[stem] is not None:
                axes = figures[stem].axes[0]
                axes.axvline(best["step"], linestyle=":", color="grey", label=f"best by {best['metric']}")
                axes.legend(fontsize="small")
    return drop_none(figures)


def _save(figures: dict[str, Figure], out_dir: Path) -> dict[str, bytes]:
    """Write each figure as ``plots/<stem>.png`` and return the PNG bytes for inlining."""
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    images = {}
    for stem, figure in figures.items():
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        images[stem] = buffer.getvalue()
        (out_dir / "plots" / f"{stem}.png").write_bytes(images[stem])
    return images


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _summary(run_dir: Path, logs: list[dict]) -> dict:
    """The numbers worth a table row: final losses, speed, size of the run."""
    samples = _read_json(run_dir / "samples.json") or {}
    audit = _read_json(run_dir / "audit.json") or {}
    _, losses = _series(logs, "loss")
    steps, speeds = _series(logs, "tokens_per_second")
    final = next((e for e in reversed(logs) if "train_runtime" in e and "loss" not in e), {})
    best = _read_json(run_dir / "best.json")
    _, generation = _series(logs, "eval_generate_seconds")
    row = {
        "steps": max((e.get("step", 0) for e in logs), default=0),
        "final train loss": losses[-1] if losses else None,
        "eval loss before": samples.get("eval_loss_before"), "eval loss after": samples.get("eval_loss_after"),
        "tokens seen": max((e.get("num_input_tokens_seen", 0) for e in logs), default=None) or None,
        "mean tokens/s": sum(speeds) / len(speeds) if speeds else None,
        "train runtime (s)": final.get("train_runtime"),
        "supervised fraction": audit.get("supervised_fraction"),
    }
    for key in _eval_metrics(logs):
        row[f"final {key}"] = _series(logs, key)[1][-1]
    if generation:
        row["generation s per eval"] = sum(generation) / len(generation)
    if best:
        row["best checkpoint"] = (f"{best['checkpoint']} ({best['metric']} {best['value']:.4g}"
                                  f"{', saved as the run' if best['loaded_at_end'] else ''})")
    return row


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: dict[str, dict]) -> str:
    """Rows keyed by run name, one column per key."""
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["run", *columns])
    body = "".join(f"<tr><td>{html.escape(name)}</td>{''.join(f'<td>{_cell(row.get(c))}</td>' for c in columns)}"
                   "</tr>" for name, row in rows.items())
    return f"<table><tr>{head}</tr>{body}</table>"


def _images(images: dict[str, bytes]) -> str:
    return "".join(f'<img alt="{stem}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                   for stem, png in images.items())


def _samples(samples: list[dict]) -> str:
    parts = []
    for i, sample in enumerate(samples):
        rows = "".join(f"<tr><th>{k}</th><td><pre>{html.escape(str(sample.get(k, '')))}</pre></td></tr>"
                       for k in ("prompt", "reference", "before", "after"))
        parts.append(f"<h3>Held-out example {i}</h3><table>{rows}</table>")
    return "".join(parts)


_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
          "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
          "pre{white-space:pre-wrap;margin:0}img{max-width:48%;margin:4px}")


def _page(title: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections if content)
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Plots and ``report.html`` for one run; returns the HTML's path.

    Args:
        run_dir: a run folder with ``logs.jsonl`` and, when present, ``recipe.json``, ``audit.json`` and
            ``samples.json``.
        out_dir: where to write (default: the run folder itself).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    logs = read_logs(run_dir)
    if not logs:
        logger.warning("%s has no logs.jsonl entries: the report has no plots", run_dir)
    images = _save(_run_figures(logs, _read_json(run_dir / "best.json")), out_dir)
    recipe, audit = _read_json(run_dir / "recipe.json"), _read_json(run_dir / "audit.json")
    held_out = _read_json(run_dir / "samples.json") or {}
    samples, scores = held_out.get("samples", []), held_out.get("scores") or {}
    score_rows = {label: scores[key] for label, key in (("before", "baseline"), ("after", "scores"),
                                                        ("difference", "difference")) if scores.get(key)}
    audit_rows = {"train": audit} if audit else {}
    recipe_text = f"<pre>{html.escape(json.dumps(recipe, indent=2, ensure_ascii=False))}</pre>" if recipe else ""
    page = _page(f"Run {run_dir.name}", [
        ("Metrics", _table({run_dir.name: _summary(run_dir, logs)})), ("Label audit", _table(audit_rows)),
        ("Plots", _images(images)), ("Held-out generation metrics", _table(score_rows) if score_rows else ""),
        ("Before / after on held-out prompts", _samples(samples)),
        ("Resolved recipe", recipe_text)])
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    logger.info("Report written to %s", path)
    return path


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """One ``report.html`` overlaying the loss curves of several runs, with their metrics side by side."""
    run_dirs, out_dir = [Path(r) for r in run_dirs], Path(out_dir)
    names = [r.name for r in run_dirs]
    names = names if len(set(names)) == len(names) else [str(r) for r in run_dirs]  # same folder name twice
    logs = {name: read_logs(r) for name, r in zip(names, run_dirs)}
    curves = []
    for i, (name, entries) in enumerate(logs.items()):
        curves += [(f"{name} train", *_series(entries, "loss"), "-", i),
                   (f"{name} eval", *_series(entries, "eval_loss"), "o--", i)]
    figures = {"loss": _figure("Loss", curves),
               "eval_loss": _figure("Eval loss", [(n, *_series(e, "eval_loss"), "o-") for n, e in logs.items()])}
    images = _save(drop_none(figures), out_dir)
    rows = {name: _summary(r, logs[name]) for name, r in zip(names, run_dirs)}
    page = _page(f"Comparison of {len(run_dirs)} runs", [("Metrics", _table(rows)), ("Plots", _images(images))])
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    logger.info("Comparison report written to %s", path)
    return path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Rebuild a run's report, or compare several runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (runs/<recipe>-<timestamp>)")
    parser.add_argument("--out", type=Path, help="output folder (default: the run folder, or "
                        "<first run's parent>/compare-<timestamp> for several runs)")
    parser.add_argument("--overwrite", action="store_true", help="write into --out even when it holds other files")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            parser.error(f"{run} is not a folder")
        if not any((run / name).exists() for name in ("recipe.json", "logs.jsonl")):  # never into any folder
            raise UsageError(f"{run} is not a run folder (no recipe.json or logs.jsonl); give runs/<recipe>-<time>.")
    if args.out is not None:
        check_target(args.out, lambda path: (path / "report.html").exists(), args.overwrite, "finetune.report")
    if len(args.runs) == 1:
        path = write_report(args.runs[0], args.out)
    else:
        out = args.out or args.runs[0].parent / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        path = compare_runs(args.runs, out)
    print(path)
    return path


if __name__ == "__main__":
    import sys

    sys.exit(guarded(lambda: main() and 0))
