"""``generate``: validate, left-pad and build the plugins, then run the block loop once.

Every argument is checked before the first forward; a bad one raises a one-line ValueError that
names it. Batches of prompts of different lengths are left-padded; padded keys are masked out and
positions count from each row's first real token, so each row equals its batch-size-1 result.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch

from .caches.base import Cache
from .loop import StepInfo, block_loop
from .registry import CACHES, RULES, check_number, did_you_mean
from .rules.base import Rule
from .state import DecodeState


@dataclass
class GenerationResult:
    """tokens: (B, gen_length) the generated part; nfe: model forward calls for the batch;
    nfe_per_row: each row's own count (what it costs at batch size 1); refreshes: forwards that
    refreshed the cache (block starts); skipped_blocks: blocks left undecoded by ``stop_at_eos``
    (filled with EOS); nfe_saved: forwards those blocks would have needed at least (their
    refresh, or their whole step budget under fixed decoding); remasked_per_row: decoded tokens
    turned back to mask in each row (rules that re-mask); stats: plugins' own counters for the
    batch; trace: per-step records when ``trace=True``."""

    tokens: torch.Tensor
    nfe: int
    nfe_per_row: list[int]
    refreshes: int
    skipped_blocks: int = 0
    nfe_saved: int = 0
    remasked_per_row: list[int] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    trace: list[dict] | None = None


def _prompt_tensor(prompt_ids, attention_mask):
    """Accept a BatchEncoding / dict with ``input_ids`` (and ``attention_mask``) as well."""
    if isinstance(prompt_ids, Mapping) or hasattr(prompt_ids, "data") and isinstance(getattr(prompt_ids, "data"), Mapping):
        enc = prompt_ids if isinstance(prompt_ids, Mapping) else prompt_ids.data
        if "input_ids" not in enc:
            raise ValueError(f"prompt_ids is a mapping without 'input_ids' (keys: {', '.join(map(str, enc))})")
        if attention_mask is None and enc.get("attention_mask") is not None:
            attention_mask = torch.as_tensor(enc["attention_mask"])
        prompt_ids = enc["input_ids"]
        if not isinstance(prompt_ids, torch.Tensor):
            prompt_ids = torch.as_tensor(prompt_ids)
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dtype.is_floating_point or prompt_ids.dtype == torch.bool:
            raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
        return prompt_ids, attention_mask
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (list, tuple)):
        raise ValueError(f"prompt_ids must be a LongTensor (B, L), a list of 1-D token id sequences or a "
                         f"BatchEncoding, got {type(prompt_ids).__name__}")
    return prompt_ids, attention_mask


def _left_pad(prompt_ids, attention_mask, pad_id: int):
    """-> (ids (B, P) long, mask (B, P) bool or None when nothing is padded)."""
    if isinstance(prompt_ids, torch.Tensor):
        ids = prompt_ids if prompt_ids.dim() == 2 else prompt_ids[None]
        if ids.shape[1] == 0 or ids.shape[0] == 0:
            raise ValueError(f"empty prompt: prompt_ids has shape {tuple(ids.shape)}")
        if attention_mask is None:
            return ids.long(), None
        mask = torch.as_tensor(attention_mask).bool().to(ids.device)
        if mask.dim() == 1:
            mask = mask[None]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != prompt_ids shape {tuple(ids.shape)}")
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError(f"empty prompt in row {int((lengths == 0).nonzero()[0])} (attention_mask all zero)")
        # left padding: once a row's real tokens start they continue to the end
        if bool((mask.long().cummax(-1).values != mask.long()).any()):
            raise ValueError("attention_mask must describe left padding (zeros only before the prompt)")
        return ids.long(), None if bool(mask.all()) else mask
    rows = []
    for i, r in enumerate(prompt_ids):
        if isinstance(r, str):
            raise ValueError(f"prompt row {i} is a string; tokenize it first (token ids expected)")
        try:
            rows.append(torch.as_tensor(r, dtype=torch.long).flatten())
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"prompt row {i} is not a sequence of token ids: {e}") from None
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


def build_plugins(cache: str | Cache = "none", decoding: str | Rule = "fixed", **kwargs) -> tuple[Cache, Rule]:
    """(cache, rule) from names or instances; each keyword goes to the plugin that has an argument
    of that name (the rule first). A ``None`` for an argument neither plugin has is dropped (the
    legacy signature passes ``threshold=None`` and ``factor=None`` whatever the rule)."""
    rule_cls = type(decoding) if isinstance(decoding, Rule) else RULES[decoding]
    cache_cls = type(cache) if isinstance(cache, Cache) else CACHES[cache]
    known = set(rule_cls.arg_names()) | set(cache_cls.arg_names())
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k in known}
    rule_kw, cache_kw = {}, {}
    for k, v in kwargs.items():
        if k in rule_cls.arg_names() and not isinstance(decoding, Rule):
            rule_kw[k] = v
        elif k in cache_cls.arg_names() and not isinstance(cache, Cache):
            cache_kw[k] = v
        else:
            valid = rule_cls.arg_names() + cache_cls.arg_names()
            raise ValueError(f"unknown argument {k}={v!r} for decoding {rule_cls.name!r} "
                             f"(valid: {', '.join(rule_cls.arg_names()) or 'none'}) and cache {cache_cls.name!r} "
                             f"(valid: {', '.join(cache_cls.arg_names()) or 'none'}).{did_you_mean(k, valid)}")
    return CACHES.build(cache, **cache_kw), RULES.build(decoding, **rule_kw)


def graphs_unsupported(cache: Cache, rule: Rule, cfg_scale: float = 0.0) -> str | None:
    """Why these plugins cannot run on static buffers / CUDA graphs, or None when they can."""
    for p in (cache, rule):
        if not p.supports_graphs:
            return f"is not supported by {p.kind} {p.name!r} (it has no static-shape step path)"
    if rule.temperature > 0 or rule.remasking != "low_confidence" or cfg_scale > 0:
        return (f"needs deterministic, unguided steps (temperature 0, low_confidence remasking, cfg_scale 0); "
                f"got temperature={rule.temperature!r}, remasking={rule.remasking!r}, cfg_scale={cfg_scale!r}")
    return None


def pair_unsupported(cache: Cache, rule: Rule, arch: str) -> str | None:
    """Why this cache and rule cannot run together on a model of family ``arch`` ("llada",
    "dream"), or None when they can: each plugin's ``check_pair``. Needs no model (config checks
    call it for every cell of a sweep); ``generate`` refuses such a pair before any forward."""
    from ..models.loading import FAMILIES

    if arch not in FAMILIES:
        return f"unknown model family {arch!r} (valid: {', '.join(FAMILIES)})"
    profile = FAMILIES[arch].PROFILE
    try:
        cache.check_pair(rule, arch, profile)
        rule.check_pair(cache, arch, profile)
    except ValueError as e:
        return str(e)
    return None


@torch.no_grad()
def generate(model, prompt_ids, *, gen_length: int, block_length: int | None = None,
             steps: int | None = None, cache: str | Cache = "none", decoding: str | Rule = "fixed",
             attention_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
             cfg_scale: float = 0.0, stop_at_eos: bool = False, trace: bool = False,
             on_step: Callable[[StepInfo], None] | None = None, graphs: bool = False,
             **plugin_args) -> GenerationResult:
    """Generate ``gen_length`` tokens after each prompt with a diffusion LM.

    prompt_ids: LongTensor (B, L) (left-padded rows with ``attention_mask``, 1 = real token), a
        list of 1-D tensors / lists of different lengths, or a tokenizer's BatchEncoding.
    block_length: decode in blocks of this size, left to right (None: one block; for Dream with a
        cache that does not refresh per block, None selects Dream's original whole-sequence schedule).
    steps: the total step budget of budgeted rules (``fixed``), split evenly over the blocks (a
        multiple of the number of blocks). Dream's whole-sequence threshold path uses
        ``gen_length // steps`` as its per-step quota.
    cache: a cache policy name (``dllm_bench.decoding.CACHES``: none, prefix, dual, ...) or instance.
    decoding: a decoding rule name (``dllm_bench.decoding.RULES``: fixed, threshold, factor, ...)
        or instance. Their arguments are keywords of this call (``threshold=0.9``,
        ``temperature=0.5``, ``gamma=0.01`` ...), each routed to the plugin that declares it.
    cfg_scale: classifier-free guidance (> 0): the prompt masked in the unconditional pass.
    stop_at_eos: stop once every row has finished a block containing EOS; the rest is EOS.
    trace / on_step: per-step records in ``result.trace`` / a callback receiving ``StepInfo``.
    graphs: run the steps on static buffers kept on the model and, on a GPU, replay them as CUDA
        graphs captured once per (batch, length, block); same tokens as the eager path.
    """
    cfg, profile = model.config, model.profile
    cache_obj, rule = build_plugins(cache, decoding, **plugin_args)
    if not isinstance(gen_length, int) or isinstance(gen_length, bool) or gen_length <= 0:
        raise ValueError(f"gen_length must be a positive int, got {gen_length!r}")
    blocked = block_length is not None or cache_obj.blockwise or not profile.nonblocked_without_blocks
    if block_length is None:
        block_length = gen_length
    if not isinstance(block_length, int) or isinstance(block_length, bool) or block_length <= 0:
        raise ValueError(f"block_length must be a positive int, got {block_length!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    n_blocks = gen_length // block_length
    if steps is not None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if steps % n_blocks:
            raise ValueError(f"steps {steps} is not a multiple of the number of blocks {n_blocks}")
    check_number("cfg_scale", cfg_scale, lo=0)
    if graphs and (why := graphs_unsupported(cache_obj, rule, cfg_scale)):
        raise ValueError(f"graphs=True {why}")

    pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.mask_token_id
    prompt_ids, attention_mask = _prompt_tensor(prompt_ids, attention_mask)
    ids, mask = _left_pad(prompt_ids, attention_mask, pad_id)
    B, P = ids.shape
    if P + gen_length > cfg.max_length:
        raise ValueError(f"prompt length {P} + gen_length {gen_length} = {P + gen_length} exceeds the "
                         f"model's maximum length {cfg.max_length}")
    bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
    if bad.numel():
        raise ValueError(f"prompt token id {int(bad[0])} is outside the vocabulary (0..{cfg.vocab_size - 1})")

    device = model.device
    ids = ids.to(device)
    x = torch.cat([ids, torch.full((B, gen_length), cfg.mask_token_id, dtype=torch.long, device=device)], 1)
    position_ids = key_mask = None
    if mask is not None:
        key_mask = torch.cat([mask.to(device), torch.ones((B, gen_length), dtype=torch.bool, device=device)], 1)
        position_ids = (key_mask.long().cumsum(-1) - 1).clamp(min=0)

    state = DecodeState(model=model, x=x, prompt_len=P, gen_length=gen_length, block_length=block_length,
                        steps=steps, blocked=blocked, key_mask=key_mask, position_ids=position_ids,
                        generator=generator, cfg_scale=float(cfg_scale))
    out = block_loop(state, cache_obj, rule, stop_at_eos=stop_at_eos, trace=trace, on_step=on_step, graphs=graphs)
    per_block = state.steps_per_block if rule.uses_steps and not rule.exit_when_done else 1
    return GenerationResult(tokens=out.x[:, P:], nfe=out.nfe, nfe_per_row=out.nfe_per_row,
                            refreshes=out.refreshes, skipped_blocks=out.skipped_blocks,
                            nfe_saved=out.skipped_blocks * (per_block or 1), remasked_per_row=out.remasked_per_row,
                            stats=out.stats, trace=out.trace)
