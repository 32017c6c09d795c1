"""One evaluation path for the job, the trainer's quick eval and the lm-eval adapter.

``generate_all`` is the accuracy pass: prompts in batches through ``generate``, each row decoded
to text (cut at EOS / stop strings) with its forward count, re-mask count and batch wall time;
metrics see every batch. ``time_engines`` is the timed pass, separate from it: after warm-up, a
fixed subset of prompts is generated ``repeats`` times per engine, synchronised, the engines of a
paired comparison interleaved (repeat r runs each engine once, the order rotating) so that load
drifts hit both; the machine's load and the thread count are recorded with it. ``speed_metrics``
turns the repeats into medians and quartiles (docs/timing.md).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from .decoding import generate
from .metrics.timing import LoadMeter, Stopwatch, percentile
from .tasks.tokens import decode_generated


def generate_all(model, tokenizer, prompts: list, engine: dict, *, batch_size: int, stop_ids=(), stop_sequences=(),
                 postprocess=None, generator=None, metrics=(), progress=None) -> tuple[list[dict], dict]:
    """The accuracy pass. ``postprocess(i, token_ids) -> (text, n_tokens)`` turns prompt i's
    generated ids into its output (default: cut at ``stop_ids`` and ``stop_sequences``, the clean
    protocol). Returns (rows, info): a row per prompt with ``output``,
    ``n_generated_tokens``, ``nfe`` (its own forward count), ``remasked``, ``batch_latency_s``,
    ``batch_size``, ``cache_refreshes``; info: ``wall_s``, ``batch_nfe``, ``kv_cache_bytes``, ``stats``
    (the plugins' numeric counters of ``GenerationResult.stats``, summed)."""
    device = model.device
    rows: list[dict] = []
    wall = 0.0
    batch_nfe = kv_bytes = 0
    stats: dict[str, float] = {}
    cache = engine.get("cache")
    for lo in range(0, len(prompts), batch_size):
        batch = prompts[lo:lo + batch_size]
        with Stopwatch(device) as sw:
            res = generate(model, batch, generator=generator, **engine)
        wall += sw.seconds
        batch_nfe += res.nfe
        for k, v in res.stats.items():  # plugins' numeric counters, summed over the batches
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                stats[k] = stats.get(k, 0) + v
        if hasattr(cache, "kv_bytes"):
            kv_bytes = max(kv_bytes, cache.kv_bytes(model, len(batch), max(len(p) for p in batch) + engine["gen_length"]))
        new = []
        for r in range(len(batch)):
            text, n_tok = (postprocess(lo + r, res.tokens[r]) if postprocess is not None else
                           decode_generated(res.tokens[r], stop_ids, tokenizer, stop_sequences))
            new.append({"output": text, "n_generated_tokens": n_tok, "nfe": res.nfe_per_row[r],
                        "remasked": res.remasked_per_row[r] if res.remasked_per_row else 0,
                        "batch_latency_s": sw.seconds, "batch_size": len(batch), "cache_refreshes": res.refreshes})
        for m in metrics:
            m.on_batch(res, new)
        rows.extend(new)
        if progress is not None:
            progress(len(batch))
    return rows, {"wall_s": wall, "batch_nfe": batch_nfe, "kv_cache_bytes": kv_bytes, "stats": stats}


@dataclass
class Repeat:
    """One timed repeat of one engine over the subset: its wall time, per-batch times and forwards."""

    wall_s: float
    batch_s: list[float]
    batch_rows: list[int]
    nfe: int


@dataclass
class Timing:
    repeats: dict[str, list[Repeat]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)   # the engines in the order they were timed
    load: dict = field(default_factory=dict)


def time_engines(model, prompts: list, engines: dict[str, dict], *, batch_size: int, repeats: int, warmup: int = 1,
                 generator_seed: int | None = None) -> Timing:
    """Time each engine over ``prompts`` ``repeats`` times, interleaved (see module doc)."""
    device = model.device
    names = list(engines)
    out = Timing(repeats={n: [] for n in names})

    def one(name: str) -> Repeat:
        gen = torch.Generator(device).manual_seed(generator_seed) if generator_seed is not None else None
        times, rows, nfe = [], [], 0
        for lo in range(0, len(prompts), batch_size):
            batch = prompts[lo:lo + batch_size]
            with Stopwatch(device) as sw:
                res = generate(model, batch, generator=gen, **engines[name])
            times.append(sw.seconds)
            rows.append(len(batch))
            nfe += res.nfe
        return Repeat(sum(times), times, rows, nfe)

    for name in names:
        for _ in range(warmup):
            one(name)
    meter = LoadMeter()
    with meter:
        for r in range(repeats):
            for k in range(len(names)):  # rotate the order so that no engine always goes first
                name = names[(r + k) % len(names)]
                out.repeats[name].append(one(name))
                out.order.append(name)
    out.load = meter.result()
    return out


def _quartiles(values: list[float], prefix: str) -> dict:
    if not values:
        return {}
    return {f"{prefix}_median": statistics.median(values), f"{prefix}_q25": percentile(values, 25),
            f"{prefix}_q75": percentile(values, 75)}


def speed_metrics(reps: list[Repeat], tokens: int, max_spread: float) -> dict:
    """Medians and quartiles over the repeats of one engine: tokens/s (``tokens`` generated per
    repeat), ms per forward, per-sample latency (batch wall time / rows, every sample of every
    repeat); ``timing_rel_iqr`` of the repeat wall times and ``timing_noisy`` when it exceeds
    ``max_spread``."""
    tps = [tokens / r.wall_s for r in reps if r.wall_s > 0]
    msf = [1e3 * r.wall_s / r.nfe for r in reps if r.nfe]
    lat = [t / n for r in reps for t, n in zip(r.batch_s, r.batch_rows) for _ in range(n)]
    walls = [r.wall_s for r in reps]
    med = statistics.median(walls) if walls else 0.0
    rel_iqr = (percentile(walls, 75) - percentile(walls, 25)) / med if med else None
    out = {"tokens_per_s": statistics.median(tps) if tps else None, **_quartiles(tps, "tokens_per_s"),
           "ms_per_forward": statistics.median(msf) if msf else None, **_quartiles(msf, "ms_per_forward"),
           **_quartiles(lat, "latency_s")}
    if lat:
        out.update(latency_s_mean=sum(lat) / len(lat), latency_s_p90=percentile(lat, 90))
    out.update(timing_repeats=len(reps), timing_rel_iqr=rel_iqr,
               timing_noisy=bool(rel_iqr is not None and rel_iqr > max_spread))
    return out


def paired_speedup(timing: Timing, cell: str, baseline: str) -> dict:
    """Per-repeat wall-time ratios baseline / cell (the two were interleaved): median and quartiles."""
    ratios = [b.wall_s / c.wall_s for c, b in zip(timing.repeats[cell], timing.repeats[baseline]) if c.wall_s > 0]
    return {"speedup": statistics.median(ratios) if ratios else None, **_quartiles(ratios, "speedup")}
