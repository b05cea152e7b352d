"""The import graph goes one way: a module imports only from its own layer or the layers below, and no two
modules import each other, directly or around a loop (function-local imports included)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finetune"

# Bottom to top; docs/development.md draws the same picture (test_the_docs_draw_these_layers). Each layer is a
# few top-level modules and packages; a module belongs to the longest prefix listed.
LAYERS = [
    ("base", ["errors", "paths", "recipe", "recipe_file", "overrides", "precision", "templates", "conversation",
              "language", "left_padded_positions", "safetensors_check"]),
    ("run folder", ["runs"]),
    ("models, data", ["models", "data"]),
    ("training", ["training"]),
    ("methods, evaluation", ["methods", "evaluation"]),
    ("workflows", ["train", "build", "inference", "evaluate", "merge", "chat", "convert", "convert_checkpoint",
                   "export", "report", "template_check", "serve"]),
    ("command lines", ["run", "data.__main__", "check", "ui"]),
]


def layer_of(module: str) -> int:
    """The layer index of ``finetune.<module>``; the package itself (its public API) is the top."""
    if module == "":
        return len(LAYERS) - 1
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"finetune.{module} is in no layer: add it to LAYERS (and docs/development.md's picture).")
    return best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """The finetune modules ``path`` imports (relative to the package), wherever in the file the import is."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "":
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "finetune":
                target = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # `from . import x` / `from .pkg import submodule`
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if _exists(candidate) else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names if a.name.split(".")[0] == "finetune"}
    return found - {name}


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return [f"finetune.{a or '__init__'} ({LAYERS[layer_of(a)][0]}) imports finetune.{b} ({LAYERS[layer_of(b)][0]})"
            for a, targets in edges.items() for b in sorted(targets) if layer_of(b) > layer_of(a)]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(graph()) == []


def test_there_is_no_import_cycle():
    assert find_cycle(graph()) is None


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks above are not vacuous: the violations the old tree had are found in a graph that has them."""
    edges = graph()
    edges["recipe"] = edges["recipe"] | {"run"}
    assert "finetune.recipe (base) imports finetune.run (command lines)" in upward_imports(edges)
    edges = graph()
    edges["models.embedded"] = edges["models.embedded"] | {"data.dataset"}
    edges["data.dataset"] = edges["data.dataset"] | {"models.embedded"}
    assert find_cycle(edges) in (["data.dataset", "models.embedded", "data.dataset"],
                                 ["models.embedded", "data.dataset", "models.embedded"])


def drawn_layers() -> list[tuple[str, set[str]]]:
    """The layers as the picture in docs/development.md draws them, bottom to top: each label with the modules
    (``x.py``, ``data/__main__.py``) and packages (``x/``) in its rows (dotted, as LAYERS names them)."""
    page = (PACKAGE.parent / "docs" / "development.md").read_text(encoding="utf-8")
    rows = page.split("Imports go one way", 1)[1].split("```", 2)[1].splitlines()[1:]
    # Three columns: the label, the entries, what they are; the first row shows where each begins.
    label, entries = re.match(r"( \S.*?\s{2,})(\S.*?\s{2,})", rows[0]).groups()
    described_from = len(label) + len(entries)
    layers: list[tuple[str, set[str]]] = []
    for row in rows:
        if row[1:2].strip() and row[1] != "│":
            layers.append((row[1:len(label)].strip(), set()))
        found = re.findall(r"(?<![\w/.])(\w+(?:/\w+)*)(?:\.py|/)(?!\w)", row[len(label):described_from])
        layers[-1][1].update(name.replace("/", ".") for name in found)
    return layers[::-1]


def test_the_docs_draw_these_layers():
    """The picture in docs/development.md, LAYERS and the tree agree: the same layers in the same order, each
    naming the same modules and packages, every one of which exists, and every top-level module and package of
    finetune/ is drawn."""
    assert drawn_layers() == [(name, set(prefixes)) for name, prefixes in LAYERS]
    named = {prefix for _, prefixes in LAYERS for prefix in prefixes}
    assert all(_exists(prefix) for prefix in named), sorted(p for p in named if not _exists(p))
    top_level = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"} | {
        p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert top_level <= named, sorted(top_level - named)


def test_a_lora_run_does_not_load_the_chatglm2_port():
    """P-Tuning's position ids live in a base module (``left_padded_positions``), so the methods, training and the
    command line no longer load the ChatGLM2 port (its tokenizer and GLM conversion) for every run."""
    import subprocess
    import sys

    code = ("import sys, finetune.methods.lora, finetune.train, finetune.run; "
            "print(sorted(m for m in sys.modules if m.startswith('finetune.models.chatglm2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
