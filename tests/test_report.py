"""Run reports: plots and a self-contained report.html from a tiny tracked run, and the comparison CLI."""
import base64
import html
import json
import re
from pathlib import Path

import pytest
from test_tracking import finished_run

from finetune.report import compare_runs, main, read_logs, write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama) -> Path:
    return finished_run(tmp_path_factory.mktemp("report"), tiny_llama, report_to="none")


def inlined_images(page: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data)
            for alt, data in re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)}


def test_report_inlines_every_plot_and_shows_recipe_audit_metrics_and_samples(run):
    page = (run / "report.html").read_text(encoding="utf-8")
    images = inlined_images(page)
    assert sorted(images) == ["grad_norm", "learning_rate", "loss", "tokens_per_second"]
    for stem, png in images.items():
        assert png.startswith(PNG) and png == (run / "plots" / f"{stem}.png").read_bytes()
    assert "src=\"http" not in page and "<script" not in page  # self-contained, nothing fetched
    samples = json.loads((run / "samples.json").read_text())
    assert f"{samples['eval_loss_after']:.4g}" in page  # metrics table
    assert json.loads((run / "audit.json").read_text())["supervised_fraction"] > 0
    assert "supervised_fraction" in page and html.escape('"name": "lora"') in page  # audit, recipe
    assert "Held-out example 0" in page


def test_eval_metrics_and_generation_scores_are_shown_and_a_torn_last_line_is_skipped(tmp_path):
    lines = [{"loss": 2.0 - s / 10, "learning_rate": 1e-3, "step": s} for s in range(1, 5)]
    lines += [{"eval_loss": 1.5, "eval_rouge-l": 0.2, "eval_runtime": 1.0, "step": 4}]
    scores = {"baseline": {"bleu-4": 1.0}, "scores": {"bleu-4": 12.5}, "difference": {"bleu-4": 11.5}}
    (tmp_path / "samples.json").write_text(json.dumps({"eval_loss_before": 2.0, "eval_loss_after": 1.5,
                                                       "scores": scores, "samples": []}))
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"loss": 1.', "utf-8")
    assert len(read_logs(tmp_path)) == 5
    page = write_report(tmp_path).read_text(encoding="utf-8")
    assert sorted(inlined_images(page)) == ["eval_metrics", "learning_rate", "loss"]
    assert "final eval_rouge-l" in page and "eval_runtime" not in page
    assert "<td>after</td><td>12.5</td>" in page and "<td>difference</td><td>11.5</td>" in page


def test_cli_rebuilds_one_report_and_compares_several_runs(run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "logs.jsonl").write_text("".join(json.dumps({"loss": 3.0 / s, "eval_loss": 3.5 / s, "step": s}) + "\n"
                                              for s in range(1, 5)), "utf-8")
    assert main([str(other)]) == other / "report.html"
    out = main([str(run), str(other), "--out", str(tmp_path / "compare")])
    assert out == tmp_path / "compare" / "report.html" and capsys.readouterr().out.strip().endswith("report.html")
    page = out.read_text(encoding="utf-8")
    assert sorted(inlined_images(page)) == ["eval_loss", "loss"]
    assert f"<td>{run.name}</td>" in page and "<td>other</td>" in page
    assert compare_runs([run, other], tmp_path / "again").exists()
