"""The import graph goes one way: a module imports only from its own layer or the layers below, and no two
modules import each other, directly or around a loop (function-local imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finetune"

# Bottom to top; README "Development" draws the same picture. A module belongs to the longest prefix listed.
LAYERS = [
    ("base", ["errors", "paths", "recipe", "overrides", "recipe_file", "precision", "left_padded_positions",
              "language", "conversation", "templates"]),
    ("run folder", ["runs"]),
    ("models and data", ["models", "data"]),
    ("training parts", ["training", "methods", "report"]),
    ("evaluation", ["evaluation"]),
    ("workflows", ["build", "train", "inference", "evaluate", "merge", "chat", "convert", "export"]),
    ("command lines", ["run", "data.__main__"]),
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
        raise AssertionError(f"finetune.{module} is in no layer: add it to LAYERS (and the README picture).")
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


def test_a_lora_run_does_not_load_the_chatglm2_port():
    """P-Tuning's position ids live in a base module, so the methods, training and the command line no longer load
    the ChatGLM2 port (its tokenizer and GLM conversion) for every run."""
    import subprocess
    import sys

    code = ("import sys, finetune.methods.lora, finetune.train, finetune.run; "
            "print(sorted(m for m in sys.modules if m.startswith('finetune.models.chatglm2')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
