"""Packed attention: SDPA run per packed example, so no compute is spent on the masked-out blocks.

Why: transformers (5.x) turns a padding-free row — several examples concatenated, position ids restarting at 0 —
into one dense block-diagonal mask for SDPA. Attention then costs O(row length^2) however short the examples
are, and a masked SDPA cannot take the fast causal kernel. flash-attention's variable-length kernel avoids that
on CUDA, but it is not installed everywhere and does not exist on CPU. Here each example gets its own causal
``scaled_dot_product_attention`` call (measured on SmolLM2-135M, 2 CPU cores, 8 examples per row: 1.4x the
tokens/s of the dense mask with identical losses).

A prefix that every query may see — P-Tuning v2's virtual tokens, or the cache during generation — is the
first ``key_len - query_len`` keys; each example attends to it and then causally to itself. That is what lets
P-Tuning v2 train padding-free: one shared prefix, many packed examples.

Padded batches (a mask with zeros) go to transformers' SDPA path unchanged, so evaluation and generation behave
exactly as with ``attn_implementation="sdpa"``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ..errors import UsageError

__all__ = ["PACKED_SDPA", "packed_sdpa_attention", "packed_sdpa_mask", "segment_lengths", "resolve_attention"]

PACKED_SDPA = "sdpa_packed"


def segment_lengths(position_ids: torch.Tensor) -> list[list[int]]:
    """Lengths of the examples in each row: a new one starts wherever the position does not go up by 1.

    The same rule transformers uses to find packed sequences, so both agree on where examples begin.
    """
    restarts = torch.ones_like(position_ids, dtype=torch.bool)
    restarts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    rows = []
    for starts in restarts.cpu().tolist():
        bounds = [i for i, start in enumerate(starts) if start] + [len(starts)]
        rows.append([b - a for a, b in zip(bounds, bounds[1:])])
    return rows


def packed_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                          position_ids=None, packed_lengths=None, **kwargs):
    """An ``AttentionInterface`` function: (batch, heads, len, dim) in, (batch, len, heads, dim) out.

    ``packed_lengths`` (the example lengths of each row, host integers) comes from ``PaddingFreeCollator``
    through the model's keyword arguments; without it the layout is read from ``position_ids``, which on a GPU
    costs a device sync in every layer.
    """
    if attention_mask is not None:  # padding somewhere: the dense mask is needed, and correct
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    q_len, dtype = query.shape[2], query.dtype
    if packed_lengths is not None:
        rows = packed_lengths
    else:
        rows = segment_lengths(position_ids[:, -q_len:]) if position_ids is not None else [[q_len]]
    options = {"scale": scaling, "dropout_p": dropout if module.training else 0.0,
               "enable_gqa": query.shape[1] != key.shape[1]}
    fp32_on_cpu = module.training and query.device.type == "cpu" and dtype == torch.bfloat16
    if fp32_on_cpu:
        # PyTorch's CPU attention kernels run bf16 1.3-5x slower than fp32 at these lengths (forward + backward,
        # 40-300 tokens, 64-wide heads: measured with torch 2.13), and attention is a small share of the FLOPs.
        # Autocast is paused, or it would cast them back. Only in training: evaluation and generation keep bf16
        # attention, so a model reloaded with plain transformers ("sdpa") answers token for token the same.
        query, key, value = query.float(), key.float(), value.float()
    with torch.autocast("cpu", enabled=False) if fp32_on_cpu else contextlib.nullcontext():
        if all(r == rows[0] for r in rows):  # one layout for the whole batch (the packed row)
            out = _attend(query, key, value, rows[0], options)
        else:
            out = torch.cat([_attend(q, k, v, lengths, options)
                             for q, k, v, lengths in zip(query.split(1), key.split(1), value.split(1), rows)], 0)
    return out.to(dtype), None


def _attend(query, key, value, lengths: list[int], options: dict):
    shared = key.shape[2] - query.shape[2]  # prefix / cache every example may attend to
    # split (not slicing): its backward is one concatenation, where each slice's backward would zero-fill a full
    # copy of the row.
    queries = query.split(lengths, 2)
    keys, values = key.split([shared] + lengths, 2), value.split([shared] + lengths, 2)
    outputs = []
    for q, k, v in zip(queries, keys[1:], values[1:]):
        if shared:
            k, v = torch.cat([keys[0], k], 2), torch.cat([values[0], v], 2)
            # Bottom-right causal: query i sees the whole prefix and its own example up to i.
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(shared)
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options))
        else:
            outputs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, **options))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 2)
    return out.transpose(1, 2).contiguous()


def packed_sdpa_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """No mask unless there is padding: the attention function derives causality and packing itself.

    Skipping the dense mask also saves building a (row length)^2 tensor per forward, which for long packed rows
    is the larger cost.
    """
    if attention_mask is None or bool(attention_mask[:, -kv_length:].all()):
        return None
    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def resolve_attention(name: str, config: dict) -> str:
    """``model.attn_implementation`` with ``auto`` decided.

    ``auto`` is the packed SDPA above, except for models with sliding-window attention (its mask is not plain
    causal), which keep transformers' ``sdpa`` (Mistral, Gemma 3), and models that soft-cap attention logits
    (Gemma 2), which SDPA cannot do: they get ``eager``. flash-attention's kernels are used only when asked for by
    name. Both fallbacks train padding-free too: transformers builds their mask from the restarting positions
    (tests/test_attention.py checks loss and gradients against padded batches).

    Args:
        config: the checkpoint's ``config.json`` as a dict.
    """
    unsupported = _packed_cannot(config)
    if name == PACKED_SDPA and unsupported:
        raise UsageError(f"model.attn_implementation={PACKED_SDPA} cannot run this model: {unsupported}; leave it "
                         "on auto.")
    if name != "auto":
        return name
    if config.get("attn_logit_softcapping"):
        return "eager"
    return "sdpa" if unsupported else PACKED_SDPA


def _packed_cannot(config: dict) -> str | None:
    """Why the packed kernel would compute something else than the model's own attention, or None."""
    if config.get("attn_logit_softcapping"):
        return "its attention logits are soft-capped (Gemma 2)"
    if config.get("sliding_window") or config.get("use_sliding_window"):
        return "it attends through a sliding window"
    return None
