"""P-Tuning v2: trained virtual tokens that become past keys/values in every attention layer.

Written here rather than taken from peft's ``PrefixTuningConfig`` because peft (0.21) refuses gradient
checkpointing with a prefix, which a 6B model needs, and shifts the real tokens' position ids by the prefix length,
while ChatGLM2 (and its published prefixes) start them at 0.

How checkpointing works with a prefix: the prefix is handed to the model as a cache whose ``update`` returns
``prefix + new`` keys/values *without storing anything*. Such a cache is only read, so the backward replay of a
checkpointed layer sees the same states, and the layers may keep it (``_can_checkpoint_with_cache``).
The encoder's layout is ChatGLM2's (``embedding``, ``trans.0``, ``trans.2``), so official checkpoints load as is.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer
from typing_extensions import override  # typing.override from Python 3.12

from ..left_padded_positions import left_padded_position_ids  # real tokens from 0, whatever the family
from ..models import PACKED_SDPA
from ..precision import compute_dtype
from ..recipe import PTuningSpec
from ..runs import write_run_files
from ..training import SFTTrainer
from .method import Method
from .ptuning_io import PREFIX_CONFIG, PREFIX_WEIGHTS, prefix_shape, read_prefix, write_prefix

__all__ = ["PrefixEncoder", "PrefixModel", "PrefixTrainer", "apply_ptuning", "load_prefix_model", "PTUNING",
           "PREFIX_WEIGHTS", "PREFIX_CONFIG"]


class PrefixEncoder(nn.Module):
    """``pre_seq_len`` virtual tokens -> one key and one value per layer, kv-head and position.

    With ``prefix_projection`` the embedding is reparametrised through Linear -> Tanh -> Linear (ChatGLM2's shape:
    kv_size -> hidden_size -> kv_size), which trains more stably; without it the embedding is the prefix.
    """

    def __init__(self, pre_seq_len: int, num_layers: int, kv_heads: int, head_dim: int,
                 prefix_projection: bool = False, hidden_size: int = 0, dropout: float = 0.0):
        super().__init__()
        self.config = {"pre_seq_len": pre_seq_len, "num_layers": num_layers, "kv_heads": kv_heads,
                       "head_dim": head_dim, "prefix_projection": prefix_projection, "hidden_size": hidden_size,
                       "dropout": dropout}
        kv_size = num_layers * 2 * kv_heads * head_dim
        self.embedding = nn.Embedding(pre_seq_len, kv_size)
        if prefix_projection:
            self.trans = nn.Sequential(nn.Linear(kv_size, hidden_size), nn.Tanh(), nn.Linear(hidden_size, kv_size))
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch_size: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer ``(keys, values)`` of shape (batch, kv_heads, pre_seq_len, head_dim)."""
        c = self.config
        prefix = self.embedding.weight
        if c["prefix_projection"]:
            prefix = self.trans(prefix)
        # Flattened as ChatGLM2 lays it out: (layer, key/value, kv-head, head_dim).
        prefix = self.dropout(prefix.view(c["pre_seq_len"], c["num_layers"] * 2, c["kv_heads"], c["head_dim"]))
        prefix = prefix.permute(1, 2, 0, 3).to(dtype)  # (layers*2, kv_heads, P, head_dim)
        shape = (batch_size, c["kv_heads"], c["pre_seq_len"], c["head_dim"])
        return [(prefix[2 * i].expand(shape), prefix[2 * i + 1].expand(shape)) for i in range(c["num_layers"])]


