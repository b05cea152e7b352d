"""What the benchmark runs: its data, the tiny model, and each configuration's trainer (ours and the peers').

Every configuration gets the same model, data (256 long-tailed Alpaca examples, tokenized by our encoder with the
ChatML template), seed, LoRA (r 8, alpha 16, all linear layers, dropout 0 so losses are comparable), learning rate
and batch size 8. See bench/README.md for what each configuration is.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]

PEERS = ("trl_default", "trl_padding_free", "hf_group_by_length", "hf_flattening", "hf_flattening_bf16")
"""Peers run as their users get them: fp32 on CPU (transformers' and TRL's defaults there), bf16 weights and
autocast on GPU; ``*_bf16`` is the peer with bf16 weights and ``bf16=True`` on any device."""


class Ours(NamedTuple):
    """One of our configurations: what the recipe sets, and whether it is a variant of the default (one switch
    flipped: an ablation, or an option such as checkpointing) rather than a batching mode a recipe may pick."""

    method: str
    batching: str
    attention: str = "auto"  # model.attn_implementation
    all_logits: bool = False  # ablation: logits at every position, as the peers compute them
    checkpointing: bool = False  # training.activation_checkpointing (memory for time, as TRL's default)
    fused_lora: bool = True  # method.fused: one autograd node per LoRA layer
    dtype: str = "auto"  # model.dtype: bf16 where bf16 matmuls are native (this CPU too, if AVX512-BF16/AMX)
    compiled: bool = False  # training.torch_compile (regional, dynamic shapes)
    max_tokens: Optional[int] = None  # data.max_tokens_per_batch (data.batching=packed)
    variant: bool = False


OURS = {
    "finetune_lora_padding_free": Ours("lora", "padding_free"),  # the default
    "finetune_lora_padded": Ours("lora", "padded"),
    "finetune_lora_group_by_length": Ours("lora", "group_by_length"),
    "finetune_ptuning": Ours("ptuning", "padding_free"),
    "finetune_full": Ours("full", "padding_free"),  # full fine-tuning: 6N FLOPs per token (weight gradients too)
    # Token-budget batches of 1,024 tokens (the 8-example batches average ~690): the step's matmuls grow with it.
    "finetune_lora_packed": Ours("lora", "packed", max_tokens=1024),
    # The default minus one ingredient each: sdpa_packed -> transformers' dense block-diagonal mask; logits only at
    # supervised positions -> logits everywhere; the fused LoRA layer -> peft's.
    "finetune_lora_padding_free_dense_sdpa": Ours("lora", "padding_free", attention="sdpa", variant=True),
    "finetune_lora_padding_free_all_logits": Ours("lora", "padding_free", all_logits=True, variant=True),
    "finetune_lora_padding_free_peft_layers": Ours("lora", "padding_free", fused_lora=False, variant=True),
    # An option rather than an ablation: the default plus activation checkpointing, the memory-lean setting.
    "finetune_lora_padding_free_checkpointing": Ours("lora", "padding_free", checkpointing=True, variant=True),
    # The default in fp32 (model.dtype=float32): what the default is on hardware without native bf16.
    "finetune_lora_padding_free_fp32": Ours("lora", "padding_free", dtype="float32", variant=True),
    # The default compiled (training.torch_compile=true): its first step includes the compilation.
    "finetune_lora_padding_free_compiled": Ours("lora", "padding_free", compiled=True, variant=True),
}
DEFAULT = "finetune_lora_padding_free"
CONFIGS = PEERS + tuple(OURS)
EXAMPLES, BATCH, LEARNING_RATE, MAX_LENGTH, SEED = 256, 8, 2e-4, 512, 0
# Answers of 1 sentence are most common, a few run to 24 sentences (~500 tokens): the long tail of real SFT data.
SENTENCES = ((1, 45), (2, 20), (3, 12), (4, 6), (6, 6), (8, 4), (12, 3), (16, 2), (24, 2))


def write_data(path: Path, n: int = EXAMPLES, seed: int = SEED) -> None:
    """Alpaca records from the bundled Unicode names, with answers of long-tailed length."""
    base = [json.loads(line) for line in (ROOT / "data/unicode_names/train.jsonl").read_text().splitlines()]
    rng = random.Random(seed)
    counts, weights = zip(*SENTENCES)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            record = dict(base[i % len(base)])
            extra = [rng.choice(base) for _ in range(rng.choices(counts, weights)[0] - 1)]
            record["output"] = " ".join([record["output"]] + [
                f"Unlike {record['input']}, the character {o['input']} is called {o['output'].lower()}."
                for o in extra])
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def tiny_model(folder: Path, tokenizer_path: Path) -> Path:
    """A random Llama (hidden 256, 4 layers, 8 heads / 4 kv heads) with SmolLM2's tokenizer, saved once."""
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(SEED)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    AutoModelForCausalLM.from_config(config).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(folder)
    return folder


