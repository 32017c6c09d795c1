"""The method table: every registered cache x decoding rule on one model and one machine.

Each method paper reports its speed on its own hardware; this runs every pair of the registries
(``CACHES`` x ``RULES``, new plugins included by being registered) with each plugin's
``example_args``, on the static-buffer / CUDA-graph path where the pair allows it, and records NFE,
ms per forward, tokens/s and whether row 0 of a left-padded batch of 2 equals the batch-1 run.
Pairs the engine refuses (a ValueError before any forward) are listed as refused. With random
weights a rule sees near-uniform predictions, so NFE shows the rule's floor (often one token per
step), not its speed-up on a trained model: compare ms per forward across methods, NFE on real weights.
"""
from __future__ import annotations

import time

import torch

from .decoding import CACHES, RULES, build_plugins, generate, graphs_unsupported
from .decoding.graphs import clear_static_buffers
from .metrics.timing import synchronize


def ordered_pairs() -> list[tuple[str, str]]:
    """Every registered (cache, rule); the threshold rule's and the dual cache's rows first, so that
    a time budget cut leaves the most telling rows (each method in the paper's setting)."""
    pairs = [(c, r) for c in CACHES for r in RULES]
    return sorted(pairs, key=lambda p: (p[1] != "threshold", p[0] != "dual"))


def method_row(model, preset: str, cache: str, rule: str, prompts, shape: dict, graphs_on: bool, device) -> dict:
    """One (cache, rule) on ``model``: timed at batch 1 after a warm-up run (the whole generation
    where graphs are captured, its first block otherwise); row 0 of the padded batch of 2 must
    equal the batch-1 run (bf16 batch invariance: recorded, not asserted).

    prompts: two 1-D prompts of different lengths; shape: gen_length, block_length, steps."""
    row = {"model": preset, "cache": cache, "decoding": rule}
    args = {**CACHES[cache].example_args, **RULES[rule].example_args}
    try:
        cache_obj, rule_obj = build_plugins(cache, rule, **args)
    except ValueError as e:
        return row | {"refused": str(e)}
    why = graphs_unsupported(cache_obj, rule_obj)
    kw = dict(shape, cache=cache_obj, decoding=rule_obj, graphs=graphs_on and why is None)
    warm = kw if kw["graphs"] else dict(kw, gen_length=shape["block_length"], steps=shape["block_length"])
    t0 = time.perf_counter()
    try:
        generate(model, prompts[0][None], **warm)
    except ValueError as e:
        return row | {"refused": str(e)}
    synchronize(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = generate(model, prompts[0][None], **kw)
    synchronize(device)
    e2e = time.perf_counter() - t0
    pair = generate(model, list(prompts), **kw)
    clear_static_buffers(model)
    G = shape["gen_length"]
    return row | {
        "args": args, "graphs": kw["graphs"], "graphs_unsupported": why if graphs_on else None,
        "nfe": res.nfe, "warmup_s": round(warmup_s, 3), "e2e_s": round(e2e, 4),
        "ms_per_forward": round(e2e * 1e3 / res.nfe, 3), "tokens_per_s": round(G / e2e, 2),
        "tokens_per_forward": round(G / res.nfe, 3),
        "batch_invariant_bf16": bool(torch.equal(pair.tokens[0], res.tokens[0]) and pair.nfe_per_row[0] == res.nfe),
        "stats": {k: v for k, v in res.stats.items() if isinstance(v, (int, float, str, bool))}}
