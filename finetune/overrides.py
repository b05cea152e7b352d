"""``section.key=value`` overrides of a recipe, parsed and type-checked against the fields they set."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

from .recipe import Recipe, RecipeError, TrainingSpec, suggest_names, training_argument_names

__all__ = ["apply_overrides"]


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Apply ``section.key=value`` strings, each parsed and type-checked against the field it sets.

    Nested specs take longer paths (``model.quantization.quant_type=fp4``); ``model.quantization=none`` removes
    one. ``training.<any TrainingArguments field>=value`` lands in ``training.extra`` when it is not a named field.

    Raises:
        RecipeError: on an unknown key (naming the nearest valid ones) or a value of the wrong type.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise RecipeError(f"Override {item!r} must look like section.key=value, e.g. training.learning_rate=1e-4")
        section = key.split(".", 1)[0]
        if section == "name" or section not in {f.name for f in dataclasses.fields(recipe)}:
            sections = [f.name for f in dataclasses.fields(recipe) if f.name != "name"]
            raise RecipeError(f"Unknown recipe section {section!r}{suggest_names(section, sections)}")
        recipe = _set(recipe, key.split("."), raw, key)
    return recipe


def _set(spec: Any, path: list[str], raw: str, key: str) -> Any:
    """A copy of ``spec`` with the field at ``path`` set from ``raw``."""
    name = path[0]
    names = {f.name for f in dataclasses.fields(spec) if f.name != "extra"}
    if name not in names:
        if isinstance(spec, TrainingSpec) and len(path) == 1 and name in training_argument_names():
            value = _parse(key, raw, _training_argument_type(name))
            return dataclasses.replace(spec, extra={**spec.extra, name: value})
        candidates = list(names) + (sorted(training_argument_names()) if isinstance(spec, TrainingSpec) else [])
        prefix = key[: len(key) - len(".".join(path))]
        raise RecipeError(f"Unknown key {key!r}{suggest_names(name, candidates, prefix=prefix)}")
    annotation = _field_type(type(spec), name)
    if len(path) == 1:
        return dataclasses.replace(spec, **{name: _parse(key, raw, annotation)})
    child = getattr(spec, name)
    if child is None:  # an unset optional spec: start from its defaults
        child = next(a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a))()
    if not dataclasses.is_dataclass(child):
        raise RecipeError(f"{key!r}: {'.'.join(key.split('.')[:-len(path) + 1])} has no sub-fields.")
    return dataclasses.replace(spec, **{name: _set(child, path[1:], raw, key)})


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _training_argument_type(name: str) -> Any:
    from transformers import TrainingArguments

    return typing.get_type_hints(TrainingArguments).get(name, str)


def _parse(key: str, raw: str, annotation: Any) -> Any:
    """Parse ``raw`` as ``annotation`` (str/int/float/bool, Optional, tuple of str, unions of those)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None) and not dataclasses.is_dataclass(a)):
            try:
                return _parse(key, raw, arg)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[-1] if errors else f"{key}={raw!r}: set its fields ({key}.<field>=...) or none.")
    if origin in (tuple, list):
        # a,b or [a,b] (the form Python and YAML write), items optionally quoted: never a module named '[a'.
        text = raw.strip()
        if text.startswith("[") != text.endswith("]"):
            raise RecipeError(f"{key}={raw!r}: unbalanced brackets; write a,b or [a,b].")
        text = text[1:-1] if text.startswith("[") else text
        items = tuple(part.strip().strip("'\"") for part in text.split(",") if part.strip().strip("'\""))
        return items if origin is tuple else list(items)
    if annotation is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise RecipeError(f"{key}={raw!r}: expected true or false.")
    if annotation in (int, float):
        try:
            number = float(raw)
        except ValueError:
            raise RecipeError(f"{key}={raw!r}: expected a {annotation.__name__}, e.g. {key}=1e-4") from None
        if annotation is int and not number.is_integer():
            raise RecipeError(f"{key}={raw!r}: expected a whole number.")
        return annotation(number)
    return raw
