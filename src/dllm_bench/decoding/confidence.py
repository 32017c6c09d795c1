"""Per-position predictions and confidences from logits, as the references compute them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def predict(logits: torch.Tensor, *, mask_id: int, score: str, fp64: bool, temperature: float,
            remasking: str, generator: torch.Generator | None):
    """logits (B, W, V) -> (x0 (B, W) long, conf (B, W)).

    x0 is the argmax (Gumbel-max when temperature > 0) with the mask token excluded: a model can
    predict [MASK] itself, and the reference then never finishes the block.
    conf (``score``) is "prob": the probability of x0 under softmax(logits) — in float64 for LLaDA
    (``fp64``), in the logits' dtype for Dream; "margin": top-1 minus top-2 probability; or
    "neg_entropy": Dream's negative entropy; uniform noise for ``remasking="random"``.
    """
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
    pick = pick.clone()
    pick[..., mask_id] = -torch.inf
    x0 = pick.argmax(-1)
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
