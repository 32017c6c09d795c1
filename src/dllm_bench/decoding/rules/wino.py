"""WINO, Wide-In Narrow-Out revokable decoding (Feng-Hong/WINO-DLLM, LLaDA only).

Every step appends a shadow copy of the current block to the forward: shadow slot j is a mask
token at block position s+j's RoPE position that sees every sequence position except s+j (and
every shadow slot); sequence positions never see the shadow. In one forward the block drafts
(wide in: accept masked tokens whose confidence is > ``threshold``, at most
``min(max(floor(0.7 n), 5), 20)`` of the n masked ones, at least the most confident one) and the
shadow verifies (narrow out: when the step accepted more than one token, re-mask decoded tokens
whose shadow probability is < ``threshold_back``; when there are at least as many such tokens as
the previous step accepted (30 at block start), only that count minus one, the least confident).
All decisions are taken in float64. A block ends after a step that leaves it without masks, so
re-masking can defer its end. Every row decides alone, so batched rows equal their batch-1 runs.

Counters (``GenerationResult.stats``, summed over the rows of a batch): ``remask_events``
(tokens re-masked; per row: ``GenerationResult.remasked_per_row``), ``remask_steps``, ``remasked_positions`` (distinct
positions ever re-masked), ``block_steps`` (forwards per block), the acceptance branches
``accept_threshold_steps`` / ``accept_cap_steps`` / ``accept_fallback_steps``, the re-mask branches
``remask_free_steps`` / ``remask_capped_steps`` / ``remask_capped_zero_steps`` /
``remask_skipped_single_accept_steps``, ``block_end_deferred_steps``, and
``accept_remask_trace``: per forward, [tokens accepted, tokens re-masked].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..confidence import predict
from ..registry import RULES, check_choice, check_number, golden_adapter
from ..state import Decision, Extra, Prediction
from .base import Rule, first_plus, top_k

FIRST_LAST_ACCEPT = 30  # the previous-accept count a block starts with (the authors' constant)
# per-row step counters, in the order of the columns of ``Wino.counts``
COUNTERS = ("remask_events", "remask_steps", "accept_threshold_steps", "accept_cap_steps", "accept_fallback_steps",
            "remask_free_steps", "remask_capped_steps", "remask_capped_zero_steps",
            "remask_skipped_single_accept_steps", "block_end_deferred_steps")


@RULES.register("wino")
@dataclass(kw_only=True)
class Wino(Rule):
    example_args = {"threshold": 0.5, "threshold_back": 0.9}
    bad_args = ({"threshold": 1.5}, {"threshold_back": -0.1}, {"threshold": float("nan")})

    threshold: float = 0.6        # the authors' GSM8K setting
    threshold_back: float = 0.9

    families: ClassVar[tuple[str, ...]] = ("llada",)
    adds_queries: ClassVar[bool] = True  # the shadow block
    supports_graphs: ClassVar[bool] = False  # extra query tokens take the general forward path

    def check(self):
        super().check()
        check_number("threshold", self.threshold, lo=0, hi=1)
        check_number("threshold_back", self.threshold_back, lo=0, hi=1)
        check_choice("remasking", self.remasking, ("low_confidence",))

    def setup(self, state):
        super().setup(state)
        B, dev = state.batch, state.device
        self.counts = torch.zeros((B, len(COUNTERS)), dtype=torch.long, device=dev)
        self.ever_remasked = torch.zeros((B, state.gen_length), dtype=torch.bool, device=dev)
        state.extras["block_steps"], state.extras["accept_remask_trace"] = [], []

    def begin_block(self, state):
        B, E, dev = state.batch, state.block_length, state.device
        self.last_accept = torch.full((B,), FIRST_LAST_ACCEPT, dtype=torch.long, device=dev)
        pos = (torch.arange(state.start, state.end, device=dev).expand(B, E) if state.position_ids is None
               else state.position_ids[:, state.start:state.end])
        sees_main = torch.ones((B, E, state.length), dtype=torch.bool, device=dev)
        j = torch.arange(E, device=dev)
        sees_main[:, j, state.start + j] = False  # shadow slot j never sees its own real token
        self.shadow = Extra(ids=torch.full((B, E), state.mask_id, dtype=torch.long, device=dev), positions=pos,
                            sees_main=sees_main, sees_extra=torch.ones((E, E), dtype=torch.bool, device=dev))
        state.extras["block_steps"].append(0)

    def extra_queries(self, state):
        return self.shadow

    def predict(self, logits, state):
        """Argmax on the raw logits (the mask token excluded), its float64 softmax probability."""
        x0, conf = predict(logits, mask_id=state.mask_id, score="prob", fp64=True, temperature=self.temperature,
                           remasking=self.remasking, generator=state.generator)
        return Prediction(x0, conf)

    def select(self, pred, cand, state):
        conf = pred.conf.to(torch.float64)                       # (B, E), -inf off the masked ones
        n = cand.sum(-1)
        cap = (0.7 * n.to(torch.float64)).floor().long().clamp(5, 20)
        above = cand & (conf > self.threshold)
        n_above = above.sum(-1)
        capped = n_above > cap
        accept = first_plus(conf, torch.where(capped[:, None], top_k(conf, cap), above))
        a = accept.sum(-1)

        fed = state.x[:, state.start:state.end]                  # the tokens this forward saw
        verified = fed != state.mask_id
        shadow = torch.softmax(pred.extra_logits.to(torch.float64), -1).gather(-1, fed[..., None]).squeeze(-1)
        doubt = verified & (shadow < self.threshold_back)
        n_doubt = doubt.sum(-1)
        over = n_doubt >= self.last_accept
        quota = torch.where(over, self.last_accept - 1, n_doubt) * (a > 1)
        remask = top_k(torch.where(doubt, -shadow, -torch.inf), quota)
        r = remask.sum(-1)

        active = n > 0
        some = active & (n_doubt > 0)
        step = torch.stack([
            r, r > 0, active & ~capped & (n_above > 0), capped, active & (n_above == 0),
            some & (a > 1) & ~over, some & (a > 1) & over & (self.last_accept > 1),
            some & (a > 1) & over & (self.last_accept <= 1), some & (a <= 1), active & (a == n) & (r > 0),
        ], -1).long()
        self.counts += step
        self.ever_remasked[:, state.start - state.prompt_len:state.end - state.prompt_len] |= remask
        self.last_accept = torch.where(active, a, self.last_accept)
        self._publish(state, torch.cat([self.counts, self.ever_remasked.sum(-1, keepdim=True), a[:, None],
                                        r[:, None]], -1))
        return Decision(accept, remask)

    def _publish(self, state, table):
        """Counters into ``state.extras``; table (B, counters + distinct + this step's a, r): one host copy."""
        rows = table.tolist()
        total = [sum(col) for col in zip(*rows)]
        for k, key in enumerate(COUNTERS):
            state.extras[key] = total[k]
        state.extras["remasked_positions"] = total[len(COUNTERS)]
        state.extras["accept_remask_trace"].append(total[-2:])
        state.extras["block_steps"][-1] += 1


@golden_adapter("wino")
def wino_case(case: dict) -> dict:
    """A case of ``methods/wino.json``: ``decoding_wino``'s arguments (batch 1, no cache). Its
    ``mask_id`` is the checkpoint's own; the observed counters and the per-forward trace of
    [accepted, re-masked] are compared too."""
    p, extra = case["params"], case.get("extra", {})
    expect = {k: extra[k] for k in (*COUNTERS, "remasked_positions", "block_steps") if k in extra}
    if "trace" in extra:
        expect["accept_remask_trace"] = extra["trace"]
    return dict(gen_length=p["gen_length"], block_length=p["block_length"], cache="none", decoding="wino",
                threshold=p.get("threshold", 0.6), threshold_back=p.get("threshold_back", 0.9),
                temperature=p.get("temperature", 0.0), expect_stats=expect)
