"""The recipe form: recipe files with their header comments, the fields of the spec dataclasses (type, value,
default, docstring, choices), and validation by the command line's own parser.

The form sends only the fields it changed, as ``section.key=value`` strings: exactly the overrides a user would type
after ``python -m finetune.run RECIPE``, so an invalid value gets the message the command line prints.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import typing
from pathlib import Path
from typing import Any, Optional

from ..overrides import apply_overrides
from ..recipe import CHOICES, Recipe, RecipeError, check_settings_agree
from ..recipe_file import load_recipe

__all__ = ["recipe_files", "form_of", "validate", "save_recipe", "header_comment"]

SECTIONS = ("model", "data", "method", "training", "eval")
# Fields whose words come from transformers or a registry, not from CHOICES.
_TRAINING_CHOICES = {"lr_scheduler_type": "SchedulerType", "eval_strategy": "IntervalStrategy",
                     "save_strategy": "SaveStrategy", "optim": "OptimizerNames"}


def header_comment(path: Path) -> str:
    """The comment block a recipe file starts with (what it trains, how to launch it, the arithmetic)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].removeprefix(" "))
    return "\n".join(lines).strip()


def recipe_files(project: Path) -> list[dict]:
    """Every recipe in ``project/recipes`` with its header comment."""
    return [{"path": str(p.relative_to(project)), "name": p.stem, "header": header_comment(p)}
            for p in sorted((project / "recipes").glob("*.py")) if not p.name.startswith("_")]


def form_of(recipe: Recipe) -> list[dict]:
    """The recipe's fields by section: key, type, current value and default as override text, help, choices."""
    sections = []
    for section in SECTIONS:
        spec = getattr(recipe, section)
        fields = _fields(spec, section)
        if section == "method":
            fields.insert(0, {"key": "method.name", "type": "fixed", "value": spec.name, "default": spec.name,
                              "help": "The method is the recipe's: choose another recipe to change it.",
                              "choices": None})
        sections.append({"section": section, "doc": _doc(type(spec)), "fields": fields})
    return sections


def _fields(spec: Any, prefix: str) -> list[dict]:
    out = []
    hints = typing.get_type_hints(type(spec))
    docs = _field_docs(type(spec))
    defaults = type(spec)()  # every spec has defaults for every field
    for field in dataclasses.fields(spec):
        key, value = f"{prefix}.{field.name}", getattr(spec, field.name)
        if field.name == "extra":  # TrainingArguments fields passed through: each is a field of its own
            out += [{"key": f"{prefix}.{name}", "type": type(v).__name__, "value": as_text(v), "default": "",
                     "help": "A TrainingArguments field (passed through unchanged).", "choices": None}
                    for name, v in sorted(value.items())]
            continue
        if dataclasses.is_dataclass(value):  # model.quantization when set: its own fields
            out += _fields(value, key)
            continue
        out.append({"key": key, "type": _type_name(hints[field.name]), "value": as_text(value),
                    "default": as_text(getattr(defaults, field.name)), "help": docs.get(field.name, ""),
                    "choices": _choices(key, field.name, prefix)})
    return out


def _choices(key: str, name: str, section: str) -> Optional[list[str]]:
    if key in CHOICES:
        return list(CHOICES[key])
    if key == "data.template":
        from ..templates import template_names

        return ["auto", *template_names()]
    if section == "training" and name in _TRAINING_CHOICES:
        import transformers.trainer_utils as trainer_utils
        import transformers.training_args as training_args

        enum_name = _TRAINING_CHOICES[name]
        enum = getattr(trainer_utils, enum_name, None) or getattr(training_args, enum_name)
        return [member.value for member in enum]
    return None


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")):
        inner = _type_name(args[0]) if len(args) == 1 else " or ".join(_type_name(a) for a in args)
        return f"optional {inner}"
    if typing.get_origin(annotation) in (tuple, list):
        return "list"
    if typing.get_origin(annotation) in (dict, typing.Mapping) or annotation is typing.Mapping:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def as_text(value: Any) -> str:
    """A value as the override parser reads it back (``true``, ``none``, ``a,b``, a JSON object)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, typing.Mapping):
        return json.dumps(dict(value)) if value else ""
    return str(value)


@functools.lru_cache(maxsize=None)
def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (what ``help`` shows), read from its source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body, docs = tree.body[0].body, {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _doc(cls: type) -> str:
    return " ".join((inspect.getdoc(cls) or "").split("\n\n")[0].split())


def validate(project: Path, recipe_path: str, overrides: list[str]) -> tuple[Optional[Recipe], dict, list[str]]:
    """The recipe with ``overrides`` applied, each override's own error by key, and the errors of the whole.

    Each override is applied alone first, so every wrong field gets its message beside it (not only the first);
    then all together, and the settings that only fail together (:func:`check_settings_agree`).
    """
    try:
        base = load_recipe(resolve_inside(project, recipe_path, "recipe"))
    except RecipeError as err:
        return None, {}, [str(err)]
    errors = {}
    for item in overrides:
        try:
            apply_overrides(base, [item])
        except RecipeError as err:
            errors[item.partition("=")[0]] = str(err)
    if errors:
        return None, errors, []
    try:
        recipe = apply_overrides(base, overrides)
        check_settings_agree(recipe)
    except RecipeError as err:
        return None, {}, [str(err)]
    return recipe, {}, []


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refused when it leaves ``root`` (``..``, an absolute path, a link out)."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise RecipeError(f"{what} {relative!r} is outside {root}; only files under it can be used here.")
    return path


def save_recipe(project: Path, recipe_path: str, overrides: list[str], name: str, overwrite: bool = False) -> Path:
    """Write ``recipes/<name>.py``: the base recipe file and these overrides, as a recipe file of its own.

    Raises:
        RecipeError: a bad name, an existing file (unless ``overwrite``), or a recipe that does not validate.
    """
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
        raise RecipeError(f"Recipe name {name!r}: use letters, digits and _ (it becomes recipes/{name}.py).")
    recipe, errors, general = validate(project, recipe_path, overrides)
    if recipe is None:
        raise RecipeError(next(iter(errors.values()), None) or general[0])
    base = resolve_inside(project, recipe_path, "recipe")
    target = project / "recipes" / f"{name}.py"
    if target.exists() and not overwrite:
        raise RecipeError(f"recipes/{name}.py exists; choose another name or replace it.")
    relative = Path("..").joinpath(base.relative_to(project.resolve())) if base.parent != target.parent.resolve() \
        else Path(base.name)
    changes = "\n".join(f"#   {o}" for o in overrides) or "#   (none)"
    target.write_text(
        f"# {name}: {recipe_path} with these overrides (saved from the web app, python -m finetune.ui):\n"
        f"{changes}\n#\n#   python -m finetune.run recipes/{name}.py\n"
        "import dataclasses\nfrom pathlib import Path\n\nfrom finetune.recipe_file import load_recipe\n\n"
        f"recipe = dataclasses.replace(\n    load_recipe(Path(__file__).parent / {str(relative)!r}, {overrides!r}),\n"
        f"    name={name!r})\n", encoding="utf-8")
    load_recipe(target)  # what was written loads, or the error is ours to see now
    return target
