"""Decoding rules: which masked candidates of the current block a step unmasks.

A rule sees, for one step, the candidates' confidences ``conf`` (B, W) (``-inf`` where a position
is not a candidate) and returns the boolean transfer mask (B, W), a subset of the candidates.
Rules are vectorised over the batch and keep per-row state, so every row decides exactly as it
would alone (batch invariance). Step 0 is the block's refresh forward.

    EvenSteps      LLaDA "fixed": M // spb tokens per step, one more in the first M % spb steps
    LinearEntropy  Dream "fixed": int(M * (1 - t[i+1]/t[i])) on t = linspace(1, eps, spb + 1)
    Threshold      top-1 always, plus every candidate with confidence >= threshold
    Factor         Fast-dLLM's factor rule (bars 1 - f/(n+2) on the sorted confidences)
    QuotaThreshold Dream's non-blocked threshold schedule (per-step quota plus carried rejects)

See ../shared/ALGORITHMS.md (from the project root) for the reference behaviour these reproduce.
"""
from __future__ import annotations

import torch


def _top_k(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mark the k[b] most confident candidates of each row (k may differ per row; no host sync)."""
    k = torch.minimum(k, torch.isfinite(conf).sum(-1))
    _, idx = torch.sort(conf, dim=-1, descending=True, stable=True)
    keep = torch.arange(conf.shape[-1], device=conf.device)[None, :] < k[:, None]
    return torch.zeros_like(conf, dtype=torch.bool).scatter_(1, idx, keep)


def _first_plus(conf: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """``accept`` plus each row's single most confident candidate (if it has any)."""
    has = torch.isfinite(conf).any(-1, keepdim=True)
    best = torch.zeros_like(accept).scatter_(1, conf.argmax(-1, keepdim=True), has)
    return accept | best


class Rule:
    """Protocol: ``begin_block`` once per block, ``select`` per step, ``exhausted`` ends a block early.

    score: "prob" (probability of the argmax token) or "neg_entropy" (Dream's entropy confidence).
    """

    score = "prob"

    def begin_block(self, n_masked: torch.Tensor) -> None:
        """n_masked: (B,) masked positions in the block at its start."""

    def select(self, conf: torch.Tensor, step: int) -> torch.Tensor:
        raise NotImplementedError

    def exhausted(self, step: int) -> bool:
        """True when the rule's step budget for this block is spent (the loop stops the block)."""
        return False


class EvenSteps(Rule):
    def __init__(self, steps_per_block: int):
        self.spb = steps_per_block

    def begin_block(self, n_masked):
        base, rem = n_masked // self.spb, n_masked % self.spb
        i = torch.arange(self.spb, device=n_masked.device)
        self.counts = base[:, None] + (i[None, :] < rem[:, None]).long()  # (B, spb)

    def select(self, conf, step):
        return _top_k(conf, self.counts[:, min(step, self.spb - 1)])


class LinearEntropy(Rule):
    score = "neg_entropy"

    def __init__(self, steps: int, eps: float = 1e-3):
        self.steps = steps
        self.t = torch.linspace(1, eps, steps + 1)  # float32 on CPU, as the reference computes it

    def select(self, conf, step):
        n = torch.isfinite(conf).sum(-1)
        if step < self.steps - 1:  # float32 arithmetic exactly as the reference (IEEE on any device)
            ratio = (1 - self.t[step + 1] / self.t[step]).to(conf.device)
            k = (n.float() * ratio).to(torch.long)
        else:
            k = n
        return _top_k(conf, k)

    def exhausted(self, step):
        return step >= self.steps


class Threshold(Rule):
    def __init__(self, threshold: float):
        self.threshold = threshold

    def select(self, conf, step):
        return _first_plus(conf, torch.isfinite(conf) & (conf >= self.threshold))


class Factor(Rule):
    def __init__(self, factor: float):
        self.factor = factor

    def select(self, conf, step):
        B, W = conf.shape
        n = torch.isfinite(conf).sum(-1)  # (B,)
        ranked, _ = torch.sort(conf, dim=-1, descending=True)
        idx = torch.arange(W, device=conf.device)
        bars = 1 - self.factor / (idx.to(torch.float64) + 2)
        bars[0] = -1.0
        fails = (idx[None, :] < n[:, None]) & (ranked < bars.to(conf.dtype)[None, :])
        k = torch.where(fails.any(-1), fails.to(torch.long).argmax(-1), n)
        k = torch.where(k == n - 1, n, k)  # reference quirk: a failure at the last index takes all
        return _top_k(conf, k)


class QuotaThreshold(Rule):
    """Dream without blocks: each step ranks all masked positions, takes the top ``quota + carry``,
    keeps the first and those >= threshold; rejects carry over. Rejects on the last step add one
    more step with quota 0, until nothing is rejected."""

    def __init__(self, threshold: float, steps: int, gen_length: int):
        self.threshold, self.steps, self.quota0 = threshold, steps, gen_length // steps

    def begin_block(self, n_masked):
        B = n_masked.shape[0]
        self.quota = torch.full((B,), self.quota0, dtype=torch.long, device=n_masked.device)
        self.carry = torch.zeros_like(self.quota)
        self.limit = torch.full_like(self.quota, self.steps)

    def select(self, conf, step):
        top = _top_k(conf, self.quota + self.carry)
        keep = _first_plus(conf, top & (conf >= self.threshold))
        rejected = (top & ~keep).sum(-1)
        last = (step == self.limit - 1) & (rejected > 0)
        self.quota = torch.where(last, torch.zeros_like(self.quota), self.quota)
        self.limit = self.limit + last.long()
        self.carry = rejected
        return keep

    def exhausted(self, step):
        return bool((step >= self.limit).all())
