"""Fast-dLLM's factor rule: sort the candidates' confidences descending; index n (0-based) must
reach ``1 - factor / (n + 2)`` (index 0 always passes); take the top k up to the first failure.
Reference quirks kept: no failure takes all, a failure at the last index takes all too."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import RULES, check_number
from .base import Rule, top_k


@RULES.register("factor")
@dataclass(kw_only=True)
class Factor(Rule):
    example_args = {"factor": 1.0}
    bad_args = ({"factor": 0}, {"factor": -1.0}, {"factor": float("inf")})

    factor: float

    def check(self):
        super().check()
        check_number("factor", self.factor, lo=0, lo_open=True)

    def select(self, pred, cand, state):
        conf = pred.conf
        B, W = conf.shape
        n = torch.isfinite(conf).sum(-1)  # (B,)
        ranked, _ = torch.sort(conf, dim=-1, descending=True)
        idx = torch.arange(W, device=conf.device)
        bars = 1 - self.factor / (idx.to(torch.float64) + 2)
        bars[0] = -1.0
        fails = (idx[None, :] < n[:, None]) & (ranked < bars.to(conf.dtype)[None, :])
        k = torch.where(fails.any(-1), fails.to(torch.long).argmax(-1), n)
        k = torch.where(k == n - 1, n, k)  # reference quirk: a failure at the last index takes all
        return top_k(conf, k)
