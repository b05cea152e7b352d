"""The causal-LM loss: over supervised tokens only, and in training without the full logits in memory.

``causal_lm_loss`` takes logits. ``chunked_linear_cross_entropy`` takes the final hidden states and the LM head
instead: it computes the logits a chunk of positions at a time, and with them the gradient with respect to the
hidden states (and the head, if it trains), so a batch never holds (positions x vocabulary) logits, their
log-softmax and their gradient at once. Memory for the loss drops from three such tensors to one chunk of
~16M floats; the matmuls are the same as the plain path's. The idea is Liger-Kernel's fused linear cross-entropy,
written here in plain PyTorch because it has to run on CPU and Liger's kernels are Triton (CUDA) only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..data.tokenize import IGNORE_INDEX
from ..precision import compute_dtype

__all__ = ["causal_lm_loss", "chunked_linear_cross_entropy", "fusable_causal_lm", "FinalHiddenStates"]

CHUNK_ELEMENTS = 2 ** 24
"""Logits computed at once: positions per chunk x vocabulary (64 MB of fp32)."""


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                   num_items_in_batch: Optional[torch.Tensor | int] = None) -> torch.Tensor:
    """Summed token loss over supervised targets divided by ``num_items_in_batch``.

    ``logits[:, i]`` predicts ``targets[:, i]`` (already shifted). Dividing the sum by the number of supervised
    tokens in the whole accumulated batch, not per micro-batch, makes bs 1 x accumulation 4 equal bs 4.
    With ``label_smoothing`` = e the token loss is (1 - e) * NLL + e * mean over the vocabulary of -log p,
    transformers' ``LabelSmoother`` definition (PyTorch's ``label_smoothing`` computes exactly that).
    """
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing)
    return total / _count(targets, num_items_in_batch, total.device)


def _count(targets, num_items_in_batch, device) -> torch.Tensor:
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return torch.clamp(torch.as_tensor(count, device=device), min=1)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Sum over positions of the (label-smoothed) cross-entropy of ``hidden @ weight.T + bias``.

    The backward pass is done during the forward, chunk by chunk, and only its results are kept.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, label_smoothing: float, chunk: int, dtype: torch.dtype):
        vocab = weight.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        # The matmuls run in `dtype` (bf16 under mixed precision, as the head's own forward would under autocast);
        # the logits are then held, log-sum-exp'd and differentiated in fp32.
        fp32 = dtype == hidden.dtype == weight.dtype == torch.float32
        weight_c = weight.to(dtype)
        bias_c = None if bias is None else bias.to(dtype)
        # One chunk's logits, reused and worked on in place: a fresh 64 MB tensor per step of the loop costs
        # page faults that showed as ~30 % of the head's matmul time on CPU.
        buffer = hidden.new_empty(min(chunk, hidden.shape[0]), vocab, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = buffer[:h.shape[0]]
            if not fp32:
                h = h.to(dtype)
                logits.copy_(F.linear(h, weight_c, bias_c))
            elif bias is None:
                torch.mm(h, weight.t(), out=logits)
            else:
                torch.addmm(bias, h, weight.t(), out=logits)
            target_logits = logits.gather(-1, t[:, None]).squeeze(-1)
            mean = logits.mean(-1) if label_smoothing else None
            # log-sum-exp and softmax in place (torch.logsumexp would allocate another chunk-sized tensor).
            peak = logits.amax(-1, keepdim=True)
            grad = logits.sub_(peak).exp_()
            sums = grad.sum(-1, keepdim=True)
            lse = (peak + sums.log()).squeeze(-1)
            grad.div_(sums)
            nll = lse - target_logits
            token_loss = (1 - label_smoothing) * nll + label_smoothing * (lse - mean) if label_smoothing else nll
            total += token_loss.sum()
            # d loss / d logits = softmax - (1 - e) * one_hot(target) - e / V, built in place over the logits.
            grad.scatter_add_(-1, t[:, None], grad.new_full((t.shape[0], 1), label_smoothing - 1))
            if label_smoothing:
                grad.sub_(label_smoothing / vocab)
            grad_c = grad if fp32 else grad.to(dtype)
            if grad_hidden is not None:
                if fp32:
                    torch.mm(grad, weight, out=grad_hidden[start:start + chunk])
                else:
                    grad_hidden[start:start + chunk] = grad_c @ weight_c
            if grad_weight is not None:  # accumulated over chunks in fp32
                if fp32:
                    grad_weight.addmm_(grad.t(), h)
                else:
                    grad_weight += grad_c.t() @ h
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (hidden_dtype, weight_dtype), grads = ctx.dtypes, ctx.saved_tensors
        out = [None if g is None else (g * grad_output).to(dtype)
               for g, dtype in zip(grads, (hidden_dtype, weight_dtype, weight_dtype))]
        return (*out, None, None, None, None)


def chunked_linear_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                                 label_smoothing: float = 0.0,
                                 num_items_in_batch: Optional[torch.Tensor | int] = None,
                                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``causal_lm_loss(head(hidden), targets, ...)`` without materialising the logits of every position.

    Args:
        hidden: final hidden states, (..., hidden size); ``hidden[..., i, :]`` predicts ``targets[..., i]``.
        head: the LM head (a plain ``nn.Linear``).
        targets: token ids, ``-100`` where there is no label.
        dtype: the dtype of the head's matmuls (bf16 under mixed precision); by default autocast's where it is
            on, else the head's. The loss itself is always fp32.
    """
    supervised = targets != IGNORE_INDEX
    hidden, flat_targets = hidden[supervised], targets[supervised]
    chunk = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    dtype = dtype or compute_dtype(hidden.device.type, head.weight.dtype)
    total = _ChunkedLinearCrossEntropy.apply(hidden, head.weight, head.bias, flat_targets, float(label_smoothing),
                                             chunk, dtype)
    return total / _count(targets, num_items_in_batch, total.device)


def fusable_causal_lm(model) -> nn.Module | None:
    """The causal LM inside ``model`` (PEFT, P-Tuning and DDP wrappers included) when its LM head is a plain
    ``nn.Linear`` — not adapted by LoRA, not quantised — so the head's weight can be used directly."""
    for module in model.modules():
        if hasattr(module, "get_output_embeddings") and hasattr(module, "set_output_embeddings"):
            return module if type(module.get_output_embeddings()) is nn.Linear else None
    return None


class FinalHiddenStates:
    """The decoder's ``last_hidden_state`` of the forward run inside this block, read by a forward hook.

    The model is not changed: its head still runs, on the positions ``logits_to_keep`` names (none, for the
    chunked loss). Read from the hook rather than with ``output_hidden_states=True``, which would also return
    every layer's states, and under mixed precision accelerate would copy each of them to fp32.
    """

    def __init__(self, causal_lm: nn.Module):
        self.decoder, self.value = causal_lm.get_decoder(), None

    def __enter__(self) -> "FinalHiddenStates":
        self._handle = self.decoder.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def _keep(self, module, args, output) -> None:
        self.value = output.last_hidden_state
