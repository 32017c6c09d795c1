"""dKV-Cache-Greedy (Ma et al., 2025; ``generation_utils/llada_dkv_cache_greedy.py``): cache
everything, recompute only what the next step needs.

Every ``cache_reloading_step`` steps (always a block's first) a full forward refreshes the K/V
of every position, masked ones too. Other steps feed only: the positions the rule will unmask at
this step, the positions unmasked at the previous step, and for each scheduled position (in
decoding order) up to ``window_size`` neighbours that were masked before the previous step,
looked for alternately one further left and one further right (left first), anywhere in the
sequence. The engine writes the fed positions' fresh K/V in place; every other position attends
with the K/V it had when last computed, stale for masked ones. NFE = one call per step.

The fed set depends on what the next step will decode, so the rule must expose its schedule
(``schedule(state, step)``: ``random_order``, the reference's only working mode). Models with
shifted logits (Dream) are refused: a position's prediction there comes from its left neighbour,
which this set does not feed. Counters as ``dkv_decode`` (``forward_kinds``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import CACHES, check_number
from ..state import Plan
from .base import Cache
from .dkv_decode import count_forward, index_plan


def add_windows(fed: torch.Tensor, sched: torch.Tensor, valid: torch.Tensor, was_masked: torch.Tensor,
                size: int) -> None:
    """Add to ``fed`` (B, L), in place, each scheduled position's ``size`` nearest positions that
    were masked and are not yet fed, ordered by distance with the left one first at a tie; the
    scheduled positions (B, W) are taken in order, each seeing what the earlier ones took."""
    for b in range(fed.shape[0]):
        for p in sched[b][valid[b]].tolist():
            free = (was_masked[b] & ~fed[b]).nonzero().squeeze(1)
            if free.numel() == 0:
                break
            key = (free - p).abs() * 2 + (free > p).long()  # distance, then left before right
            take = free[torch.argsort(key)[:size]]
            fed[b, take] = True


@CACHES.register("dkv_greedy")
@dataclass(kw_only=True)
class DKVGreedy(Cache):
    example_args = {"cache_reloading_step": 2, "window_size": 2}
    bad_args = ({"cache_reloading_step": 0}, {"window_size": -1})

    """cache_reloading_step: full refresh every this many steps of a block (the README command's
    2); window_size: extra masked neighbours fed per scheduled position (the README's 4)."""

    cache_reloading_step: int = 2
    window_size: int = 4

    uses_kv = True

    def check(self):
        check_number("cache_reloading_step", self.cache_reloading_step, lo=1, integer=True)
        check_number("window_size", self.window_size, lo=0, integer=True)

    def check_pair(self, rule, arch, profile):
        if not callable(getattr(rule, "schedule", None)):
            raise ValueError(f"cache 'dkv_greedy' feeds what the next step will decode, so it needs a rule that "
                             f"exposes its schedule (decoding=random_order); got decoding {getattr(rule, 'name', rule)!r}")
        if profile.shift_logits:
            raise ValueError(f"cache 'dkv_greedy' is defined for models without shifted logits (LLaDA), "
                             f"not {arch}; use cache=dkv_decode")

    def begin_block(self, state):
        self.was_masked = None

    def plan(self, state):
        i, x = state.step, state.x
        masked = x == state.mask_id
        if i % self.cache_reloading_step == 0 or self.was_masked is None:
            plan = Plan(0, state.length, refresh=True)
        else:
            sched, valid = state.rule.schedule(state, i)
            fed = self.was_masked & ~masked  # unmasked at the previous step
            rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(sched)
            fed[rows[valid], sched[valid]] = True
            if self.window_size:
                add_windows(fed, sched, valid, self.was_masked, self.window_size)
            plan = index_plan(fed)
        self.was_masked = masked
        count_forward(state, plan)
        return plan
