"""The documentation: ``make docs`` builds the site with no warning, every link from README.md into docs/ resolves,
and every command shown in a ``bash`` block (or after ``$ `` in any other block) of README.md and docs/*.md is
accounted for — run by the tests (RUN_BY names the files and checks that they really run it), marked ``# GPU only``
on its line, or in NOT_RUN with the reason. No training: about 10 s.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
GPU_ONLY = re.compile(r"#\s*GPU only\b")


@dataclass(frozen=True)
class Runs:
    """Where the suite runs a command: each file (a test, or the CI script) must match every one of its patterns.

    ``make_runs``, for a ``make`` target: what ``make -n`` must print, tying the target to what those files run.
    ``how`` says what they run when it is less than the documented line (fewer steps, a tiny model, CPU).
    """

    files: dict[str, list[str]]
    make_runs: str = ""
    how: str = ""


# A command is matched by its longest key: the key's words are the first words of the command. A key here means
# the files named run that entry point (with their own, small arguments), not necessarily the documented line.
RUN_BY: dict[str, Runs] = {
    "python -m finetune.run": Runs({"tests/test_run_contracts.py": [r'"-m", "finetune\.run"'],
                                    "tests/test_reliability.py": [r"\brun\.main\("]},
                                   how="on tiny random models and the demo data"),
    "python -m finetune.data": Runs({"tests/test_datatools.py": [
        r"from finetune\.data\.__main__ import main", r'main\(\["stats"', r'main\(\["filter"', r'main\(\["convert"',
        r'main\(\["mix"']}),
    "python -m finetune.convert_checkpoint": Runs({"tests/test_chatglm2.py": [
        r'"-m", "finetune\.convert_checkpoint", "chatglm2"']}, how="on a tiny random ChatGLM2 checkpoint"),
    "python -m finetune.evaluate": Runs({"tests/test_evaluate.py": [
        r"from finetune\.evaluate import main", r'"--baseline"', r'"--verbalizer"']}),
    "python -m finetune.chat": Runs({"tests/test_chat.py": [r"from finetune\.chat import .*\bmain\b", r'"--prompt"']}),
    "python -m finetune.merge": Runs({"tests/test_merge.py": [r'"-m", "finetune\.merge"']}),
    "python -m finetune.export": Runs({"tests/test_export.py": [r'"-m", "finetune\.export"'],
                                       "tests/test_reliability.py": [r"\bexport_cli\.main\("]}),
    "python -m finetune.report": Runs({"tests/test_report.py": [r"from finetune\.report import .*\bmain\b",
                                                                r'"--out"']}),
    "python -m finetune.check template": Runs({"tests/test_template_check.py": [
        r'"-m", "finetune\.check", "template", "recipes/qwen3_tools_lora\.py"']},
        how="Qwen3's real tokenizer around a tiny random model"),
    "python bench/bench_load.py": Runs({"tests/test_bench.py": [r'"bench/bench_load\.py"\), "--examples"']},
                                       how="300 examples instead of 1M"),
    "make demo": Runs({"tests/test_reliability.py": [r'"smollm2_lora\.py"', r"\brun\.main\(\[demo, "],
                       "tests/test_smollm2_slow.py": [r'load_recipe\("recipes/smollm2_lora\.py"',
                                                      r"\btrain\(recipe\)"]},
                      make_runs="-m finetune.run recipes/smollm2_lora.py",
                      how="finetune.run on the demo recipe as a dry run; its training for 20 of the 135 steps on the "
                          "real SmolLM2 in make test-slow"),
    "make ui": Runs({"tests/test_ui.py": [r'"-m", "finetune\.ui"']}, make_runs="-m finetune.ui"),
    "make serve": Runs({"tests/test_serve.py": [r'"-m", "finetune\.serve"']}, make_runs="-m finetune.serve"),
    'make gpu-check ARGS="--device cpu --smoke"': Runs(
        {"tests/test_gpu_check.py": [r'"gpu_check\.py"\), "--device", "cpu", "--smoke"']},
        make_runs="bench/gpu_check.py --device cpu --smoke"),
    "make train-ddp": Runs({"tests/test_launchers.py": [r'make_command\("train-ddp"']}, make_runs="torchrun",
                           how="the Makefile's line with 2 processes (2 nodes on one machine) on the CPU"),
    "make train-accelerate": Runs({"tests/test_launchers.py": [r'make_command\("train-accelerate"']},
                                  make_runs="accelerate launch", how="2 processes on the CPU"),
    "make docs": Runs({"tests/test_docs.py": [r'make_command\("docs"\)']}, make_runs="-m mkdocs build --strict"),
    "make test": Runs({".ci/run": [r"(?m)^make test$"]}, how="by the CI script on every landing"),
    "make test-slow": Runs({".ci/run": [r"(?m)^make test-slow$"]}, how="by the CI script on every landing"),
}

# Shown in the docs, run by no test, and not for lack of a GPU.
NOT_RUN: dict[str, str] = {
    "make quality": "a developer's lint (flake8, isort --check); no test runs it",
    "make style": "rewrites imports in place (isort); a developer's command",
    "make verify-gguf": "builds llama-cpp-python from source (~17 min on 2 cores); run by hand, its results are in "
                        "docs/export.md",
    "make gpu-wheels": "downloads wheels from PyPI: it needs the network the tests do without",
    "ollama": "Ollama is not installed here; tests/test_export.py runs each Modelfile TEMPLATE through Go's "
              "text/template, Ollama's engine",
    "llama-cli": "llama.cpp's CLI is not installed here; make verify-gguf runs the file through llama-cpp-python",
}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def shown_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) for every command a page shows; a command continued with ``\\`` is one command."""
    commands: list[tuple[int, str]] = []
    block = None  # the language of the open fence, "" for none; None outside fences
    pending: tuple[int, str] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            block = line[3:].strip() if block is None else None
            continue
        if block is None:
            continue
        text = line.strip()
        if pending is not None:
            start, before = pending
            text = before + " " + text
        elif block in SHELL_BLOCKS:
            if not text or text.startswith("#"):
                continue
            start = number
        elif text.startswith("$ "):
            start = number
        else:
            continue
        if text.endswith("\\"):
            pending = (start, text[:-1].rstrip())
            continue
        pending = None
        commands.append((start, text[2:] if text.startswith("$ ") else text))
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def longest_key(command: str, keys) -> str | None:
    found = [key for key in keys if words(command)[:len(words(key))] == words(key)]
    return max(found, key=lambda key: len(words(key)), default=None)


