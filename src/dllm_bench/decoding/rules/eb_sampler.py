"""EB-Sampler, entropy-bounded unmasking (Ben-Hamu et al., arXiv 2505.24857), as NEUIR/PC-Sampler's
``generate_with_eb_sampler`` implements it (the paper has no official code).

Each forward ranks the block's masked positions by the entropy of their predictive distribution
(ascending) and commits the largest group of lowest-entropy positions whose summed entropy minus
its largest entropy stays within ``gamma``, at least one. No step budget: a block runs until it
has no mask left (the reference decodes the whole generation as one block: ``block_length=None``).
The entropy is computed in the logits' dtype (log-probabilities clamped at the dtype's minimum)
and the bound as the reference writes it, a cumulative sum minus the running maximum, so that
ties at the bound fall the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..confidence import predict
from ..registry import RULES, check_number, golden_adapter
from ..state import Prediction
from .base import Rule


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) -> (...): the entropy of Categorical(logits=logits), in the logits' dtype."""
    logp = logits - logits.logsumexp(-1, keepdim=True)
    return -(logp.clamp(min=torch.finfo(logp.dtype).min) * logp.softmax(-1)).sum(-1)


@RULES.register("eb_sampler")
@dataclass(kw_only=True)
class EBSampler(Rule):
    example_args = {"gamma": 0.3}
    bad_args = ({"gamma": -0.1}, {"gamma": float("nan")})

    gamma: float = 0.01

    score = "neg_entropy"

    def check(self):
        super().check()
        check_number("gamma", self.gamma, lo=0)
        if self.remasking != "low_confidence":
            raise ValueError(f"decoding 'eb_sampler' ranks by entropy; remasking={self.remasking!r} "
                             f"is not supported (use low_confidence)")

    def predict(self, logits, state):
        """x0 as the reference picks it (mask token excluded); conf = minus the entropy."""
        x0, _ = predict(logits, mask_id=state.mask_id, score="prob", fp64=state.profile.confidence_fp64,
                        temperature=self.temperature, remasking="low_confidence", generator=state.generator)
        return Prediction(x0, -entropy(logits))

    def select(self, pred, cand, state):
        ent, order = torch.sort(-pred.conf, dim=-1, stable=True)  # candidates first (others are +inf)
        n = cand.sum(-1)
        bound = ent.cumsum(-1) - ent.cummax(-1).values  # inf - inf = nan past the candidates: never <= gamma
        admitted = (bound <= self.gamma).sum(-1)
        k = torch.minimum(admitted.clamp(min=1), n)
        keep = torch.arange(cand.shape[1], device=cand.device)[None, :] < k[:, None]
        unmask = torch.zeros_like(cand).scatter_(1, order, keep)
        active = n > 0
        counts = torch.stack([(k == 1).sum(), (k > 1).sum(), ((k > 1) & (k == n)).sum(),
                              (active & (admitted == 0)).sum(), k.max()]).tolist()
        for key, c in zip(("steps_single", "steps_multi", "steps_all_remaining", "steps_clamped_to_one"), counts):
            state.count(key, c)
        state.extras["max_k"] = max(state.extras.get("max_k", 0), counts[-1])
        return unmask


STATS = ("steps_single", "steps_multi", "steps_all_remaining", "steps_clamped_to_one", "max_k")


@golden_adapter("eb_sampler")
def eb_sampler_case(case: dict) -> dict:
    """A case of ``methods/eb_sampler.json``: ``generate_with_eb_sampler``'s arguments (one block,
    no step budget, no cache; cfg_scale > 0 is the engine's classifier-free guidance)."""
    q = case["params"]
    return dict(decoding="eb_sampler", cache="none", gen_length=q["gen_length"], block_length=None,
                gamma=q["gamma"], temperature=q["temperature"], cfg_scale=q["cfg_scale"],
                expect_stats={k: case["extra"][k] for k in STATS if k in case.get("extra", {})})
