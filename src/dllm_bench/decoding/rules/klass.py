"""KLASS, KL-Adaptive Stability Sampling (Kim et al., NeurIPS 2025, arXiv 2511.05664; shkim0116/KLASS, MIT).

A masked position of the current block is committed early when the model is confident about it
(top probability above ``conf_threshold``) AND its predictive distribution stopped moving: the KL
divergence between its float64 distributions at consecutive forwards stayed below
``kl_threshold`` for the last ``kl_history_length`` forwards. ``unmask_strategy`` commits every
such position ("all"), the most confident one ("max_conf") or the one with the smallest current
KL ("min_kl"). A step where no position qualifies falls back to the family's ordinary rule.

The two reference codes differ, and each model family keeps its own (``VARIANTS``):
- LLaDA: confidence ``>`` threshold; a position is stable only from the block's step H-1 on; the
  fallback commits the block's even quota (fixed at the block start, capped at the masks left) by
  confidence; the block ends after ``steps / n_blocks`` steps or when no mask is left.
- Dream: confidence ``>=`` threshold; no warm-up; the fallback commits ONE token, at the position
  whose probability after optional top-p filtering (in the logits' dtype) is highest.

Histories live over the whole call (never reset between blocks), over the generation positions
only, per row. A position's history advances only on forwards that predicted it for a row that
still had masks in its block: a row that is done waits, as it would at batch size 1; under a cache
that does not feed a position (the dual cache's later blocks), its KL is measured at the next
forward that does, against the last one that did.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import RULES, check_choice, check_number, golden_adapter
from ..state import Prediction
from .base import Rule, even_quota, top_k

STRATEGIES = ("all", "max_conf", "min_kl")
STATS = ("steps_rule", "steps_fallback", "steps_rule_select_one", "tokens_by_rule", "tokens_by_fallback",
         "positions_stable_not_conf", "positions_conf_not_stable")  # per-step counters, summed over rows
EPS = 1e-12


@dataclass(frozen=True)
class Variant:
    """One reference code's conventions. strict: confidence > threshold (else >=); warmup: stable
    only from the block's step H-1 on; quota_fallback: the block's even quota by float64 confidence
    (else one token by the logits-dtype, top-p-filtered confidence); fp64_argmax: x0 is the argmax
    of the float64 softmax (else of the logits-dtype softmax)."""

    strict: bool
    warmup: bool
    quota_fallback: bool
    fp64_argmax: bool


VARIANTS = {"llada": Variant(strict=True, warmup=True, quota_fallback=True, fp64_argmax=True),
            "dream": Variant(strict=False, warmup=False, quota_fallback=False, fp64_argmax=False)}


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Tokens outside the nucleus (the shortest descending prefix whose probability exceeds top_p,
    the top token always kept) set to the dtype's minimum."""
    srt, idx = torch.sort(logits, dim=-1, descending=True)
    drop = F.softmax(srt, dim=-1).cumsum(-1) > top_p
    drop = torch.cat([torch.zeros_like(drop[..., :1]), drop[..., :-1]], -1)
    return logits.masked_fill(torch.zeros_like(drop).scatter_(-1, idx, drop), torch.finfo(logits.dtype).min)


def _argmax_without(p: torch.Tensor, token: int) -> torch.Tensor:
    """argmax over the last axis ignoring one token (first index on ties); p is restored."""
    col = p[..., token].clone()
    p[..., token] = -torch.inf
    out = p.argmax(-1)
    p[..., token] = col
    return out


