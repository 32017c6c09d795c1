"""THE block loop, written once: every cache strategy and decoding rule plugs into it.

For each block of the generation: one full forward (the refresh; it fills the cache and its
logits serve the block's first step), then further steps — each feeding the cache strategy's
window — until the block has no mask left or the rule's step budget is spent. Rows of a batch
decide independently; a row whose block is done simply has no candidates, so each row's tokens
(and its own forward count, ``nfe_per_row``) equal its batch-size-1 run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch

from .caches import CacheStrategy
from .confidence import predict
from .graphs import static_buffers
from .rules import Rule


@dataclass
class StepInfo:
    """What a step callback sees after each forward (for traces and KV-similarity metrics)."""

    block: int
    step: int                  # 0 = the block's refresh forward
    block_start: int
    block_end: int
    window: tuple[int, int]    # positions fed to the model
    x: torch.Tensor            # (B, L) the sequence after this step's unmasking (do not modify)
    accepted: torch.Tensor     # (B, W) bool, positions of the block unmasked by this step
    confidence: torch.Tensor   # (B, W) candidates' confidences (-inf elsewhere)


@dataclass
class LoopOutput:
    x: torch.Tensor
    nfe: int
    nfe_per_row: list[int]
    refreshes: int
    skipped_blocks: int = 0
    trace: list[dict] | None = field(default=None)


def block_loop(model, x: torch.Tensor, *, prompt_len: int, block_length: int, cache: CacheStrategy,
               rule: Rule, position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
               temperature: float = 0.0, remasking: str = "low_confidence",
               generator: torch.Generator | None = None, refresh_forces_first: bool | None = None,
               stop_at_eos: bool = False, trace: bool = False,
               on_step: Callable[[StepInfo], None] | None = None, graphs: bool = False) -> LoopOutput:
    """Decode the masked tail of ``x`` (B, L) in place, block by block. See ``generate``.

    graphs: run every step on static buffers kept on the model, captured as CUDA graphs on a GPU
    (see ``graphs.py``); needs deterministic steps (temperature 0, low-confidence remasking).
    """
    cfg, profile = model.config, model.profile
    mask_id = cfg.mask_token_id
    if refresh_forces_first is None:
        refresh_forces_first = profile.refresh_forces_first
    B, L = x.shape
    n_blocks = (L - prompt_len) // block_length
    static = None
    if graphs:
        static = static_buffers(model, B, L, cache.uses_cache, attention_mask is not None)
        static.load(x, position_ids, attention_mask)
        x_out, x = x, static.x
        kv, position_ids, attention_mask = static.kv, static.position_ids, static.attention_mask
    else:
        kv = model.new_cache(B, L) if cache.uses_cache else None
    nfe, refreshes, skipped = 0, 0, 0
    nfe_row = torch.zeros(B, dtype=torch.long, device=x.device)
    records: list[dict] | None = [] if trace else None

    def forward(start: int, end: int, s: int, e: int):
        """(x0, conf) for positions s..e, from a forward that feeds start..end."""
        # Dream predicts position i from hidden state i-1, shifted within the fed window.
        lo = max(s - start - 1, 0) if profile.shift_logits else s - start
        hi = e - start - 1 if profile.shift_logits else e - start
        pos = None if position_ids is None else position_ids[:, start:end]
        logits = model(x[:, start:end], position_ids=pos, attention_mask=attention_mask,
                       cache=kv, start=start, logits_slice=slice(lo, hi))
        if profile.shift_logits and s == start:  # window position 0 keeps its own logits
            logits = torch.cat([logits[:, :1], logits], dim=1)
        return predict(logits, mask_id=mask_id, score=rule.score, fp64=profile.confidence_fp64,
                       temperature=temperature, remasking=remasking, generator=generator)

    for b in range(n_blocks):
        s, e = prompt_len + b * block_length, prompt_len + (b + 1) * block_length
        block = x[:, s:e]  # a view: writes land in x
        rule.begin_block((block == mask_id).sum(-1))
        step = 0
        window = (0, L)
        while True:
            cand = block == mask_id
            active = cand.any(-1)
            if step > 0 and (not bool(active.any()) or rule.exhausted(step)):
                break
            if static is None:
                x0, conf = forward(*window, s, e)
            else:
                x0, conf = static.run((window, s, e, rule.score), partial(forward, *window, s, e))
            nfe += 1
            nfe_row += active.long() if step > 0 else 1
            conf = conf.masked_fill(~cand, -torch.inf)
            if step == 0 and refresh_forces_first:  # Dream: refresh unmasks the first position only
                accepted = torch.zeros_like(cand)
                accepted[:, 0] = cand[:, 0]
            else:
                accepted = rule.select(conf, step) & cand
            block.copy_(torch.where(accepted, x0, block))  # no host sync
            if records is not None:
                records.append({"block": b, "step": step, "window": list(window),
                                "accepted": accepted.sum(-1).tolist(),
                                "accepted_confidence": [conf[i][accepted[i]].tolist() for i in range(B)]})
            if on_step is not None:
                on_step(StepInfo(b, step, s, e, window, x, accepted, conf))
            if step == 0:
                refreshes += 1
            step += 1
            window = cache.window(s, e, L)
        if stop_at_eos and cfg.eos_token_id is not None and b < n_blocks - 1:
            done = (x[:, prompt_len:e] == cfg.eos_token_id).any(-1)
            if bool(done.all()):
                x[:, e:] = cfg.eos_token_id
                skipped = n_blocks - 1 - b
                break
    # (x itself is not rebound: the step functions kept for replay read it)
    result = x_out.copy_(x) if static is not None else x
    return LoopOutput(x=result, nfe=nfe, nfe_per_row=nfe_row.tolist(), refreshes=refreshes,
                      skipped_blocks=skipped, trace=records)
