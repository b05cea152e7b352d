"""peft's LoRA linear layer with its forward and backward as one autograd node.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as five autograd nodes. Each elementwise step
(the scaling, the sum) writes a fresh (tokens x out_features) tensor in the forward and another in the backward,
and autograd takes ``lora_B``'s gradient as ``grad.T @ h`` — a (out x tokens) @ (tokens x r) product that MKL runs
~5x slower on CPU than the same product as ``(h.T @ grad).T``. Here the update is added into the base output in
place (one ``addmm_``), the input gradient of the adapter is added into the base's the same way, and each skinny
product is taken in its fast orientation. The arithmetic is peft's: losses and gradients agree to float rounding
(tests/test_fused_lora.py). Unsloth's ``fast_lora`` does the same on GPU with Triton; this is plain PyTorch so it
also runs on CPU.

The layer is peft's ``lora.Linear`` with only ``forward`` changed, so adapters save, load, merge and unload
exactly as peft's (the saved files do not know about it). Anything off the plain path — several active
adapters, DoRA and other variants, a LoRA bias, a trainable base, mixed-adapter batches — goes to peft's own
forward.

Dropout: the keep mask is drawn four elements per random 64-bit word (each element compares a 16-bit field with
``round(p * 65536)``) instead of one Bernoulli draw per element, which on CPU took 22 % of the demo's bf16 step
(``bench/README.md``, the profile). The keep probability is ``p`` rounded to 1/65536 and the kept values are scaled
by the inverse of that exact probability, so the expectation is unchanged; the masks come from torch's generator
(seeded by ``set_seed``, saved in checkpoints) but are not bit-equal to ``nn.Dropout``'s (tests/test_fused_lora.py
checks keep rate and independence). ``method.fused=false`` gives peft's layer and ``nn.Dropout``'s masks.

Mixed precision: under autocast (``training.bf16``, the default over a bf16 base) every matmul runs in autocast's
dtype, the fp32 adapters included, and their gradients return in fp32 — what peft's layer does under autocast
(tests/test_precision.py bounds the difference to fp32). Without autocast the layer runs when base, adapters and
input share one dtype; a bf16 base with fp32 adapters outside autocast (generation after training) takes peft's
forward, which runs the adapter in fp32, so a reloaded plain-peft model generates exactly the same tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora import layer as lora_layer
from torch import nn

from ..precision import compute_dtype

__all__ = ["FusedLoraLinear", "fuse_lora_layers", "keep_mask"]

_FIELD = 1 << 16  # the resolution of the keep probability: one 16-bit field per element, four per random word


def keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    """A dropout keep mask shaped like ``x`` (``True`` = kept) and the scale of the kept values (module doc).

    One ``random_`` over ``numel / 4`` full-range int64 words, viewed as int16 fields: a quarter of the generator
    calls of ``bernoulli_``, and no per-element float compare against a probability. Under ``torch.compile`` the
    mask is a compare of ``rand_like``, which inductor generates inside the kernel that applies it (and dynamo
    cannot trace the in-place ``random_``).
    """
    if torch.compiler.is_compiling():  # inductor draws uniform numbers inside the fused kernel: cheap there
        return torch.rand_like(x, dtype=torch.float32) >= p, (1 / (1 - p) if p < 1 else 0.0)
    dropped = min(round(p * _FIELD), _FIELD)
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-2 ** 63, None)
    fields = words.view(torch.int16)[:x.numel()].view(x.shape)
    keep = fields >= dropped - _FIELD // 2  # P(field >= t - 32768) = (65536 - t) / 65536
    return keep, (_FIELD / (_FIELD - dropped) if dropped < _FIELD else 0.0)


class _LoraLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias) + scaling * dropout(x) @ lora_a.T @ lora_b.T`` for a frozen base, every matmul
    in ``dtype``; gradients come back in each input's own dtype (fp32 for the adapters)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropout: float, dtype: torch.dtype):
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        mask, scale = keep_mask(x2, dropout) if dropout else (None, 1.0)
        dropped = x2 if mask is None else x2.mul(mask).mul_(scale)
        h = dropped @ a.t()
        out = F.linear(x2, weight.to(dtype), None if bias is None else bias.to(dtype)).addmm_(h, b.t(), alpha=scaling)
        # The frozen weight is saved as it is stored (a bf16 copy of an fp32 one would cost memory per layer).
        ctx.save_for_backward(dropped, h, mask, weight, a, b)
        ctx.scaling, ctx.keep_scale, ctx.shape, ctx.dtype = scaling, scale, x.shape, dtype
        ctx.dtypes = (x.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        dropped, h, mask, weight, lora_a, lora_b = ctx.saved_tensors
        x_dtype, a_dtype, b_dtype = ctx.dtypes
        g = grad.reshape(-1, grad.shape[-1]).to(ctx.dtype)
        grad_h = (g @ lora_b).mul_(ctx.scaling)
        grad_a = (grad_h.t() @ dropped).to(a_dtype) if ctx.needs_input_grad[3] else None
        grad_b = (h.t() @ g).t().mul_(ctx.scaling).to(b_dtype) if ctx.needs_input_grad[4] else None  # module doc
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = g @ weight.to(ctx.dtype)
            if mask is None:
                grad_x.addmm_(grad_h, lora_a)
            else:
                grad_x.add_((grad_h @ lora_a).mul_(mask), alpha=ctx.keep_scale)
            grad_x = grad_x.view(ctx.shape).to(x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None


class FusedLoraLinear(lora_layer.Linear):
    """peft's ``lora.Linear``; its plain single-adapter path runs as one autograd node (see the module doc)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = None if args or kwargs else self._plain_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base, dropout = self.get_base_layer(), self.lora_dropout[adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        dtype = compute_dtype(x.device.type, base.weight.dtype)
        return _LoraLinear.apply(x, base.weight, base.bias, self.lora_A[adapter].weight,
                                 self.lora_B[adapter].weight, self.scaling[adapter], p, dtype)

    def _plain_adapter(self, x: torch.Tensor) -> str | None:
        """The one active adapter when this call is plain LoRA over a frozen ``nn.Linear``; else ``None``."""
        if self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:  # DoRA and the other variants
            return None
        adapter, base = active[0], self.get_base_layer()
        if (type(base) is not nn.Linear or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)
                or self.lora_B[adapter].bias is not None
                or not isinstance(self.lora_dropout[adapter], (nn.Dropout, nn.Identity))):
            return None
        if torch.is_autocast_enabled(x.device.type):
            return adapter
        # Without autocast, peft runs fp32 adapters over a bf16 base in fp32: its forward keeps exactly that.
        weights = (base.weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        return adapter if all(w.dtype == x.dtype for w in weights) else None


def fuse_lora_layers(model: nn.Module) -> int:
    """Turn every peft ``lora.Linear`` in ``model`` into a :class:`FusedLoraLinear` (same state, same names);
    returns how many. Quantised (bitsandbytes) LoRA layers are other peft classes and are left as they are."""
    count = 0
    for module in model.modules():
        if type(module) is lora_layer.Linear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