@RULES.register("klass")
@dataclass(kw_only=True)
class Klass(Rule):
    example_args = {"conf_threshold": 0.3, "kl_threshold": 0.2}
    bad_args = ({"conf_threshold": 1.5}, {"kl_threshold": -1.0}, {"kl_history_length": 0},
                {"unmask_strategy": "random"}, {"kl_threshold": float("nan")})

    conf_threshold: float = 0.6
    kl_threshold: float = 0.015
    kl_history_length: int = 2
    unmask_strategy: str = "all"
    top_p: float | None = None      # Dream's fallback only

    targets = "generation"          # every position's KL history advances each forward
    uses_steps = True
    supports_graphs = False
    families = tuple(VARIANTS)

    def check(self):
        super().check()
        check_number("conf_threshold", self.conf_threshold, lo=0, hi=1)
        check_number("kl_threshold", self.kl_threshold, lo=0, lo_open=True)
        check_number("kl_history_length", self.kl_history_length, lo=1, integer=True)
        check_choice("unmask_strategy", self.unmask_strategy, STRATEGIES)
        check_number("top_p", self.top_p, lo=0, hi=1, lo_open=True, allow_none=True)
        if self.remasking != "low_confidence":
            raise ValueError(f"decoding 'klass' ranks by its own confidence; remasking={self.remasking!r} "
                             f"is not supported (use low_confidence)")

    def check_pair(self, cache, arch, profile):
        super().check_pair(cache, arch, profile)
        if self.top_p is not None and VARIANTS[arch].quota_fallback:
            raise ValueError(f"top_p={self.top_p!r} filters Dream's one-token fallback; {arch}'s KLASS fallback has none")

    def setup(self, state):
        super().setup(state)
        self.v = VARIANTS[state.config.arch]
        self.spb = state.steps_per_block
        self.lp_prev = None  # (B, G, V) log(previous probabilities + eps), float64
        self.hist = torch.zeros((state.batch, state.gen_length, int(self.kl_history_length)),
                                dtype=torch.float64, device=state.device)  # (B, G, H) KLs, oldest first

    def begin_block(self, state):
        if self.v.quota_fallback:
            masks = (state.x[:, state.start:state.end] == state.mask_id).sum(-1)
            self.quota = even_quota(masks, self.spb)  # (B, spb)

    def predict(self, logits, state):
        """logits (B, G, V) over the generation -> x0, float64 confidence; data: p (float64
        probabilities), fallback (Dream's fallback confidence)."""
        t, gen = self.temperature, state.generator
        l64 = logits.to(torch.float64)
        if t > 0 and self.v.fp64_argmax:  # LLaDA's noise: the "probabilities" are of noisy logits
            noise = torch.rand(l64.shape, dtype=torch.float64, device=l64.device, generator=gen)
            l64 = l64.exp() / (-torch.log(noise)) ** t
        p = F.softmax(l64, dim=-1)
        data = {"p": p}
        if self.v.fp64_argmax:
            x0 = _argmax_without(p, state.mask_id)
        else:
            x0 = _argmax_without(F.softmax(logits, dim=-1), state.mask_id)
            scaled = logits / t if t > 0 else logits
            if self.top_p is not None and self.top_p < 1:
                scaled = top_p_filter(scaled, self.top_p)
            probs = F.softmax(scaled, dim=-1)
            if t > 0:  # the reference ranks by the probability of a sampled token (Gumbel-max here)
                noise = torch.rand(probs.shape, dtype=torch.float64, device=probs.device, generator=gen)
                pick = (probs.to(torch.float64).log() - torch.log(-torch.log(noise))).argmax(-1)
                data["fallback"] = probs.gather(-1, pick[..., None]).squeeze(-1)
            else:
                data["fallback"] = probs.max(-1).values
        return Prediction(x0, p.gather(-1, x0[..., None]).squeeze(-1), data=data)

    def select(self, pred, cand, state):
        p = pred.data["p"]
        mask_id = state.mask_id
        active = (state.x[:, state.start:state.end] == mask_id).any(-1)  # (B,) rows still decoding
        upd = active[:, None].expand_as(cand)
        if state.fresh is not None:
            upd = upd & state.fresh
        lp = torch.log(p + EPS)
        if self.lp_prev is None:
            self.lp_prev = torch.log(torch.zeros_like(p) + EPS)
        kl = (lp - self.lp_prev).mul_(p).sum(-1)  # (B, G): sum p * (log(p+eps) - log(p_prev+eps))
        if bool(upd.all()):
            self.lp_prev = lp
        else:
            self.lp_prev[upd] = lp[upd]
        shifted = torch.cat([self.hist[..., 1:], kl[..., None]], -1)
        self.hist = torch.where(upd[..., None], shifted, self.hist)

        conf = pred.conf  # -inf outside cand
        stable = (self.hist < self.kl_threshold).all(-1)
        if self.v.warmup and state.step < self.kl_history_length - 1:
            stable = torch.zeros_like(stable)
        conf_ok = (conf > self.conf_threshold) if self.v.strict else (conf >= self.conf_threshold)
        conf_ok = conf_ok & cand
        ready = stable & conf_ok
        has = ready.any(-1)  # (B,) the rule decides this row's step

        if self.unmask_strategy == "all":
            by_rule = ready
        else:
            best = torch.where(ready, conf, -torch.inf).argmax(-1) if self.unmask_strategy == "max_conf" \
                else torch.where(ready, kl, torch.inf).argmin(-1)  # first position on ties
            by_rule = torch.zeros_like(ready).scatter_(1, best[:, None], has[:, None])
        if self.v.quota_fallback:
            fallback = top_k(conf, self.quota[:, min(state.step, self.spb - 1)])
        else:
            fb = torch.where(cand, pred.data["fallback"], -torch.inf)
            fallback = torch.zeros_like(cand).scatter_(1, fb.argmax(-1, keepdim=True), cand.any(-1, keepdim=True))
        unmask = torch.where(has[:, None], by_rule, fallback) & cand

        n_ready = ready.sum(-1)
        counts = torch.stack([
            (has & active).sum(), (~has & active).sum(),
            (has & (n_ready > 1)).sum() if self.unmask_strategy != "all" else torch.zeros_like(n_ready[0]),
            (unmask & has[:, None]).sum(), (unmask & ~has[:, None]).sum(),
            (cand & stable & ~conf_ok).sum(), (conf_ok & ~stable).sum()]).tolist()
        for key, n in zip(STATS, counts):
            state.count(key, n)
        return unmask

    def exhausted(self, state):
        return state.step >= self.spb


@golden_adapter("klass")
def klass_case(case: dict) -> dict:
    """A case of ``methods/klass.json``: LLaDA's ``stable_confident_decode`` arguments, or Dream's
    ``diffusion_generate`` keywords (its whole-sequence schedule: no block length, no cache)."""
    q = case["params"]
    if q.get("alg", "klass") != "klass":
        raise ValueError(f"alg {q['alg']!r}: only alg='klass' is the KLASS rule")
    kw = dict(decoding="klass", cache="none", steps=q["steps"], temperature=q["temperature"],
              conf_threshold=q["conf_threshold"], kl_threshold=q["kl_threshold"],
              kl_history_length=q["kl_history_length"], unmask_strategy=q["unmask_strategy"])
    if case.get("model_family") == "dream":
        kw.update(gen_length=q["max_new_tokens"], block_length=None, top_p=q.get("top_p"))
    else:
        kw.update(gen_length=q["gen_length"], block_length=q["block_length"])
    kw["expect_stats"] = {k: case["extra"][k] for k in STATS if k in case.get("extra", {})}
    return kw
