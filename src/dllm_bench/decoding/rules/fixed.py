"""Fixed steps: ``steps`` in total, split evenly over the blocks.

LLaDA: step i of a block unmasks ``M // spb`` tokens plus one for the first ``M % spb`` steps, the
most confident ones (low-confidence remasking). Dream: negative-entropy confidence on its linear
timestep schedule, ``int(M * (1 - t[i+1]/t[i]))`` on ``t = linspace(1, eps, spb + 1)``, the last
step taking all that remain. Which one is the model family's (``profile.fixed_schedule``).

``alg`` picks the confidence by Dream's names, on either family: "maskgit_plus" (probability of
the argmax token), "topk_margin" (top-1 minus top-2 probability), "entropy" (negative entropy);
None keeps the family's own (LLaDA: probability; Dream: entropy). Dream's reference computes its
quota from the number of masks averaged over the batch; ours is per row (each row as if alone),
which is the same whenever the rows have equally many masks (the same gen_length, as in Dream's
own batched runs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import RULES, check_choice
from .base import Rule, even_quota, top_k

ALGS = {"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy"}


@RULES.register("fixed")
@dataclass(kw_only=True)
class Fixed(Rule):
    example_args = {}
    bad_args = ({"temperature": -1.0}, {"remasking": "lowest"}, {"temperature": float("nan")})

    alg: str | None = None

    uses_steps = True
    exit_when_done = False  # the reference loops call the model `steps` times

    def check(self):
        super().check()
        if self.alg is not None:
            check_choice("alg", self.alg, tuple(ALGS))
            if self.remasking == "random":
                raise ValueError(f"alg={self.alg!r} sets the confidence, remasking='random' replaces it; give one")

    def setup(self, state):
        super().setup(state)
        self.linear = state.profile.fixed_schedule == "linear_entropy"
        self.spb = state.steps_per_block
        if self.linear:  # float32 on CPU, as the reference computes it
            self.t = torch.linspace(1, 1e-3, self.spb + 1)

    @property
    def score(self):
        if self.alg is not None:
            return ALGS[self.alg]
        return "neg_entropy" if getattr(self, "linear", False) else "prob"

    def begin_block(self, state):
        if not self.linear:
            block = state.x[:, state.start:state.end]
            self.counts = even_quota((block == state.mask_id).sum(-1), self.spb)  # (B, spb)

    def select(self, pred, cand, state):
        step = state.step
        if not self.linear:
            return top_k(pred.conf, self.counts[:, min(step, self.spb - 1)])
        n = torch.isfinite(pred.conf).sum(-1)
        if step < self.spb - 1:  # float32 arithmetic exactly as the reference (IEEE on any device)
            ratio = (1 - self.t[step + 1] / self.t[step]).to(pred.conf.device)
            k = (n.float() * ratio).to(torch.long)
        else:
            k = n
        return top_k(pred.conf, k)

    def exhausted(self, state):
        return state.step >= self.spb
