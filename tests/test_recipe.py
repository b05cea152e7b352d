"""Recipes: every shipped recipe loads and validates; overrides are parsed, type-checked and explained."""
from pathlib import Path

import pytest

from finetune import LoraSpec, Recipe, RecipeError, apply_overrides
from finetune.recipe import DataSpec, recipe_from_dict, recipe_to_dict
from finetune.run import load_recipe, main
from finetune.templates import get_template

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.py"))
BASE = Recipe(name="t", data=DataSpec(train="x.jsonl"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    if recipe.data.template != "auto":
        get_template(recipe.data.template)
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
    assert path.read_text().startswith("#"), "recipes start with a header comment (launch command, arithmetic)"
    assert "python -m finetune.run" in path.read_text().split("\n\n")[0]


@pytest.mark.parametrize("value", ["[q_proj,v_proj]", "q_proj,v_proj", '["q_proj", "v_proj"]', "[ q_proj , v_proj ]"])
def test_lists_are_parsed_in_the_forms_people_write_them(value):
    """#30: ``[q_proj,v_proj]`` became the modules '[q_proj' and 'v_proj]'."""
    assert apply_overrides(BASE, [f"method.target_modules={value}"]).method.target_modules == ("q_proj", "v_proj")
    with pytest.raises(RecipeError, match="unbalanced brackets"):
        apply_overrides(BASE, ["method.target_modules=[q_proj,v_proj"])


def test_overrides_are_typed():
    recipe = apply_overrides(BASE, ["training.learning_rate=1e-4", "method.r=4",
                                    "training.activation_checkpointing=true",
                                    "method.target_modules=q_proj,v_proj", "data.system=none", "model.max_length=64"])
    assert recipe.training.learning_rate == 1e-4 and recipe.method.r == 4
    assert recipe.training.activation_checkpointing is True
    assert recipe.method.target_modules == ("q_proj", "v_proj") and recipe.data.system is None
    assert recipe.model.max_length == 64 and isinstance(recipe.model.max_length, int)


def test_any_training_arguments_field_lands_in_extra():
    recipe = apply_overrides(BASE, ["training.adam_beta2=0.95", "training.eval_steps=20"])
    assert recipe.training.extra == {"adam_beta2": 0.95}
    assert recipe.training.eval_steps == 20


@pytest.mark.parametrize("override,message", [
    ("training.learnin_rate=1e-4", r"Unknown key 'training.learnin_rate'; did you mean training.learning_rate"),
    ("trainig.learning_rate=1e-4", r"Unknown recipe section 'trainig'; did you mean training"),
    ("training.learning_rate=fast", r"training.learning_rate='fast': expected a float"),
    ("model.max_length=1.5", r"expected a whole number"),
    ("training.activation_checkpointing=maybe", r"expected true or false"),
    ("learning_rate=1e-4", r"must look like section.key=value"),
    ("method.rank=8", r"did you mean method.r"),
    ("data.format=jsonl", r"data.format='jsonl' is not one of"),
])
def test_override_errors_are_clear(override, message):
    with pytest.raises(RecipeError, match=message):
        apply_overrides(BASE, [override])


def test_recipe_checks_its_fields():
    with pytest.raises(RecipeError, match="data.train is empty"):
        Recipe(name="t")
    with pytest.raises(RecipeError, match="method.r=0 must be positive"):
        LoraSpec(r=0)
    with pytest.raises(RecipeError, match="not TrainingArguments fields"):
        apply_overrides(BASE, ["training.seed=1"]).training.__class__(extra={"not_a_field": 1})


def test_cli_reports_override_errors_without_a_traceback(capsys):
    assert main([str(RECIPES[0]), "training.learnin_rate=1"]) == 2
    assert "did you mean training.learning_rate" in capsys.readouterr().err


def test_recipe_file_without_a_recipe_is_rejected(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("x = 1\n")
    with pytest.raises(RecipeError, match="must define `recipe = Recipe"):
        load_recipe(path)
