"""Fixed steps: ``steps`` in total, split evenly over the blocks.

LLaDA: step i of a block unmasks ``M // spb`` tokens plus one for the first ``M % spb`` steps, the
most confident ones (low-confidence remasking). Dream: negative-entropy confidence on its linear
timestep schedule, ``int(M * (1 - t[i+1]/t[i]))`` on ``t = linspace(1, eps, spb + 1)``, the last
step taking all that remain. Which one is the model family's (``profile.fixed_schedule``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import RULES
from .base import Rule, even_quota, top_k


@RULES.register("fixed")
@dataclass(kw_only=True)
class Fixed(Rule):
    example_args = {}
    bad_args = ({"temperature": -1.0}, {"remasking": "lowest"}, {"temperature": float("nan")})

    uses_steps = True
    exit_when_done = False  # the reference loops call the model `steps` times

    def setup(self, state):
        super().setup(state)
        self.entropy = state.profile.fixed_schedule == "linear_entropy"
        self.spb = state.steps_per_block
        if self.entropy:  # float32 on CPU, as the reference computes it
            self.t = torch.linspace(1, 1e-3, self.spb + 1)

    @property
    def score(self):
        return "neg_entropy" if getattr(self, "entropy", False) else "prob"

    def begin_block(self, state):
        if not self.entropy:
            block = state.x[:, state.start:state.end]
            self.counts = even_quota((block == state.mask_id).sum(-1), self.spb)  # (B, spb)

    def select(self, pred, cand, state):
        step = state.step
        if not self.entropy:
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
