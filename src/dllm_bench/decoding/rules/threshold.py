"""Confidence threshold (Fast-dLLM): unmask every candidate with confidence >= ``threshold``, and
always the most confident one.

On Dream's whole-sequence schedule (no blocks, no cache) the reference adds a per-step quota:
each step ranks all masked positions, takes the top ``gen_length / steps + carry``, keeps the first
and those >= threshold; rejects carry over, and rejects on the last step add one more step with
quota 0, until nothing is rejected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import RULES, check_number
from .base import Rule, first_plus, top_k


@RULES.register("threshold")
@dataclass(kw_only=True)
class Threshold(Rule):
    example_args = {"threshold": 0.7}
    bad_args = ({"threshold": 0.0}, {"threshold": 1.5}, {"threshold": float("nan")})

    threshold: float

    def check(self):
        super().check()
        check_number("threshold", self.threshold, lo=0, hi=1, lo_open=True)

    def setup(self, state):
        super().setup(state)
        self.quota_mode = not state.blocked
        if self.quota_mode:
            if state.steps is None:
                raise ValueError("steps is required for Dream's non-blocked threshold schedule")
            if state.gen_length % state.steps:
                raise ValueError(f"Dream's non-blocked threshold schedule needs gen_length % steps == 0; "
                                 f"got gen_length {state.gen_length}, steps {state.steps}")
            self.steps, self.quota0 = state.steps, state.gen_length // state.steps

    def begin_block(self, state):
        if self.quota_mode:
            B, dev = state.batch, state.device
            self.quota = torch.full((B,), self.quota0, dtype=torch.long, device=dev)
            self.carry = torch.zeros_like(self.quota)
            self.limit = torch.full_like(self.quota, self.steps)

    def select(self, pred, cand, state):
        conf = pred.conf
        if not self.quota_mode:
            return first_plus(conf, torch.isfinite(conf) & (conf >= self.threshold))
        top = top_k(conf, self.quota + self.carry)
        keep = first_plus(conf, top & (conf >= self.threshold))
        rejected = (top & ~keep).sum(-1)
        last = (state.step == self.limit - 1) & (rejected > 0)
        self.quota = torch.where(last, torch.zeros_like(self.quota), self.quota)
        self.limit = self.limit + last.long()
        self.carry = rejected
        return keep

    def exhausted(self, state):
        return self.quota_mode and bool((state.step >= self.limit).all())
