"""finetune: supervised fine-tuning of causal LMs on Hugging Face, driven by small recipe files."""
from .overrides import apply_overrides
from .recipe import (
    DataSpec,
    EvalSpec,
    FullSpec,
    LoraSpec,
    ModelSpec,
    PTuningSpec,
    Recipe,
    RecipeError,
    TrainingSpec,
)
from .templates import get_template, register_template, template_names

__all__ = ["DataSpec", "EvalSpec", "FullSpec", "LoraSpec", "ModelSpec", "PTuningSpec", "Recipe", "RecipeError",
           "TrainingSpec", "apply_overrides", "get_template", "register_template", "template_names"]
__version__ = "0.1.0"