class _PrefixLayer(DynamicLayer):
    """A cache layer pre-filled with the prefix; read-only during training, growing during generation."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, read_only: bool):
        super().__init__()
        self.keys, self.values, self.read_only = keys, values, read_only
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = torch.cat([self.keys, key_states], -2), torch.cat([self.values, value_states], -2)
        if not self.read_only:
            self.keys, self.values = keys, values
        return keys, values


def prefix_cache(past: list[tuple[torch.Tensor, torch.Tensor]], read_only: bool) -> Cache:
    return Cache(layers=[_PrefixLayer(k, v, read_only) for k, v in past])


class PrefixModel(nn.Module):
    """A frozen causal LM driven by a trained :class:`PrefixEncoder`.

    ``forward`` takes the usual batch; real tokens get positions 0, 1, ... (left padding respected) and attend to
    the whole prefix. ``generate`` is a small greedy / top-p loop with the same positions, since transformers'
    ``generate`` would number real tokens after the prefix.
    """

    def __init__(self, base_model, prefix_encoder: PrefixEncoder):
        super().__init__()
        self.base_model, self.prefix_encoder = base_model, prefix_encoder
        self.config = base_model.config
        # transformers 5.x renamed the forward's ``past_key_values`` to ``cache`` (the old name warns).
        parameters = inspect.signature(base_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self._prefix_off = False
        base_model.requires_grad_(False)
        for module in base_model.modules():
            if hasattr(module, "_can_checkpoint_with_cache"):
                module._can_checkpoint_with_cache = True  # our prefix cache is only read, so replay is exact

    @property
    def _no_split_modules(self):
        """The base model's blocks: FSDP's auto-wrap policy shards those (the prefix encoder stays whole)."""
        return self.base_model._no_split_modules

    @property
    def pre_seq_len(self) -> int:
        return self.prefix_encoder.config["pre_seq_len"]

    def _inputs(self, input_ids, attention_mask, read_only: bool, position_ids=None) -> dict:
        """The base model's inputs with the prefix as a cache; ``position_ids`` are kept only for packed rows."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = left_padded_position_ids(attention_mask)
        elif self.config._attn_implementation != PACKED_SDPA:
            raise ValueError(f"A padding-free (packed) batch under P-Tuning v2 needs attn_implementation="
                             f"{PACKED_SDPA!r} (each example must see the prefix and itself only); this model runs "
                             f"{self.config._attn_implementation!r}. Use data.batching=padded.")
        batch = input_ids.shape[0]
        # The prefix joins keys/values computed in the compute dtype (bf16 under autocast or over bf16 weights);
        # the encoder itself stays fp32 (finetune/precision.py).
        dtype = compute_dtype(input_ids.device.type, self.base_model.get_input_embeddings().weight.dtype)
        past = self.prefix_encoder(batch, dtype)
        prefix_mask = attention_mask.new_ones(batch, self.pre_seq_len)
        return {"input_ids": input_ids, "attention_mask": torch.cat([prefix_mask, attention_mask], -1),
                "position_ids": position_ids, self._cache_kwarg: prefix_cache(past, read_only)}

    @contextlib.contextmanager
    def disable_prefix(self):
        """Run as the untrained base model (like peft's ``disable_adapter``), e.g. for a before/after baseline."""
        self._prefix_off = True
        try:
            yield
        finally:
            self._prefix_off = False

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        """Padded batches (real tokens numbered from 0 whatever the padding), or packed rows with the collator's
        restarting ``position_ids`` and no mask."""
        kwargs.pop("use_cache", None)
        packed = position_ids if attention_mask is None else None
        if self._prefix_off:
            return self.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=packed,
                                   use_cache=False, **kwargs)
        return self.base_model(**self._inputs(input_ids, attention_mask, True, packed), use_cache=False, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 64, eos_token_id=None,
                 pad_token_id=0, do_sample: bool = False, temperature=None, top_p=None, **_):
        """Greedy (or temperature / top-p sampling) decoding; returns prompt + new tokens like ``generate``."""
        if self._prefix_off:
            return self.base_model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                            pad_token_id=pad_token_id, do_sample=do_sample, temperature=temperature,
                                            top_p=top_p)
        inputs = self._inputs(input_ids, attention_mask, read_only=False)
        cache, mask = inputs[self._cache_kwarg], inputs["attention_mask"]
        positions = inputs["position_ids"][:, -1:]
        logits = self.base_model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tokens = []
        for _ in range(max_new_tokens):
            token = _pick(logits.float(), do_sample, temperature, top_p)
            token = torch.where(done, torch.full_like(token, pad_token_id), token)
            tokens.append(token)
            if eos_token_id is not None:  # one id, or every token that ends an answer (Gemma: two)
                done |= torch.isin(token, torch.tensor(eos_token_id, device=token.device).reshape(-1))
            if bool(done.all()):
                break
            mask, positions = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1), positions + 1
            logits = self.base_model(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                                     use_cache=True, **{self._cache_kwarg: cache}).logits[:, -1]
        return torch.cat([input_ids, torch.stack(tokens, 1)], 1)

    # Trainer turns checkpointing on through these.
    def activation_checkpointing_enable(self, **kwargs):
        self.base_model.activation_checkpointing_enable(**kwargs)

    def activation_checkpointing_disable(self):
        self.base_model.activation_checkpointing_disable()

    def get_input_embeddings(self):
        return self.base_model.get_input_embeddings()

    def load_prefix(self, directory: str | Path) -> None:
        """Load the prefix encoder written by :meth:`save_prefix` into this model (a checkpoint, the best one)."""
        self.prefix_encoder.load_state_dict(read_prefix(directory)[1])

    def save_prefix(self, directory: str | Path, state: Optional[dict] = None) -> None:
        """Write only the prefix encoder (``state``, by default this model's) and its shape."""
        # A converted ChatGLM2 is built from a state dict: its path is on the model, its config's is None.
        base = getattr(self.base_model, "name_or_path", None) or self.config._name_or_path
        write_prefix(self.prefix_encoder.state_dict() if state is None else state, self.prefix_encoder.config,
                     directory, str(base) if base else None)