def build_ours(config: str, model_path: Path, data_path: Path, steps: int):
    """Our trainer built with the same functions ``finetune.train.train`` calls, in the same order."""
    from transformers import set_seed

    from finetune.build import make_collator, method_model, training_arguments, training_batches
    from finetune.data import LabelAudit, build_datasets
    from finetune.methods import get_method
    from finetune.models import resolve_model
    from finetune.precision import resolve_dtype
    from finetune.recipe import DataSpec, FullSpec, LoraSpec, ModelSpec, PTuningSpec, Recipe, TrainingSpec

    set_seed(SEED)
    spec = OURS[config]
    methods = {"lora": lambda: LoraSpec(r=8, alpha=16, dropout=0.0, fused=spec.fused_lora), "full": FullSpec,
               "ptuning": lambda: PTuningSpec(pre_seq_len=16, prefix_projection=False, prefix_dropout=0.0)}
    method = methods[spec.method]()
    output_dir = output_dir_for(config)
    recipe = Recipe(
        name=config, model=ModelSpec(path=str(model_path), max_length=MAX_LENGTH, attn_implementation=spec.attention,
                                     dtype=spec.dtype),
        data=DataSpec(train=str(data_path), format="alpaca", template="chatml", batching=spec.batching,
                      max_tokens_per_batch=spec.max_tokens),
        method=method,
        training=TrainingSpec(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=BATCH,
                              learning_rate=LEARNING_RATE, lr_scheduler_type="linear", logging_steps=1, seed=SEED,
                              activation_checkpointing=spec.checkpointing,
                              extra={"torch_compile": True} if spec.compiled else {}))
    resolved = resolve_model(recipe.model, recipe.data.template)
    tokenizer, template = resolved.tokenizer, resolved.template

    def tokenize():
        built = build_datasets(recipe.data, tokenizer, template, MAX_LENGTH, SEED)
        return built, {"seconds": round(built.tokenize_seconds, 3), "cache_hit": built.cache_hit,
                       "examples_per_s": round(len(built.train) / built.tokenize_seconds, 1)}

    data, cold = tokenize()
    LabelAudit.of(data.train, tokenizer, data.skipped)  # train() always audits; it counts toward the first step
    set_seed(SEED)  # the same adapter initialisation in every configuration
    model = method_model(resolved.path, resolved.family, recipe.model, recipe.method)
    base_parameters = sum(p.numel() for p in model.parameters() if spec.method == "full" or not p.requires_grad)
    cls = get_method(recipe.method.name).trainer
    if spec.all_logits:
        cls = _with_all_logits(cls)
    trainer = cls(
        model=model, args=training_arguments(recipe.training, output_dir, spec.batching, resolve_dtype(spec.dtype)),
        train_dataset=training_batches(recipe, data.train, spec.batching),
        data_collator=make_collator(spec.batching, tokenizer), processing_class=tokenizer, template=template,
        recipe=recipe)
    return trainer, {"tokenize": {"cold": cold}, "warm_cache": lambda: tokenize()[1],
                     "base_parameters": base_parameters}


def _with_all_logits(cls):
    """The trainer with its loss computed from logits at every position (the ablation of ``logits_to_keep``)."""
    from finetune.training.loss import causal_lm_loss

    class AllLogits(cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            inputs.pop("lines", None)
            labels = inputs.pop("labels")
            logits = model(**inputs, use_cache=False).logits
            return causal_lm_loss(logits[:, :-1], labels[:, 1:], 0.0, num_items_in_batch)

    return AllLogits


def build_peer(config: str, model_path: Path, data_path: Path, steps: int):
    """TRL's SFTTrainer or a plain transformers Trainer on the same tokenized examples (input_ids and labels)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from finetune.data import build_datasets
    from finetune.methods.lora import lora_config
    from finetune.models import load_tokenizer, resolve_family
    from finetune.recipe import DataSpec, LoraSpec, ModelSpec
    from finetune.templates import get_template

    set_seed(SEED)
    family = resolve_family(ModelSpec(path=str(model_path)), model_path)
    tokenizer = load_tokenizer(model_path, family)  # our pad token (distinct from EOS); TRL would use it too
    spec = DataSpec(train=str(data_path), format="alpaca", template="chatml")
    data = build_datasets(spec, tokenizer, get_template("chatml"), MAX_LENGTH, SEED).train
    # TRL keeps a "labels" column as it is; a "completion_mask" column would be ignored for pre-tokenized data
    # unless completion_only_loss=True (its default None means True only for raw prompt/completion text).
    data = data.select_columns(["input_ids", "labels"])
    cuda = torch.cuda.is_available()
    bf16 = config.endswith("_bf16") or (cuda and torch.cuda.is_bf16_supported())
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
    base_parameters = sum(p.numel() for p in model.parameters())
    lora = lora_config(LoraSpec(r=8, alpha=16, dropout=0.0), family)
    common = dict(output_dir=str(output_dir_for(config)), max_steps=steps,
                  per_device_train_batch_size=BATCH, learning_rate=LEARNING_RATE, logging_steps=1, seed=SEED,
                  report_to="none", save_strategy="no", disable_tqdm=True)
    if config.startswith("trl_"):
        from trl import SFTConfig, SFTTrainer

        # TRL's defaults (gradient checkpointing on, bf16 on) except what CPU needs.
        extra = {"padding_free": True, "max_length": None} if config == "trl_padding_free" else {}
        args = SFTConfig(**common, **({} if cuda else {"use_cpu": True, "bf16": False}), **extra)
        set_seed(SEED)  # SFTTrainer wraps the model with peft_config first thing
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=lora)
        return trainer, {"base_parameters": base_parameters}

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, Trainer, TrainingArguments

    sampling = {"train_sampling_strategy": "group_by_length"} if config == "hf_group_by_length" else {}
    args = TrainingArguments(**common, use_cpu=not cuda, bf16=bf16, **sampling)
    flattening = config.startswith("hf_flattening")
    collator = DataCollatorWithFlattening() if flattening else DataCollatorForSeq2Seq(tokenizer)
    set_seed(SEED)
    trainer = Trainer(model=get_peft_model(model, lora), args=args, train_dataset=data, data_collator=collator,
                      processing_class=tokenizer)
    return trainer, {"base_parameters": base_parameters}


def output_dir_for(config: str) -> Path:
    """A run folder inside the worker's own cache folder, which the main run deletes at the end."""
    folder = Path(os.environ.get("FINETUNE_CACHE") or tempfile.mkdtemp()) / f"run-{config}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