def make_command(target: str, *assignments: str) -> list[str]:
    """The command ``make TARGET`` runs, read with ``make -n`` (nothing is installed or run)."""
    printed = subprocess.run(["make", "--no-print-directory", "-n", target, *assignments], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    return shlex.split(printed.replace("\\\n", " ").splitlines()[-1])


def test_every_shown_command_is_run_by_a_test_gpu_only_or_listed_as_not_run():
    problems = []
    for path in doc_files():
        for number, command in shown_commands(path):
            if GPU_ONLY.search(command) or longest_key(command, RUN_BY) or longest_key(command, NOT_RUN):
                continue
            problems.append(f"{path.relative_to(ROOT)}:{number}: `{command}` is run by no test: add the test that "
                            "runs it to RUN_BY in tests/test_docs.py, or end the line with `# GPU only` if it needs "
                            "a GPU (NOT_RUN is for tools not installed here, with the reason)")
    assert not problems, "\n".join(problems)


def test_the_tests_named_really_run_those_commands():
    for key, runs in RUN_BY.items():
        for name, patterns in runs.files.items():
            text = (ROOT / name).read_text(encoding="utf-8")
            missing = [pattern for pattern in patterns if not re.search(pattern, text)]
            assert not missing, f"RUN_BY[{key!r}]: {name} does not match {missing}: it no longer runs `{key}`"
        if runs.make_runs:
            target, *assignments = words(key)[1:]
            line = " ".join(make_command(target, *assignments))
            assert runs.make_runs in line, f"`make -n {target}` prints `{line}`, not `{runs.make_runs}`"


def test_every_entry_of_the_tables_is_shown_in_the_docs():
    """So the tables shrink with the docs: an entry no shown command uses is stale."""
    shown = [command for path in doc_files() for _, command in shown_commands(path)]
    for table in (RUN_BY, NOT_RUN):
        unused = [key for key in table if not any(longest_key(command, table) == key for command in shown)]
        assert not unused, f"no command in the docs starts with {unused}: remove them from the table"


def markdown_links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", text)


def slug(heading: str) -> str:
    """The anchor GitHub and MkDocs give a heading (for the headings used here they agree)."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_every_link_from_the_readme_into_docs_resolves_and_every_page_is_linked():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set()
    for link in markdown_links(readme):
        if "://" in link or link.startswith("#"):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"(?m)^#+ (.+)$", target.read_text(encoding="utf-8"))
            assert anchor in {slug(h) for h in headings}, f"README.md links to {link}: no such heading"
        linked.add(target.resolve())
    pages = {page.resolve() for page in DOCS.glob("*.md")}
    assert pages <= linked, f"README.md links to no {sorted(p.name for p in pages - linked)}"
    assert len(readme.splitlines()) <= 250, "README.md is for the first steps: move the rest to docs/"


def test_make_docs_builds_the_site_with_no_warning(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e .[docs] (make install does)")
    command = make_command("docs")
    command = [sys.executable, *command[command.index("-m"):]]
    assert command[1:] == ["-m", "mkdocs", "build", "--strict"]
    done = subprocess.run([*command, "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    built = {page.stem for page in DOCS.glob("*.md")}
    assert all((tmp_path / "site" / ("index.html" if name == "index" else f"{name}/index.html")).is_file()
               for name in built)