def _pick(logits, do_sample, temperature, top_p):
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / (temperature or 1.0), -1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs * keep)
    return torch.multinomial(probs, 1).squeeze(-1)


def prefix_encoder_for(config, spec) -> PrefixEncoder:
    """A prefix encoder sized for a transformers model config (grouped / multi-query attention included)."""
    return PrefixEncoder(spec.pre_seq_len, *prefix_shape(config), spec.prefix_projection,
                         spec.prefix_hidden_size or config.hidden_size, spec.prefix_dropout)


def apply_ptuning(model, spec, family) -> PrefixModel:
    encoder = prefix_encoder_for(model.config, spec).to(model.get_input_embeddings().weight.device)
    return PrefixModel(model, encoder)


def load_prefix_model(base_model, directory: str | Path) -> PrefixModel:
    """Base model + a saved prefix (ours, or ChatGLM2's official ``pytorch_model.bin`` layout)."""
    config, state = read_prefix(directory, base_model.config)
    encoder = PrefixEncoder(**config)
    encoder.load_state_dict(state)
    return PrefixModel(base_model, encoder.to(base_model.get_input_embeddings().weight.device)).eval()


class PrefixTrainer(SFTTrainer):
    """SFTTrainer for P-Tuning v2, whose checkpoints hold only the prefix encoder."""

    @override
    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        """Write the prefix encoder alone: the base model is frozen, so saving it again would only cost disk.

        Under FSDP and DeepSpeed the Trainer gathers the whole model's ``state_dict`` and passes it in; the prefix
        is taken from it, since this process's own parameters may be only a shard (empty under ZeRO-3).
        """
        if not self.args.should_save:  # transformers calls this in every process
            return
        output_dir = output_dir or self.args.output_dir
        prefix = None
        if state_dict is not None:
            prefix = {k.split("prefix_encoder.", 1)[1]: v for k, v in state_dict.items() if "prefix_encoder." in k}
        self.accelerator.unwrap_model(self.model).save_prefix(output_dir, prefix)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        write_run_files(output_dir, self.template, self.recipe)

    @override
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume: the checkpoint holds the prefix encoder alone (see ``_save``), which the Trainer cannot find."""
        self.accelerator.unwrap_model(self.model).load_prefix(resume_from_checkpoint)

    @override
    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: the best checkpoint's prefix encoder, for the same reason."""
        self.accelerator.unwrap_model(self.model).load_prefix(self.state.best_model_checkpoint)


def _untrained(model):
    return model.disable_prefix()  # a fresh random prefix is not a baseline: the base model is


PTUNING = Method(spec=PTuningSpec, apply=apply_ptuning, load=load_prefix_model, trainer=PrefixTrainer,
                 untrained=_untrained, not_exported=(
                     "a P-Tuning v2 run is a prefix of past keys/values fed to every layer, which no GGUF runtime "
                     "(llama.cpp, Ollama, LM Studio) can load; serve it with `python -m finetune.chat RUN_DIR`, or "
                     "train the same recipe with method=LoraSpec(...) and export that"))
