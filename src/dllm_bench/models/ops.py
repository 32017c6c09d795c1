"""The elementwise pieces of a layer, eager (the references' numerics) or fused (GPU speed).

On a GPU a batch-1 dual-cache step of LLaDA-8B is ~1600 kernels, and half of its kernel time is not
the matmuls but the float32 RMSNorm (8 kernels each), the float32 RoPE (7 per tensor) and SwiGLU,
each a handful of tiny launches over a (B, 32, 4096) tensor. ``fused()`` compiles each piece with
``torch.compile`` into one kernel; ``use_fused(model)`` switches a model to them. The math is the
same, but a fused kernel may round differently in the last bit (reduction order, FMA), so the
fused path is an opt-in: token agreement with the eager path is checked (tests on the fixtures,
``gpu_check`` in bfloat16), not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back before the weight (as both references do)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fp32: bool) -> torch.Tensor:
    """Rotate (B, H, T, D) by the tables, in float32 (``fp32``) or in x's dtype; result in x's dtype."""
    xf = x.float() if fp32 else x
    if not fp32:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def rotary_qk(q, k, cos, sin, fp32: bool):
    return rotary(q, cos, sin, fp32), rotary(k, cos, sin, fp32)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@dataclass(frozen=True)
class Ops:
    name: str
    rms_norm: Callable
    rotary_qk: Callable
    swiglu: Callable


EAGER = Ops("eager", rms_norm, rotary_qk, swiglu)


@lru_cache(maxsize=None)
def fused() -> Ops:
    """The same functions through ``torch.compile`` (compiled on first call, shapes dynamic).

    Each distinct dtype, eps, batch of 1 vs more and input layout is one more compiled entry (the
    first GPU run hit dynamo's default limit of 8 with the fixtures plus the 8B shape at batch
    1/8/32), so the limit is raised; inputs are made contiguous so a sliced view (the final norm
    of a ``logits_slice``) does not count as a new layout.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    norm, rope, act = (torch.compile(fn, dynamic=True) for fn in (rms_norm, rotary_qk, swiglu))

    def rms_norm_fused(x, weight, eps):
        return norm(x.contiguous(), weight, eps)

    return Ops("fused", rms_norm_fused, rope, act)


def use_fused(model: torch.nn.Module, on: bool = True) -> torch.nn.Module:
    """Switch every layer of ``model`` to the fused (``on``) or the eager ops; returns the model."""
    ops = fused() if on else EAGER
    for module in model.modules():
        if hasattr(module, "ops"):
            module.ops = ops
    return model


def ops_name(model: torch.nn.Module) -> str:
    return next((m.ops.name for m in model.modules() if hasattr(m, "ops")), EAGER.name)
