"""Recipes: what to fine-tune, on which data, with which method and training settings.

A recipe is data: small frozen dataclasses, one concern each, checked in ``__post_init__``. A recipe file is a
Python module that defines ``recipe = Recipe(...)`` and nothing else that runs (see ``recipes/``); the runner
loads it by path and applies ``section.key=value`` overrides with :func:`apply_overrides`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .errors import UserError

__all__ = [
    "ModelSpec", "QuantSpec", "DataSpec", "LoraSpec", "FullSpec", "PTuningSpec", "MethodSpec", "TrainingSpec",
    "EvalSpec", "Recipe",
    "RecipeError", "check_settings_agree", "check_types", "recipe_to_dict", "recipe_from_dict", "resolved_batching",
    "token_budget", "PACKED_ROWS",
    "register_format_name", "register_method_spec",
]

DTYPES = ("auto", "float32", "bfloat16", "float16")
PACKED_ROWS = ("padding_free", "packed")
"""The ``data.batching`` modes whose batches are one row of concatenated examples, positions restarting at 0."""
DATA_FORMATS = ("alpaca", "adgen", "sharegpt", "firefly", "messages", "text", "prompt_completion")
"""The built-in record layouts (``finetune/data/formats.py``), known here before the data package loads."""
_FORMAT_NAMES: dict[str, None] = dict.fromkeys(DATA_FORMATS)


def register_format_name(name: str) -> None:
    """Let ``data.format`` name a registered format (``finetune.data.formats.register_format`` calls this)."""
    _FORMAT_NAMES[name] = None


CHOICES = {
    "model.dtype": DTYPES,
    "model.rope_scaling": ("linear", "dynamic"),
    "model.quantization.quant_type": ("nf4", "fp4"),
    "model.quantization.compute_dtype": DTYPES,
    "data.format": _FORMAT_NAMES,  # the live registry: a registered format is accepted and offered too
    "data.batching": ("auto", "padded", "padding_free", "packed", "group_by_length"),
    "data.overlong": ("truncate", "drop", "error"),
    "data.thinking": ("auto", "keep", "drop"),
}
"""The fields that take one of a few words, and those words (checked here; offered as choices by the web app)."""


class RecipeError(UserError, ValueError):
    """A recipe field or override is wrong; the message names the field and says what to do."""


@dataclass(frozen=True)
class QuantSpec:
    """4-bit loading of the frozen base through bitsandbytes (QLoRA's NF4 settings by default)."""

    quant_type: str = "nf4"
    """``nf4`` (normal-float, QLoRA's choice) or ``fp4``."""
    double_quant: bool = True
    """Quantise the quantisation constants too (saves ~0.4 bits per parameter)."""
    compute_dtype: str = "auto"
    """Dtype of the matmuls on dequantised blocks (and of the unquantised weights: embeddings, norms, head):
    ``auto`` is bfloat16 where bf16 matmuls are native, float32 otherwise."""
    allow_float16: bool = False
    """float16 compute with a 4-bit base overflows (loss 0 or NaN) in practice; refused unless set."""

    def __post_init__(self):
        check_types(self)
        _check_choice("model.quantization.quant_type", self.quant_type)
        _check_choice("model.quantization.compute_dtype", self.compute_dtype)
        if self.compute_dtype == "float16" and not self.allow_float16:
            raise RecipeError("model.quantization.compute_dtype=float16 with a 4-bit base is known to drive the "
                              "loss to 0 or NaN; use bfloat16 (GPUs since Ampere) or float32, or set "
                              "model.quantization.allow_float16=true to force it.")


@dataclass(frozen=True)
class ModelSpec:
    """Which base model to load and how."""

    path: str = "smollm2-135m-instruct"
    """A local folder, a hub id already in the local cache, or the embedded default's name."""
    family: str = "auto"
    """Model family (``llama``, ``opt``, ``chatglm2``); ``auto`` reads it from the config's ``model_type``."""
    dtype: str = "auto"
    """Dtype of the frozen base weights; ``auto`` is bfloat16 where bf16 matmuls are native (CUDA GPUs with bf16,
    CPUs with AVX512-BF16/AMX), float32 elsewhere. Trainable parameters are always float32 (finetune/precision.py)."""
    attn_implementation: str = "auto"
    """Attention kernel as transformers names it (``sdpa``, ``eager``, ``flash_attention_2``, ...). ``auto`` is
    ``sdpa_packed`` (``finetune/models/attention.py``): SDPA per packed example, so padding-free rows spend nothing on
    attention between examples, and P-Tuning v2 can train padding-free too."""
    max_length: int = 512
    """Longest tokenized example (prompt + answer); longer ones are truncated and counted."""
    quantization: Optional[QuantSpec] = None
    """Load the base in 4 bits (QLoRA = LoRA + this; also works under P-Tuning v2)."""
    rope_scaling: Optional[str] = None
    """``linear`` (position interpolation) or ``dynamic`` (NTK) RoPE scaling, to train past the native window."""
    rope_factor: float = 1.0
    """Scaling factor: the usable window becomes native window x factor."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint. Off by default: a checkpoint folder is untrusted input."""
    allow_pickle: bool = False
    """Accept ``.bin`` (pickle) weights. Off by default: only safetensors load; pickles can run code."""

    def __post_init__(self):
        check_types(self)
        _check_choice("model.dtype", self.dtype)
        if self.max_length < 8:
            raise RecipeError(f"model.max_length={self.max_length} is too small; use at least 8 tokens.")
        if self.rope_scaling is not None:
            _check_choice("model.rope_scaling", self.rope_scaling)
            if self.rope_factor <= 1.0:
                raise RecipeError(f"model.rope_factor={self.rope_factor} must be > 1 when rope_scaling is set.")


@dataclass(frozen=True)
class DataSpec:
    """Where the examples come from and how they are turned into prompts."""

    train: str = ""
    """Training data: a JSON/JSONL file (also ``.gz``/``.zst``), a Parquet or CSV file, a folder written by
    ``datasets``' ``save_to_disk``, or a Hub dataset from the local cache, ``hub:NAME[:SPLIT]``."""
    sources: tuple[str, ...] = ()
    """Instead of ``train``: several files mixed into one training set, each ``FILE:FORMAT[:N|:RATIO]`` as for
    ``python -m finetune.data mix`` (N examples, or a share of the mix), seeded by ``training.seed``."""
    format: str = "alpaca"
    """Record layout: alpaca, adgen, sharegpt, firefly, messages, text or prompt_completion (see docs/data-formats.md,
    "Record layout"), or one registered with ``finetune.data.formats.register_format``."""
    columns: Mapping[str, str] = field(default_factory=dict)
    """Field names as the data has them, ``{field of the format: column in the data}``, e.g. ``{"instruction":
    "question", "output": "answer"}`` (LLaMA-Factory's ``dataset_info`` columns). On the command line:
    ``data.columns=instruction=question,output=answer`` or a JSON object."""
    template: str = "auto"
    """Prompt template name; ``auto`` takes the tokenizer's own chat template (``tokenizer``) when it has one, the
    model family's template otherwise."""
    thinking: str = "auto"
    """Assistant reasoning (``reasoning_content`` or a leading ``<think>…</think>``): ``keep`` trains it (inline
    as ``<think>`` text where the template cannot show it), ``drop`` removes it and turns the chat template's
    ``enable_thinking`` off, ``auto`` keeps it where the template shows reasoning and refuses it elsewhere."""
    tools: str = ""
    """A JSON file holding a list of tool schemas (OpenAI style) for every example that has no ``tools`` field."""
    eval: str = ""
    """Held-out data (same kinds as ``train``; ``hub:NAME:SPLIT`` names its split); when empty, ``eval_split`` of the
    training set is held out instead."""
    eval_split: float = 0.0
    """Fraction of the training file held out for evaluation when ``eval`` is empty (seeded)."""
    system: Optional[str] = None
    """System prompt for every example that has none; ``None`` keeps the template's default."""
    prompt_column: str = "content"
    """adgen format: the field holding the prompt."""
    response_column: str = "summary"
    """adgen format: the field holding the answer."""
    text_column: str = "text"
    """text format: the field holding a plain text, trained on in full (TRL's ``dataset_text_field``)."""
    split: str = "train"
    """Hub datasets and ``save_to_disk`` folders with several splits: the split ``train`` reads."""
    subset: Optional[str] = None
    """Hub datasets: the subset (configuration) name, when the dataset has several."""
    revision: Optional[str] = None
    """Hub datasets: a branch, tag or commit in the local hub cache (``hf download --revision``)."""
    num_proc: int = 0
    """Processes that read and tokenize; 0 is the cores available (at most 8). Sets of a few thousand examples
    run in one process, where starting workers would cost more than it saves. Results do not depend on it."""
    overlong: str = "truncate"
    """Examples longer than model.max_length: ``truncate`` (keep whole turns, cut a first answer; counted),
    ``drop`` (skip them; counted) or ``error`` (stop, naming their lines)."""
    batching: str = "auto"
    """``padding_free`` (examples concatenated into one row, positions restarting at 0: no pad token is
    computed), ``padded`` (right padding to the longest in the batch), or ``group_by_length`` (padded batches of
    similar lengths). ``auto``: padding_free, the fastest in ``make bench`` (P-Tuning v2 too, unless
    model.attn_implementation names a kernel that cannot share its prefix between packed examples: then padded).
    ``packed``: padding-free rows filled to a token budget (``max_tokens_per_batch``) by best-fit decreasing, so
    every step computes about the same number of tokens (flat, predictable memory on a GPU); the number of examples
    per step then varies and ``training.per_device_train_batch_size`` is not used for training batches."""
    max_tokens_per_batch: Optional[int] = None
    """``batching=packed``: tokens per training batch (per process, per accumulation step); at least
    model.max_length, so every example fits. Default: per_device_train_batch_size x model.max_length, the largest
    padded batch the same settings could make."""

    def __post_init__(self):
        check_types(self)
        _check_choice("data.format", self.format)
        _check_choice("data.batching", self.batching)
        _check_choice("data.overlong", self.overlong)
        _check_choice("data.thinking", self.thinking)
        if isinstance(self.columns, str):  # from a command-line override
            object.__setattr__(self, "columns", _parse_columns(self.columns))
        if self.num_proc < 0:
            raise RecipeError(f"data.num_proc={self.num_proc} must be 0 (all cores) or a number of processes.")
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            raise RecipeError(f"data.max_tokens_per_batch={self.max_tokens_per_batch} must be a positive number of "
                              "tokens.")
        if not 0.0 <= self.eval_split < 1.0:
            raise RecipeError(f"data.eval_split={self.eval_split} must be in [0, 1).")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters through peft: only the low-rank matrices train."""

    name: typing.ClassVar[str] = "lora"
    trains_base: typing.ClassVar[bool] = False
    """Only added parameters train, so the frozen base may load in bf16 (or 4 bits)."""
    padding_free_attention: typing.ClassVar[Optional[tuple[str, ...]]] = None
    """Attention kernels under which padding-free batches work; ``None``: any."""
    r: int = 8
    """Rank of the update matrices."""
    alpha: int = 16
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: Optional[tuple[str, ...]] = None
    """Module names to adapt; ``None`` takes the family's default (all linear layers of the blocks)."""
    use_dora: bool = False
    """DoRA: learn a magnitude per output and a LoRA direction (peft's ``use_dora``)."""
    fused: bool = True
    """Run each adapted linear layer as one autograd node (``finetune.methods.fused_lora``): the same arithmetic as
    peft's layer with fewer (tokens x features) temporaries; ``false`` keeps peft's layer as it is."""

    def __post_init__(self):
        check_types(self)
        if self.r <= 0:
            raise RecipeError(f"method.r={self.r} must be positive.")


@dataclass(frozen=True)
class FullSpec:
    """Full fine-tuning: every parameter trains (needs optimizer memory for all of them)."""

    name: typing.ClassVar[str] = "full"
    trains_base: typing.ClassVar[bool] = True
    """Every weight trains, so the base is loaded in fp32 (master weights) whatever model.dtype says."""
    padding_free_attention: typing.ClassVar[Optional[tuple[str, ...]]] = None


@dataclass(frozen=True)
class PTuningSpec:
    """P-Tuning v2: trained virtual tokens give past keys/values in every layer; the base model is frozen."""

    name: typing.ClassVar[str] = "ptuning"
    trains_base: typing.ClassVar[bool] = False
    padding_free_attention: typing.ClassVar[Optional[tuple[str, ...]]] = ("auto", "sdpa_packed")
    """Packed examples must each see the shared prefix and themselves only: ``sdpa_packed``
    (finetune/models/attention.py) can, a dense kernel cannot."""
    pre_seq_len: int = 128
    """Number of virtual tokens (ChatGLM2's PRE_SEQ_LEN)."""
    prefix_projection: bool = False
    """Reparametrise the prefix through Linear -> Tanh -> Linear (ChatGLM2's prefix_projection)."""
    prefix_hidden_size: int = 0
    """Width of that projection; 0 means the model's hidden size."""
    prefix_dropout: float = 0.1
    """Dropout on the prefix keys/values (ChatGLM2 uses 0.1)."""

    def __post_init__(self):
        check_types(self)
        if self.pre_seq_len <= 0:
            raise RecipeError(f"method.pre_seq_len={self.pre_seq_len} must be positive.")


class MethodSpec(typing.Protocol):
    """What every method's spec is: a frozen dataclass with these class attributes, the built-in ones above or any
    registered with ``finetune.methods.register_method`` (a closed ``Union`` of the built-ins left those out)."""

    name: typing.ClassVar[str]
    """The method's name in ``recipe.json`` and in ``finetune.methods.get_method``."""
    trains_base: typing.ClassVar[bool]
    """Base weights train, so the base is loaded in fp32 (master weights) whatever model.dtype says."""
    padding_free_attention: typing.ClassVar[Optional[tuple[str, ...]]]
    """Attention kernels under which padding-free batches work; ``None``: any."""


BUILT_IN_METHOD_SPECS = (LoraSpec, FullSpec, PTuningSpec)
_METHOD_SPECS: dict[str, type] = {}


def register_method_spec(spec: type) -> None:
    """Let ``recipe_from_dict`` read ``method.name`` back as ``spec`` (``register_method`` calls this)."""
    _METHOD_SPECS[spec.name] = spec


for _spec in BUILT_IN_METHOD_SPECS:
    register_method_spec(_spec)


@dataclass(frozen=True)
class TrainingSpec:
    """Trainer settings, each spelled as the ``transformers.TrainingArguments`` field it becomes.

    Any other ``TrainingArguments`` field can go in ``extra`` (or be overridden as ``training.<field>=...``).
    """

    output_dir: str = ""
    """Run folder; empty means ``runs/<recipe name>-<timestamp>``."""
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.0
    """Warmup length: an int is a step count, a float in (0, 1) a fraction of the total steps."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing_factor: float = 0.0
    """Label smoothing epsilon, applied by the SFTTrainer's loss over supervised tokens only."""
    logging_steps: int = 10
    eval_strategy: str = "no"
    eval_steps: Optional[float] = None
    save_strategy: str = "no"
    save_steps: float = 500
    save_total_limit: Optional[int] = 2
    seed: int = 42
    activation_checkpointing: bool = False
    """Recompute activations in backward to save memory (transformers 5's name for gradient checkpointing)."""
    bf16: Optional[bool] = None
    """bf16 mixed precision (autocast); ``None`` turns it on when the compute dtype (``model.dtype``) is bf16."""
    optim: str = "adamw_torch"
    report_to: str = "none"
    dataloader_num_workers: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Further ``TrainingArguments`` fields, passed through unchanged."""

    def __post_init__(self):
        check_types(self)
        if not 0 < self.learning_rate <= 1e30:
            raise RecipeError(f"training.learning_rate={self.learning_rate:g} must be positive and at most 1e30 (the "
                              "optimizer's float32 update overflows near 1e37, and a run diverges long before); "
                              "fine-tuning rates are 1e-6 to 1e-3.")
        if self.max_steps == 0 or (self.max_steps < 0 and self.num_train_epochs <= 0):
            raise RecipeError(f"training.num_train_epochs={self.num_train_epochs:g} with training.max_steps="
                              f"{self.max_steps} trains nothing: set num_train_epochs > 0, or max_steps > 0.")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise RecipeError("training batch size and gradient_accumulation_steps must be >= 1.")
        if not 0.0 <= self.label_smoothing_factor < 1.0:
            raise RecipeError(f"training.label_smoothing_factor={self.label_smoothing_factor} must be in [0, 1).")
        unknown = set(self.extra) - training_argument_names()
        if unknown:
            raise RecipeError(f"training.extra has keys that are not TrainingArguments fields: {sorted(unknown)}")


@dataclass(frozen=True)
class EvalSpec:
    """What is generated to prove the model learned: a few samples before and after training, and optionally
    scored answers to the held-out prompts at every evaluation during training."""

    samples: int = 4
    """Held-out examples generated before and after training (0 turns it off)."""
    max_new_tokens: int = 64
    """Generation length (the cap for the samples and for ``generate``)."""
    generate: bool = False
    """At every evaluation (``training.eval_strategy``/``eval_steps``, and before and after training) also answer
    the held-out prompts and log their scores beside ``eval_loss``: ``eval_rouge-l``, ``eval_bleu-4``, ... (Chinese:
    jieba ROUGE + character BLEU-4 as ChatGLM2's script; English: ROUGE, exact match, BLEU-4). Off by default: it
    costs one generation pass per evaluation."""
    generate_limit: int = 0
    """Answer only the first N held-out prompts at each evaluation (0: all of them)."""
    do_sample: bool = False
    """Sample instead of greedy decoding (then ``top_p`` and ``temperature``; the seed makes it repeatable)."""
    top_p: float = 0.7
    temperature: float = 0.95

    def __post_init__(self):
        check_types(self)
        if self.samples < 0 or self.generate_limit < 0 or self.max_new_tokens < 1:
            raise RecipeError("eval.samples and eval.generate_limit must be >= 0 and eval.max_new_tokens >= 1.")


@dataclass(frozen=True)
class Recipe:
    """A whole fine-tuning run."""

    name: str
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    method: MethodSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "_").replace(".", "_").isidentifier():
            raise RecipeError(f"Recipe name {self.name!r} must be a short identifier (letters, digits, _ - .).")
        if not self.data.train and not self.data.sources:
            raise RecipeError("data.train is empty: set it to a JSON/JSONL file of examples (or data.sources).")
        if self.data.train and self.data.sources:
            raise RecipeError("Set data.train or data.sources, not both.")
        if self.data.batching in PACKED_ROWS and not _packs(self):
            allowed = " or ".join(self.method.padding_free_attention)
            raise RecipeError(f"data.batching={self.data.batching} with method {self.method.name!r} needs "
                              f"model.attn_implementation={allowed} (every packed example must attend to the shared "
                              f"prefix and to itself only); {self.model.attn_implementation!r} cannot, so use it with "
                              "data.batching=padded.")


def token_budget(recipe: Recipe) -> int:
    """Tokens per training batch under ``data.batching=packed`` (``data.max_tokens_per_batch`` or its default)."""
    return recipe.data.max_tokens_per_batch or recipe.training.per_device_train_batch_size * recipe.model.max_length


def check_settings_agree(recipe: Recipe) -> None:
    """Settings of different sections that only fail together, and late: found before any compute (``train()``
    calls this first, so ``--dry-run`` does too). Not in ``__post_init__``, where overrides applied one at a time
    (``data.eval= training.eval_strategy=no``) would be refused halfway.

    Raises:
        RecipeError: evaluation asked for without held-out data (transformers' ValueError came after the model
            loaded); a token budget without packed batches, or one the longest examples do not fit in; a
            best-model metric only ``eval.generate`` logs, with it off (a KeyError after training).
    """
    if recipe.training.eval_strategy != "no" and not (recipe.data.eval or recipe.data.eval_split):
        raise RecipeError(f"training.eval_strategy={recipe.training.eval_strategy} evaluates held-out data, and the "
                          "recipe has none: set data.eval (a file) or data.eval_split, or training.eval_strategy=no.")
    budget = recipe.data.max_tokens_per_batch
    if budget is not None and recipe.data.batching != "packed":
        raise RecipeError(f"data.max_tokens_per_batch={budget} sets the token budget of data.batching=packed, and "
                          f"data.batching is {recipe.data.batching}: set data.batching=packed, or drop the budget.")
    if budget is not None and budget < recipe.model.max_length:
        raise RecipeError(f"data.max_tokens_per_batch={budget} is below model.max_length={recipe.model.max_length}, "
                          "so the longest examples would fit in no batch: raise it to at least "
                          f"{recipe.model.max_length} (or lower model.max_length).")
    metric = (recipe.training.extra.get("metric_for_best_model") or "").removeprefix("eval_")
    if metric in GENERATION_METRICS and not recipe.eval.generate:
        raise RecipeError(f"training.metric_for_best_model=eval_{metric} is a generation score, logged only with "
                          "eval.generate=true; turn that on, or pick eval_loss.")


GENERATION_METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4", "exact-match")
"""The scores ``eval.generate`` logs at each evaluation (as ``eval_<name>``; finetune/evaluation/metrics.py)."""


def resolved_batching(recipe: Recipe, attention: Optional[str] = None) -> str:
    """``data.batching`` with ``auto`` decided: padding-free, unless the method needs an attention kernel for it
    that the recipe does not run (P-Tuning v2 on a dense kernel: one prefix cannot be shared between examples).

    Args:
        attention: the kernel ``model.attn_implementation`` resolved to for the model (``auto`` is the packed
            kernel for most models, but plain SDPA or eager for sliding-window or soft-capped ones).
    """
    if recipe.data.batching != "auto":
        return recipe.data.batching
    return "padding_free" if _packs(recipe, attention) else "padded"


def _packs(recipe: Recipe, attention: Optional[str] = None) -> bool:
    allowed = getattr(recipe.method, "padding_free_attention", None)
    return allowed is None or (attention or recipe.model.attn_implementation) in allowed


def recipe_to_dict(recipe: Recipe) -> dict:
    """A JSON-ready dict of the recipe, with the method's name so it can be read back."""
    out = dataclasses.asdict(recipe)
    out["method"] = {"name": recipe.method.name, **out["method"]}
    return json.loads(json.dumps(out, default=list))


def recipe_from_dict(data: Mapping[str, Any]) -> Recipe:
    """Inverse of :func:`recipe_to_dict` (used to read ``recipe.json`` back from a run folder)."""
    method = dict(data["method"])
    name = method.pop("name")
    if name not in _METHOD_SPECS:
        raise RecipeError(f"method {name!r} is not registered here; import the module that registers it "
                          f"(known: {', '.join(sorted(_METHOD_SPECS))}).")
    method_cls = _METHOD_SPECS[name]
    method = {k: tuple(v) if isinstance(v, list) else v for k, v in method.items()}  # JSON has no tuples
    model = dict(data["model"])
    if model.get("quantization") is not None:
        model["quantization"] = QuantSpec(**model["quantization"])
    data_spec = {**data["data"], "sources": tuple(data["data"].get("sources") or ())}
    return Recipe(
        name=data["name"], model=ModelSpec(**model), data=DataSpec(**data_spec),
        method=method_cls(**method), training=TrainingSpec(**data["training"]), eval=EvalSpec(**data["eval"]),
    )


def _parse_columns(raw: str) -> dict:
    """``instruction=question,output=answer`` or a JSON object, as ``data.columns`` arrives from an override."""
    try:
        parsed = json.loads(raw) if raw.strip().startswith("{") else dict(
            part.split("=", 1) for part in raw.split(",") if part.strip())
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise RecipeError(f"data.columns={raw!r}: expected field=column pairs, e.g. "
                          "data.columns=instruction=question,output=answer")
    return {k.strip(): v.strip() for k, v in parsed.items()}


_SECTIONS = {"QuantSpec": "model.quantization", "ModelSpec": "model", "DataSpec": "data", "TrainingSpec": "training",
             "EvalSpec": "eval"}
_SIMPLE = {int: (int,), float: (int, float), str: (str,), bool: (bool,), type(None): (type(None),)}


def check_types(spec) -> None:
    """Each field of ``spec`` holds its annotated type, where that is a plain ``int``, ``float``, ``str``, ``bool``
    or an optional one. A recipe file is Python, so nothing else stops ``ModelSpec(max_length="64")``, which would
    fail later as a bare ``TypeError`` far from the line that caused it."""
    hints = typing.get_type_hints(type(spec))
    for f in dataclasses.fields(spec):
        hint = hints.get(f.name)
        options = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
        if not all(option in _SIMPLE for option in options):
            continue  # containers, nested specs, Any: checked where they are used
        value = getattr(spec, f.name)
        allowed = tuple(t for option in options for t in _SIMPLE[option])
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in options):
            section = _SECTIONS.get(type(spec).__name__, "method")
            names = " or ".join("None" if o is type(None) else o.__name__ for o in options)
            raise RecipeError(f"{section}.{f.name}={value!r} must be {names}"
                              f"{' (no quotes)' if isinstance(value, str) else ''}.")


def _check_choice(key: str, value: str) -> None:
    choices = CHOICES[key]
    if value not in choices:
        raise RecipeError(f"{key}={value!r} is not one of {', '.join(choices)}{suggest_names(value, choices)}")


def suggest_names(word: str, candidates, prefix: str = "") -> str:
    candidates = list(dict.fromkeys(candidates))  # a TrainingSpec field is also a TrainingArguments one: name it once
    close = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5) or [
        c for c in candidates if word.startswith(c) or c.startswith(word)][:3]
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else "."


def training_argument_names() -> set[str]:
    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
