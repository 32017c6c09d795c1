"""The cache protocol: what each step of a block feeds the model, and what it may reuse.

A cache policy answers, for every step, with a ``Plan``: the positions the model is fed (a
window, or any per-row index set), whether this forward refreshes what the cache holds, and
optionally per-layer hooks that reuse a layer's cached attention or MLP output for some positions.
The K/V storage itself (``models.kv.KVCache``) is the engine's: a policy with ``uses_kv`` gets
one allocated for the call, and the model writes every fed position's fresh K/V into it. A policy
never sees a decoding rule's internals, and the loop never asks which policy it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..registry import Plugin
from ..state import DecodeState, Plan


@dataclass(kw_only=True)
class Cache(Plugin):
    """Protocol. Class attributes describe the policy to the engine:

    uses_kv: the engine allocates a (layers, B, H_kv, L, D) KV buffer for the call.
    blockwise: the policy refreshes at every block start, so decoding is block-wise even where
        the model family has a whole-sequence schedule (Fast-dLLM's prefix / dual caches).
    early_exit: a block ends as soon as it has no mask left, even when the rule has steps of its
        budget left (Fast-dLLM's cached loops); otherwise a budgeted rule runs all its steps (the
        reference loops without cache call the model ``steps`` times).
    supports_graphs: every plan is a window whose shape depends only on the block, so steps can
        run on static buffers and be replayed as CUDA graphs.
    """

    uses_kv: ClassVar[bool] = False
    blockwise: ClassVar[bool] = False
    early_exit: ClassVar[bool] = False
    supports_graphs: ClassVar[bool] = False

    def check_pair(self, rule, arch: str, profile) -> None:
        """Refuse (one-line ValueError) a rule or model family (``arch``, its ``DecodingProfile``)
        this policy cannot run with. Needs no model: a sweep checks every cell with it before its
        first job (``dllm_bench.decoding.pair_unsupported``)."""

    def setup(self, state: DecodeState) -> None:
        """Once per generate(), before any forward: check the model / shape, reset own state."""

    def begin_block(self, state: DecodeState) -> None:
        """At each block start (``state.block``, ``state.start``, ``state.end``)."""

    def plan(self, state: DecodeState) -> Plan:
        """The forward of step ``state.step`` of the current block."""
        raise NotImplementedError

    def after_step(self, state: DecodeState, plan: Plan) -> None:
        """After the step's decision was applied to ``state.x`` (``state.step`` still this step's)."""

    def guided(self, forward, state: DecodeState, plan: Plan) -> tuple[torch.Tensor, int]:
        """Classifier-free guidance (``state.cfg_scale > 0``): (logits, model calls). The calls may
        be a (B,) tensor of each row's own count when some rows skip a pass (the batch's count is
        its maximum).

        ``forward(rows)`` runs this step's forward for ``rows`` = "cond", "uncond" (the prompt
        masked) or "both" (one call on the doubled batch) and returns the targets' logits. The
        default is LLaDA's: one call on the doubled batch, ``uncond + (s + 1) * (cond - uncond)``.
        """
        cond, uncond = forward("both").chunk(2, dim=0)
        return uncond + (state.cfg_scale + 1) * (cond - uncond), 1

    def kv_bytes(self, model, batch: int, length: int) -> int:
        """Bytes this policy keeps for a batch (the engine's KV buffer for ``uses_kv``)."""
        if not self.uses_kv:
            return 0
        c = model.config
        return 2 * c.n_layers * batch * c.n_kv_heads * length * c.head_dim * model.dtype.itemsize


class WindowCache(Cache):
    """A policy whose further steps feed one contiguous window (the refresh feeds everything)."""

    supports_graphs = True

    def window(self, state: DecodeState) -> tuple[int, int]:
        raise NotImplementedError

    def plan(self, state: DecodeState) -> Plan:
        if state.step == 0:
            return Plan(0, state.length, refresh=self.uses_kv)
        return Plan(*self.window(state))
