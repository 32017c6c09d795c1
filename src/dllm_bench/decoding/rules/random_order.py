"""Random-order decoding (dKV-Cache-Greedy's ``remasking='random'``): per block, one random order
of the block's positions is drawn, and step i unmasks the next quota[i] positions of it (LLaDA's
even quota: ``M // spb`` each, one more for the first ``M % spb`` steps) with their argmax tokens,
whatever their confidence.

The order: ``torch.rand((1, L))`` float32 over the row's positions (prompt included), -inf outside
the block, sorted descending — the reference's draw. With ``seed`` each row draws from its own CPU
generator seeded with it (a row equals its batch-size-1 run with that seed; the reference draws
one (B, L) tensor for the batch); with ``seed=None`` rows draw in turn from the call's
``generator`` (or torch's global one: ``torch.manual_seed(s)`` then generate reproduces the
reference at batch size 1). ``order`` gives the order instead: per block, the gen-relative
positions in decoding order, shared by every row or one list of blocks per row.

``schedule(state, step)`` exposes what a step will unmask, for caches that prepare a step's input
ahead of it (dKV-Cache-Greedy).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..confidence import predict
from ..registry import RULES, check_number
from ..state import Prediction
from .base import Rule, even_quota


@RULES.register("random_order")
@dataclass(kw_only=True)
class RandomOrder(Rule):
    example_args = {"seed": 3}
    bad_args = ({"seed": 1.5}, {"seed": "x"})

    seed: int | None = 42
    order: list | None = None
    remasking: str = "random"

    uses_steps = True
    exit_when_done = False  # the reference runs every step of its budget
    supports_graphs = False

    def check(self):
        super().check()
        if self.remasking != "random":
            raise ValueError(f"decoding 'random_order' is remasking='random' (one random order per block); "
                             f"remasking={self.remasking!r} is decoding 'fixed'")
        check_number("seed", self.seed, integer=True, allow_none=True)
        if self.order is not None:
            try:
                t = torch.as_tensor(self.order)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"order must be nested lists of int positions: {e}") from None
            if t.dtype.is_floating_point or t.dtype == torch.bool or t.dim() not in (2, 3):
                raise ValueError(f"order must be int positions shaped (blocks, block_length) or "
                                 f"(batch, blocks, block_length), got {t.dtype} {tuple(t.shape)}")

    def setup(self, state):
        super().setup(state)
        self.spb = state.steps_per_block
        B, nb, bl = state.batch, state.n_blocks, state.block_length
        self.fixed_order = None
        if self.order is not None:
            given = torch.as_tensor(self.order, dtype=torch.long)
            t = given.expand(B, *given.shape) if given.dim() == 2 else given
            if tuple(t.shape) != (B, nb, bl):
                raise ValueError(f"order has shape {tuple(given.shape)}, expected ({nb}, {bl}) or ({B}, {nb}, {bl}) "
                                 f"for {nb} blocks of {bl}")
            want = torch.arange(nb * bl).view(1, nb, bl)
            if not torch.equal(t.sort(-1).values, want.expand_as(t)):
                raise ValueError("order: block b must list each of the gen-relative positions "
                                 "b*block_length .. (b+1)*block_length-1 once")
            self.fixed_order = t.to(state.device) + state.prompt_len
        self.generators = None
        if self.seed is not None:
            self.generators = [torch.Generator().manual_seed(int(self.seed)) for _ in range(B)]

    def begin_block(self, state):
        B, L, s, e = state.batch, state.length, state.start, state.end
        block = state.x[:, s:e]
        quota = even_quota((block == state.mask_id).sum(-1), self.spb)  # (B, spb)
        self.cum = torch.cat([quota.new_zeros(B, 1), quota.cumsum(-1)], 1)  # (B, spb + 1)
        if self.fixed_order is not None:
            self.block_order = self.fixed_order[:, state.block]
            return
        lengths = [L] * B if state.key_mask is None else state.key_mask.sum(-1).tolist()
        rows = []
        for r in range(B):
            off = L - int(lengths[r])  # left padding: the row's own positions start here
            gen = state.generator if self.generators is None else self.generators[r]
            dev = gen.device if gen is not None else torch.device("cpu")
            draw = torch.rand((1, L - off), generator=gen, device=dev)
            draw[:, :s - off] = -torch.inf
            draw[:, e - off:] = -torch.inf
            rows.append(torch.sort(draw, descending=True).indices[0, :e - s] + off)
        self.block_order = torch.stack(rows).to(state.device)  # (B, block_length) positions in order

    def _due(self, state, step):
        """(B, block_length): positions of the order due by the end of ``step`` and still masked."""
        n = self.block_order.shape[1]
        rank = torch.arange(n, device=state.device)[None, :] < self.cum[:, min(step, self.spb - 1) + 1, None]
        return rank & (state.x.gather(1, self.block_order) == state.mask_id)

    def schedule(self, state, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions (B, W), valid (B, W)): what step ``step`` of this block will unmask, in
        decoding order (computed from ``state.x`` as it stands before that step)."""
        due = self._due(state, step)
        width = max(int(due.sum(-1).max()), 1)
        pick = torch.sort(due.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
        return self.block_order.gather(1, pick), due.gather(1, pick)

    def predict(self, logits, state):
        # the argmax token (Gumbel-max when temperature > 0); the order, not a confidence, decides
        x0, conf = predict(logits, mask_id=state.mask_id, score="prob", fp64=state.profile.confidence_fp64,
                           temperature=self.temperature, remasking="low_confidence", generator=state.generator)
        return Prediction(x0, conf)

    def select(self, pred, cand, state):
        due = self._due(state, state.step)
        mark = torch.zeros_like(state.x, dtype=torch.bool).scatter_(1, self.block_order, due)
        ts = state.start if self.targets == "block" else state.prompt_len
        return mark[:, ts:ts + cand.shape[1]] & cand

    def exhausted(self, state):
        return state.step >= self.spb
