"""dKV-Cache-Decode (Ma et al., 2025): delayed caching of decoded tokens' K/V.

A position's K/V is reused once its token has been decoded, one step late: a token decoded at
step j is recomputed at step j+1 (now fed with its real id) and read from the cache from step j+2
on; masked positions are recomputed every step; every ``cache_reloading_step`` steps a full
forward refreshes everything. Each forward therefore feeds the positions that were not "cached"
two states ago (an index plan; the engine writes their fresh K/V in place and attention covers
all positions, which is the reference's [fresh ; cached] attention). NFE = one call per step.

Which positions count as cached is the model family's:
- LLaDA (``generation_utils/llada_dkv_cache_decode.py``): a position once its token is decoded.
  Per block the sets start empty, so steps 0 and 1 of each block are full forwards.
- Dream (``DreamModel.diffusion_generate``, shifted logits): ``shift_type`` "un" caches position j
  once token j+1 is decoded (the state that predicts it is done; the last position follows
  position 0), "un_right" once tokens j and j+1 both are. The set before the first step is known
  (only the refresh steps are forced full); Dream's whole-sequence schedule when no block_length.

Counters (``GenerationResult.stats``): ``forward_kinds`` ("F" full / "C" cached per forward),
``tokens_computed_per_row`` (sum of the fed width, padding included: the reference's counter);
the engine adds ``layer_tokens_computed`` / ``layer_tokens_total`` for every plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..registry import CACHES, check_choice, check_number, golden_adapter
from ..state import DecodeState, Plan
from .base import Cache

SHIFT_TYPES = ("un", "un_right")


def index_plan(fed: torch.Tensor) -> Plan:
    """A per-row index plan from a (B, L) bool of fed positions: each row's fed positions
    ascending, then distinct unfed ones with valid=False up to the widest row (at least one)."""
    counts = fed.sum(-1)
    width = max(int(counts.max()), 1)
    index = torch.sort(fed.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
    valid = torch.arange(width, device=fed.device)[None, :] < counts[:, None]
    return Plan(index=index, valid=valid)


def count_forward(state: DecodeState, plan: Plan) -> None:
    """Record one forward of ``plan`` in the reference's counters: its kind (F full / C cached) and
    its fed width (padding included, as the reference counts). The engine counts the
    hardware-independent ``layer_tokens_*`` for every plan."""
    window = plan.window(state.length)
    extras = state.extras
    extras["forward_kinds"] = extras.get("forward_kinds", "") + ("F" if window else "C")
    width = window[1] - window[0] if window else plan.index.shape[1]
    state.count("tokens_computed_per_row", width)


def refresh_interval(value, name: str) -> None:
    check_number(name, value, lo=1, integer=True, allow_none=True)


@CACHES.register("dkv_decode")
@dataclass(kw_only=True)
class DKVDecode(Cache):
    example_args = {"cache_reloading_step": 3}
    bad_args = ({"cache_reloading_step": 0}, {"cache_steps": 2.5}, {"shift_type": "left"})

    """cache_reloading_step: full refresh every this many steps (LLaDA: of each block); None: 8
    (the README's LLaDA example). cache_steps: the same interval under Dream's name (give one of
    the two). shift_type: shifted-logit models (Dream) only; "un" (None) or "un_right"."""

    cache_reloading_step: int | None = None
    cache_steps: int | None = None
    shift_type: str | None = None

    uses_kv = True

    def check(self):
        refresh_interval(self.cache_reloading_step, "cache_reloading_step")
        refresh_interval(self.cache_steps, "cache_steps")
        if None not in (self.cache_reloading_step, self.cache_steps) and self.cache_reloading_step != self.cache_steps:
            raise ValueError(f"cache_reloading_step={self.cache_reloading_step} and cache_steps={self.cache_steps} "
                             f"name the same refresh interval; give one")
        if self.shift_type is not None:
            check_choice("shift_type", self.shift_type, SHIFT_TYPES)

    @property
    def interval(self) -> int:
        return int(self.cache_reloading_step or self.cache_steps or 8)

    def check_pair(self, rule, arch, profile):
        if self.shift_type is not None and not profile.shift_logits:
            raise ValueError(f"shift_type={self.shift_type!r} applies to models with shifted logits (Dream); "
                             f"{arch} caches a position once its own token is decoded")

    def setup(self, state):
        shifted = state.profile.shift_logits
        self.shift = (self.shift_type or "un") if shifted else None

    def begin_block(self, state):
        self.prev = None  # the cached set two states back (None: unknown, the step is a full forward)

    def cached_set(self, x: torch.Tensor, mask_id: int, first: bool) -> torch.Tensor:
        """(B, L) positions whose K/V may be reused, given the sequence ``x``."""
        done = x != mask_id
        if self.shift is None:
            return done
        if first or self.shift == "un":  # j is cached once token j+1 is decoded
            last = done[:, -1:] if first else done[:, :1]  # the reference's wrap-around for the last position
            return torch.cat([done[:, 1:], last], 1)
        both = done[:, :-1] & done[:, 1:]
        return torch.cat([both, both[:, -1:]], 1)

    def plan(self, state):
        i = state.step
        now = self.cached_set(state.x, state.mask_id, first=i == 0)
        full = i % self.interval == 0 or self.prev is None
        fed = None if full else ~self.prev
        # LLaDA's reference knows no set before a block's first step, so its step 1 is full too
        self.prev = now if i > 0 or self.shift is not None else None
        if full:
            plan = Plan(0, state.length, refresh=True)
        else:
            if state.key_mask is not None:
                fed = fed & state.key_mask  # padding is never worth computing
            plan = index_plan(fed)
        count_forward(state, plan)
        return plan


@golden_adapter("dkv_cache")
def dkv_cache_case(case: dict) -> dict:
    """dKV-Cache's goldens: LLaDA Decode (dkv_decode), LLaDA Greedy (dkv_greedy + random_order),
    Dream Decode (dkv_decode on Dream's whole-sequence fixed schedule)."""
    p, extra = case["params"], case.get("extra", {})
    variant = case.get("variant", "decode")
    if variant == "dream":
        if p.get("top_p") is not None or p.get("top_k") is not None or p.get("alg_temp") or p.get("eps", 1e-3) != 1e-3:
            raise ValueError(f"case {case['id']}: top_p/top_k/alg_temp/eps other than the defaults are not mapped")
        if p.get("cache_type", "decoded") != "decoded":
            raise ValueError(f"case {case['id']}: cache_type {p['cache_type']!r} is not dKV-Cache-Decode")
        kw = dict(gen_length=p["max_new_tokens"], block_length=None, steps=p["steps"], cache="dkv_decode",
                  decoding="fixed", alg=p["alg"], temperature=p["temperature"],
                  cache_steps=p["cache_steps"] if p["use_cache"] else 1, shift_type=p["shift_type"])
        mask = p.get("input", {}).get("attention_mask")
        if mask is not None:
            kw["attention_mask"] = torch.tensor(mask)
    else:
        kw = dict(gen_length=p["gen_length"], block_length=p["block_length"], steps=p["steps"],
                  cfg_scale=p["cfg_scale"], temperature=p["temperature"],
                  cache_reloading_step=p["cache_reloading_step"] if p["enable_cache"] else 1)
        if variant == "greedy":
            kw.update(cache="dkv_greedy", decoding="random_order", window_size=p["window_size"],
                      remasking=p["remasking"], seed=p["input"]["torch_seed"])
        else:
            kw.update(cache="dkv_decode", decoding="fixed", remasking=p["remasking"])
    kw["expect_stats"] = {k: extra[k] for k in ("forward_kinds", "tokens_computed_per_row") if k in extra}
    return kw
