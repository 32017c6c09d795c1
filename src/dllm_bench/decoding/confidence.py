"""Per-position predictions and confidences from logits, as the references compute them.

The common case (temperature 0, low-confidence remasking, probability score) needs only the argmax
without the mask token and its softmax probability. Eager, that probability comes from the full
softmax the references run (float64 for LLaDA), so its bits, and every decision taken on them,
are the references'; only the copy of the logits that masking the mask token used to need is
gone. With the fused ops (``models.ops``, GPU speed), LLaDA's float64 probability comes from one
compiled reduction that reads the (B, W, V) logits once and accumulates in float64, instead of a
float64 copy of them and a float64 softmax written out in full: the same value up to the last
bits (~1e-15 relative over a 126k vocabulary), so token agreement is checked (golden cases here
and on the GPU in ``gpu_check``), not assumed. Dream's probability (in the logits' dtype, one
softmax kernel already) stays eager: a float32 sum in another order moves it by ~1e-5.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def argmax_except(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Argmax over the last dim with ``mask_id`` excluded (the first index on ties), without the
    copy that setting the mask column to -inf would need: the larger of the two slices' maxima."""
    V = logits.shape[-1]
    if mask_id == 0 or mask_id == V - 1:
        rest = logits[..., 1:] if mask_id == 0 else logits[..., :-1]
        return rest.argmax(-1) + (1 if mask_id == 0 else 0)
    lo_v, lo_i = logits[..., :mask_id].max(-1)
    hi_v, hi_i = logits[..., mask_id + 1:].max(-1)
    return torch.where(hi_v > lo_v, hi_i + (mask_id + 1), lo_i)


def _max_prob64(logits: torch.Tensor, mask_id: int):
    """(x0, float64 softmax(logits)[x0]) without a float64 copy of the logits, once compiled."""
    vocab = torch.arange(logits.shape[-1], device=logits.device)
    x0 = torch.where(vocab == mask_id, -torch.inf, logits).argmax(-1)
    acc = logits.to(torch.float64)
    top = acc.amax(-1, keepdim=True)
    total = (acc - top).exp().sum(-1)
    return x0, (acc.gather(-1, x0[..., None]) - top).squeeze(-1).exp() / total


@lru_cache(maxsize=None)
def fused_max_prob64():
    """``_max_prob64`` through ``torch.compile`` (one reduction kernel; compiled on first call)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(_max_prob64, dynamic=True)


def predict(logits: torch.Tensor, *, mask_id: int, score: str, fp64: bool, temperature: float,
            remasking: str, generator: torch.Generator | None, fused: bool = False):
    """logits (B, W, V) -> (x0 (B, W) long, conf (B, W)).

    x0 is the argmax (Gumbel-max when temperature > 0) with the mask token excluded: a model can
    predict [MASK] itself, and the reference then never finishes the block.
    conf (``score``) is "prob": the probability of x0 under softmax(logits) — in float64 for LLaDA
    (``fp64``), in the logits' dtype for Dream; "margin": top-1 minus top-2 probability; or
    "neg_entropy": Dream's negative entropy; uniform noise for ``remasking="random"``. ``fused``:
    LLaDA's probability from the compiled one-pass reduction (see the module doc).
    """
    if temperature == 0 and remasking == "low_confidence" and score == "prob":
        if fused and fp64:
            return fused_max_prob64()(logits, mask_id)
        x0 = argmax_except(logits, mask_id)
        probs = F.softmax(logits.to(torch.float64) if fp64 else logits, dim=-1)
        return x0, probs.gather(-1, x0[..., None]).squeeze(-1)
    if fp64:  # LLaDA: Gumbel noise on untempered float64 logits, confidence from plain softmax
        probs = F.softmax(logits.to(torch.float64), dim=-1)
        pick = logits
        if temperature > 0:
            noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
            pick = logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
    else:  # Dream: tempered softmax, sampled when temperature > 0
        scaled = logits / temperature if temperature > 0 else logits
        probs = F.softmax(scaled, dim=-1)
        pick = scaled
        if temperature > 0:
            noise = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
            pick = scaled.to(torch.float64) - torch.log(-torch.log(noise))
    x0 = argmax_except(pick, mask_id)
    if remasking == "random":
        conf = torch.rand(x0.shape, dtype=torch.float64, device=x0.device, generator=generator)
    elif score == "margin":
        top2 = probs.topk(2, dim=-1).values
        conf = top2[..., 0] - top2[..., 1]
    elif score == "neg_entropy":
        conf = (probs * torch.log(probs + 1e-10)).sum(-1)
    else:
        conf = probs.gather(-1, x0[..., None]).squeeze(-1)
    return x0, conf
