"""``generate``: validate, left-pad and build the pieces, then run the block loop once.

Every argument is checked before the first forward; a bad one raises a one-line ValueError that
names it. Batches of prompts of different lengths are left-padded; padded keys are masked out and
positions count from each row's first real token, so each row equals its batch-size-1 result.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .caches import CACHES
from .loop import StepInfo, block_loop
from .rules import EvenSteps, Factor, LinearEntropy, QuotaThreshold, Rule, Threshold

DECODINGS = ("fixed", "threshold", "factor")
REMASKINGS = ("low_confidence", "random")


@dataclass
class GenerationResult:
    """tokens: (B, gen_length) the generated part; nfe: model forward calls for the batch;
    nfe_per_row: each row's own count (what it costs at batch size 1); refreshes: block-start full
    forwards; skipped_blocks: blocks left undecoded by ``stop_at_eos`` (filled with EOS);
    nfe_saved: forwards those blocks would have needed at least (their refresh, or their whole
    step budget under fixed decoding); trace: per-step records when ``trace=True``."""

    tokens: torch.Tensor
    nfe: int
    nfe_per_row: list[int]
    refreshes: int
    skipped_blocks: int = 0
    nfe_saved: int = 0
    trace: list[dict] | None = None


def _choice(kind: str, value, valid: Sequence[str]) -> str:
    if value not in valid:
        near = difflib.get_close_matches(str(value), valid, n=1)
        hint = f" Did you mean: {near[0]}?" if near else ""
        raise ValueError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}.{hint}")
    return value


def _left_pad(prompt_ids, attention_mask, pad_id: int):
    """-> (ids (B, P) long, mask (B, P) bool or None when nothing is padded)."""
    if isinstance(prompt_ids, torch.Tensor):
        ids = prompt_ids if prompt_ids.dim() == 2 else prompt_ids[None]
        if ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"empty prompt: prompt_ids has shape {tuple(ids.shape)}")
        if attention_mask is None:
            return ids.long(), None
        mask = attention_mask.bool().to(ids.device)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != prompt_ids shape {tuple(ids.shape)}")
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError(f"empty prompt in row {int((lengths == 0).nonzero()[0])} (attention_mask all zero)")
        # left padding: once a row's real tokens start they continue to the end
        if bool((mask.long().cummax(-1).values != mask.long()).any()):
            raise ValueError("attention_mask must describe left padding (zeros only before the prompt)")
        return ids.long(), None if bool(mask.all()) else mask
    rows = [torch.as_tensor(r, dtype=torch.long).flatten() for r in prompt_ids]
    if not rows:
        raise ValueError("empty prompt list")
    for i, r in enumerate(rows):
        if r.numel() == 0:
            raise ValueError(f"empty prompt in row {i}")
    P = max(r.numel() for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - r.numel():] = r
        mask[i, P - r.numel():] = True
    return ids, None if bool(mask.all()) else mask


def _rule(decoding: str, profile, *, blocked: bool, spb: int, steps: int, gen_length: int,
          threshold, factor) -> Rule:
    if decoding == "threshold":
        return Threshold(threshold) if blocked else QuotaThreshold(threshold, steps, gen_length)
    if decoding == "factor":
        return Factor(factor)
    if profile.fixed_schedule == "linear_entropy":
        return LinearEntropy(spb)
    return EvenSteps(spb)


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length: int, block_length: int | None = None,
             steps: int | None = None, cache: str = "none", decoding: str = "fixed",
             threshold: float | None = None, factor: float | None = None, temperature: float = 0.0,
             remasking: str = "low_confidence", attention_mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, stop_at_eos: bool = False,
             trace: bool = False, on_step: Callable[[StepInfo], None] | None = None,
             graphs: bool = False) -> GenerationResult:
    """Generate ``gen_length`` tokens after each prompt with a diffusion LM.

    prompt_ids: LongTensor (B, L) (left-padded rows with ``attention_mask``, 1 = real token) or a
        list of 1-D tensors / lists of different lengths.
    block_length: decode in blocks of this size, left to right (None: one block; for Dream with
        ``cache="none"`` None selects Dream's original non-blocked schedule).
    steps: fixed decoding's total step budget, split evenly over the blocks (must be a multiple of
        the number of blocks). Unused by threshold/factor on the blocked path (default: n_blocks);
        Dream's non-blocked threshold path uses ``gen_length // steps`` as its per-step quota.
    cache: "none" | "prefix" | "dual".  decoding: "fixed" | "threshold" | "factor".
    temperature: > 0 samples with Gumbel-max noise in float64 drawn from ``generator``.
    stop_at_eos: stop once every row has finished a block containing EOS; the rest is EOS.
    trace / on_step: per-step records in ``result.trace`` / a callback receiving ``StepInfo``.
    graphs: run the steps on static buffers kept on the model and, on a GPU, replay them as CUDA
        graphs captured once per (batch, length, block); same tokens as the eager path.
    """
    cfg, profile = model.config, model.profile
    cache_strategy = CACHES[_choice("cache", cache, tuple(CACHES))]
    _choice("decoding", decoding, DECODINGS)
    _choice("remasking", remasking, REMASKINGS)
    if not isinstance(gen_length, int) or gen_length <= 0:
        raise ValueError(f"gen_length must be a positive int, got {gen_length!r}")
    blocked = block_length is not None or cache != "none" or not profile.nonblocked_without_blocks
    if block_length is None:
        block_length = gen_length
    if not isinstance(block_length, int) or block_length <= 0:
        raise ValueError(f"block_length must be a positive int, got {block_length!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    n_blocks = gen_length // block_length
    if steps is None:
        if decoding == "fixed" or not blocked:
            raise ValueError(f"steps is required for decoding={decoding!r}")
        steps = n_blocks
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if steps % n_blocks:
        raise ValueError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
    if decoding == "threshold":
        if threshold is None or not 0 < float(threshold) <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if not blocked and gen_length % steps:
            raise ValueError(f"Dream's non-blocked threshold schedule needs gen_length % steps == 0; "
                             f"got gen_length {gen_length}, steps {steps}")
    elif threshold is not None:
        raise ValueError(f"threshold={threshold!r} is only used with decoding='threshold' (got {decoding!r})")
    if decoding == "factor":
        if factor is None or not float(factor) > 0:
            raise ValueError(f"factor must be > 0, got {factor!r}")
    elif factor is not None:
        raise ValueError(f"factor={factor!r} is only used with decoding='factor' (got {decoding!r})")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if graphs and (temperature > 0 or remasking != "low_confidence"):
        raise ValueError(f"graphs=True needs deterministic steps (temperature 0, low_confidence "
                         f"remasking); got temperature={temperature!r}, remasking={remasking!r}")

    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.mask_token_id
    ids, mask = _left_pad(prompt_ids, attention_mask, pad_id)
    B, P = ids.shape
    if P + gen_length > cfg.max_length:
        raise ValueError(f"prompt length {P} + gen_length {gen_length} = {P + gen_length} exceeds the "
                         f"model's maximum length {cfg.max_length}")

    device = model.device
    ids = ids.to(device)
    x = torch.cat([ids, torch.full((B, gen_length), cfg.mask_token_id, dtype=torch.long, device=device)], 1)
    position_ids = key_mask = None
    if mask is not None:
        key_mask = torch.cat([mask.to(device), torch.ones((B, gen_length), dtype=torch.bool, device=device)], 1)
        position_ids = (key_mask.long().cumsum(-1) - 1).clamp(min=0)

    spb = steps // n_blocks
    rule = _rule(decoding, profile, blocked=blocked, spb=spb if blocked else steps, steps=steps,
                 gen_length=gen_length, threshold=threshold, factor=factor)
    out = block_loop(model, x, prompt_len=P, block_length=block_length, cache=cache_strategy, rule=rule,
                     position_ids=position_ids, attention_mask=key_mask, temperature=temperature,
                     remasking=remasking, generator=generator,
                     refresh_forces_first=profile.refresh_forces_first and blocked,
                     stop_at_eos=stop_at_eos, trace=trace, on_step=on_step, graphs=graphs)
    per_block = spb if decoding == "fixed" else 1
    return GenerationResult(tokens=out.x[:, P:], nfe=out.nfe, nfe_per_row=out.nfe_per_row,
                            refreshes=out.refreshes, skipped_blocks=out.skipped_blocks,
                            nfe_saved=out.skipped_blocks * per_block, trace=out.trace)
