"""The decoding-rule protocol: which masked positions a step unmasks (and which it re-masks).

A rule reads one forward's logits at its target positions (the current block, or the whole
generation for rules that keep per-position histories) with ``predict`` — a pure function of the
logits, so it can run inside a captured CUDA graph — and decides with ``select``, which may keep
per-row state across steps and blocks (every row decides as it would alone: batch invariance).
It may ask for extra query tokens (``extra_queries``) and ends a block early via ``exhausted``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..confidence import predict
from ..registry import Plugin, check_choice, check_number
from ..state import Decision, DecodeState, Extra, Prediction

REMASKINGS = ("low_confidence", "random")


@dataclass(kw_only=True)
class Rule(Plugin):
    """Protocol. Arguments every rule takes: ``temperature`` (> 0 samples with float64 Gumbel
    noise from the call's generator) and ``remasking`` ("low_confidence", or "random" scores).

    Class attributes: targets ("block" | "generation": positions predicted each step);
    uses_steps (the rule spends a step budget, ``steps``); exit_when_done (a block ends when it
    has no mask left; False: the whole budget runs unless the cache exits early); supports_graphs (``predict`` and the
    decision need no host-side state that a replayed graph would miss); families (model
    families the rule is defined for); adds_queries (``extra_queries`` appends query tokens to
    forwards: a cache that feeds sequence positions only refuses the rule).
    """

    temperature: float = 0.0
    remasking: str = "low_confidence"

    targets: ClassVar[str] = "block"
    uses_steps: ClassVar[bool] = False
    exit_when_done: ClassVar[bool] = True
    supports_graphs: ClassVar[bool] = True
    families: ClassVar[tuple[str, ...]] = ("llada", "dream")
    adds_queries: ClassVar[bool] = False
    score: ClassVar[str] = "prob"   # confidence used by the default predict: "prob" | "margin" | "neg_entropy"

    def check(self) -> None:
        check_number("temperature", self.temperature, lo=0)
        check_choice("remasking", self.remasking, REMASKINGS)

    def check_pair(self, cache, arch: str, profile) -> None:
        """Refuse (one-line ValueError) a cache or model family (``arch``, its ``DecodingProfile``)
        this rule cannot run with. Needs no model: a sweep checks every cell with it before its
        first job (``dllm_bench.decoding.pair_unsupported``)."""
        if arch not in self.families:
            raise ValueError(f"decoding {self.name!r} is defined for {', '.join(self.families)} models, not {arch}")

    # ---------------------------------------------------------------- engine-facing protocol
    def setup(self, state: DecodeState) -> None:
        """Once per generate(), before any forward: check the shape, reset state (the pair and the
        model family were checked by ``check_pair``)."""
        if self.uses_steps and state.steps is None:
            raise ValueError(f"steps is required for decoding={self.name!r}")

    def begin_block(self, state: DecodeState) -> None:
        """At each block start; ``state.x[:, state.start:state.end]`` is the block."""

    def extra_queries(self, state: DecodeState) -> Extra | None:
        """Query tokens to append to this step's forward (their logits arrive in the Prediction)."""
        return None

    def predict(self, logits: torch.Tensor, state: DecodeState) -> Prediction:
        """logits (B, W, V) at the targets -> Prediction (x0 never the mask token)."""
        x0, conf = predict(logits, mask_id=state.mask_id, score=self.score, fp64=state.profile.confidence_fp64,
                           temperature=self.temperature, remasking=self.remasking, generator=state.generator,
                           fused=state.fused_ops)
        return Prediction(x0, conf)

    @property
    def predict_key(self):
        """What distinguishes this rule's ``predict`` in a replayed graph."""
        return (type(self), self.score)

    def select(self, pred: Prediction, cand: torch.Tensor, state: DecodeState) -> Decision | torch.Tensor:
        """cand (B, W): masked target positions of the current block (with fresh predictions).
        Returns the positions to unmask (a subset of cand), or a Decision that may also re-mask."""
        raise NotImplementedError

    def exhausted(self, state: DecodeState) -> bool:
        """True when the rule's step budget for this block is spent (the loop ends the block)."""
        return False


# ---------------------------------------------------------------- shared selection helpers
def top_k(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Mark the k[b] most confident candidates of each row (k may differ per row; no host sync)."""
    k = torch.minimum(k, torch.isfinite(conf).sum(-1))
    _, idx = torch.sort(conf, dim=-1, descending=True, stable=True)
    keep = torch.arange(conf.shape[-1], device=conf.device)[None, :] < k[:, None]
    return torch.zeros_like(conf, dtype=torch.bool).scatter_(1, idx, keep)


def first_plus(conf: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
    """``accept`` plus each row's single most confident candidate (if it has any)."""
    has = torch.isfinite(conf).any(-1, keepdim=True)
    best = torch.zeros_like(accept).scatter_(1, conf.argmax(-1, keepdim=True), has)
    return accept | best


def even_quota(n_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens per step: n // steps each, one more for the first n % steps steps."""
    base, rem = n_masked // steps, n_masked % steps
    i = torch.arange(steps, device=n_masked.device)
    return base[:, None] + (i[None, :] < rem[:, None]).long()
