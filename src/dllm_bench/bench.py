"""Per-forward latency of each cache mode and end-to-end tokens/s, without Hydra or W&B.

    python -m dllm_bench.bench --model ../shared/fixtures/llada_tiny
    python -m dllm_bench.bench --random-weights llada-8b --device cuda --dtype bfloat16 \
        --prompt-length 768 --gen-length 256 --block-length 32 --batch-size 1 --graphs on

For each cache mode it times the step that mode repeats (none: a full forward; prefix: a forward
over the block and everything after it, against the prefix cache; dual: a forward over the block
only, against the full cache) with warm-up, device synchronisation and medians, then one whole
``generate`` call. It prints a table and, last, one JSON line with every number and the machine.

``--interleave`` (for shared, noisy machines) times the modes round-robin instead: each repeat
runs the full forward, then every mode's step, then every mode's ``generate``, so a change of
machine load hits all modes alike; each gets its median and interquartile range over the repeats,
and the machine's load during the run is recorded.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .decoding import CACHES, DecodeState, WindowCache, build_plugins, generate, graphs_unsupported, pair_unsupported
from .decoding.graphs import StaticBuffers, clear_static_buffers
from .metrics.timing import LoadMeter, device_name, peak_memory_bytes, percentile, reset_peak, synchronize
from .models import build_model, load_model
from .models.loading import resolve_dtype
from .models.layers import use_fused_projections
from .models.ops import use_fused

# Architecture shapes of the real checkpoints, for timing where the weights are not present.
PRESETS = {
    "llada-8b": {"model_type": "llada", "d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32,
                 "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464,
                 "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 4096,
                 "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081},
    "dream-7b": {"model_type": "Dream", "hidden_size": 3584, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
                 "vocab_size": 152064, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                 "max_position_embeddings": 131072, "mask_token_id": 151666, "eos_token_id": 151643,
                 "pad_token_id": 151643},
    # the CPU comparison shape of issue 20 (d_model 512, 8 layers; LLaDA's vocabulary and 3x MLP)
    "llada-cpu": {"model_type": "llada", "d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 8,
                  "mlp_hidden_size": 1536, "vocab_size": 126464, "embedding_size": 126464,
                  "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 4096,
                  "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081},
    "llada-tiny": {"model_type": "llada", "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 4,
                   "mlp_hidden_size": 160, "vocab_size": 384, "embedding_size": 384,
                   "rope_theta": 500000.0, "max_sequence_length": 4096, "mask_token_id": 383,
                   "eos_token_id": 381, "pad_token_id": 381},
    "dream-tiny": {"model_type": "Dream", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "intermediate_size": 160, "vocab_size": 384,
                   "max_position_embeddings": 4096, "mask_token_id": 383, "eos_token_id": 381,
                   "pad_token_id": 381, "bos_token_id": 380},
}


def median_ms(fn, device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms, after ``warmup`` untimed calls, synchronising the device."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def estimate_bytes(config, batch: int, length: int, dtype: torch.dtype) -> int:
    """Weights + one KV cache + a generous activation allowance (logits in float64 for the block)."""
    item = torch.empty((), dtype=dtype).element_size()
    weights = config.n_params() * item
    kv = 2 * config.n_layers * batch * config.n_kv_heads * length * config.head_dim * item
    acts = batch * length * (4 * config.d_model + 2 * config.mlp_hidden) * item * 2
    logits = batch * length * config.vocab_size * (item + 8)
    return weights + kv + acts + logits


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    n = nbytes // 4
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a), device, warmup=2, repeats=5)
    return 2 * nbytes / (ms / 1e3)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dllm_bench.bench", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint folder or hub id")
    src.add_argument("--random-weights", choices=sorted(PRESETS), help="random model of a known shape")
    src.add_argument("--config", help="config.json of any shape, with random weights")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--caches", default="none,prefix,dual",
                   help="comma-separated cache policies (any of the registry's; 'all' for every one)")
    p.add_argument("--decoding", default="threshold", help="decoding rule (any of the registry's)")
    p.add_argument("--threshold", type=float, default=0.9, help="the threshold rule's threshold")
    p.add_argument("--factor", type=float, default=None, help="the factor rule's factor")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a cache or rule argument (repeatable), e.g. --arg gamma=0.01")
    p.add_argument("--graphs", default="off", choices=["on", "off"],
                   help="static-buffer steps, replayed as CUDA graphs on a GPU (on a CPU: the same path, no capture)")
    p.add_argument("--fused", default="off", choices=["on", "off"],
                   help="torch.compile-fused RMSNorm / RoPE / SwiGLU (see models/ops.py)")
    p.add_argument("--fused-projections", default="on", choices=["on", "off"],
                   help="one matmul for Q/K/V and one for gate/up (off: one per projection, the unfused kernels)")
    p.add_argument("--interleave", action="store_true",
                   help="time the modes round-robin per repeat (medians and IQR; for noisy machines)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--skip-e2e", action="store_true", help="time the steps only, no whole generate")
    return p.parse_args(argv)


def plugin_args(args) -> dict:
    """The rule / cache keyword arguments given on the command line (values parsed as JSON if they can be)."""
    out = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --arg {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    if args.decoding == "threshold":
        out.setdefault("threshold", args.threshold)
    if args.decoding == "factor":
        out.setdefault("factor", args.factor or 1.0)
    return out


def cache_names(args) -> list[str]:
    return list(CACHES) if args.caches == "all" else args.caches.split(",")


def validate(args):
    """(device, the model's ModelConfig or None for a hub id): every option checked, and every cache
    with the rule on that model family, before anything is built."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA GPU is available on this machine")
    for flag in ("batch_size", "prompt_length", "gen_length", "block_length", "repeats"):
        if getattr(args, flag) <= 0:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.gen_length % args.block_length:
        raise SystemExit(f"error: --gen-length {args.gen_length} is not a multiple of --block-length {args.block_length}")
    config = model_config(args)
    try:
        for name in cache_names(args):  # every plugin built once: bad names / arguments / pairs fail here
            pair = build_plugins(name, args.decoding, **plugin_args(args))
            if config and (why := pair_unsupported(*pair, config.arch)):
                raise ValueError(why)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    resolve_dtype(args.dtype)
    return device, config


def model_config(args):
    """The model's ModelConfig from its config alone: a local folder's config.json, a preset or
    ``--config`` (None for a hub id: the engine checks the pairs again once the model is loaded)."""
    from .models.loading import family_of, local_config

    try:
        if args.model:
            return local_config(args.model)
        raw = PRESETS[args.random_weights] if args.random_weights else json.loads(Path(args.config).read_text())
        return family_of(raw).parse_config(raw)
    except (ValueError, OSError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None


def build(args, device, config):
    """The model to time: a checkpoint loaded, or random weights of ``config`` (refused when it would
    not fit the device's memory)."""
    dtype = resolve_dtype(args.dtype)
    if args.model:
        return load_model(args.model, device=device, dtype=dtype), args.model
    need = estimate_bytes(config, args.batch_size, args.prompt_length + args.gen_length, dtype)
    have = available_bytes(device)
    if need > have:
        raise SystemExit(f"error: this model/batch needs about {need / 2**30:.1f} GiB on {device}, "
                         f"only {have / 2**30:.1f} GiB available")
    with torch.device(device):
        model = build_model(config, device=device, dtype=dtype, seed=args.seed)
    return model, f"random:{args.random_weights or args.config}"


def step_window(cache, batch: int, length: int, block_start: int, block_end: int) -> tuple[int, int] | None:
    """[start, end) of the positions a window cache feeds on a later step of the block, or None for
    a policy whose steps are not one window."""
    if not isinstance(cache, WindowCache):
        return None
    L = length
    x = torch.empty((batch, length), dtype=torch.long, device="meta")
    state = DecodeState(model=None, x=x, prompt_len=block_start, gen_length=L - block_start,
                        block_length=block_end - block_start, steps=None, blocked=True, key_mask=None,
                        position_ids=None, start=block_start, end=block_end, step=1)
    return cache.plan(state).window(L)


def step_fn(model, cache, x, block_start: int, block_end: int, graphs: bool):
    """The forward a window cache repeats within a block, after its refresh filled the cache.

    Runs on static buffers; with ``graphs`` on CUDA each call replays a captured graph (on a CPU
    ``graphs`` changes nothing here: the step is the same static-buffer call either way). Returns
    (None, None) for a policy whose steps are not one window (timed end to end only).
    """
    window = step_window(cache, *x.shape, block_start, block_end)
    if window is None:
        return None, None
    B, L = x.shape
    buffers = StaticBuffers(model, B, L, cache.uses_kv, masked=False, capture=graphs and x.device.type == "cuda")
    buffers.load(x, None, None)
    kv, xs = buffers.kv, buffers.x
    if kv is not None:  # the block's refresh
        model(xs, cache=kv, start=0, logits_slice=slice(block_start, block_end))
    start, end = window
    sl = slice(block_start - start, block_end - start)

    def step():
        return (model(xs[:, start:end], cache=kv, start=start, logits_slice=sl),)

    return (lambda: buffers.run("step", step)), buffers


def timing_input(cfg, batch: int, prompt_length: int, gen_length: int, block_length: int, seed: int, device):
    """(prompt, prompt ++ masks, (block start, end)): random prompt tokens and a block in the middle."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, min(cfg.vocab_size, cfg.mask_token_id), (batch, prompt_length), generator=gen).to(device)
    x = torch.cat([prompt, torch.full((batch, gen_length), cfg.mask_token_id, device=device)], 1)
    return prompt, x, block_bounds(prompt_length, gen_length, block_length)


def block_bounds(prompt_length: int, gen_length: int, block_length: int) -> tuple[int, int]:
    """The timed block: the one starting mid-generation (or the first, when that one would overrun)."""
    s = prompt_length + gen_length // 2
    if s + block_length > prompt_length + gen_length:
        s = prompt_length
    return s, s + block_length


def _time_ms(fn, device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def _spread(samples: list[float]) -> dict:
    return {"median": percentile(samples, 50), "q1": percentile(samples, 25), "q3": percentile(samples, 75)}


def _e2e_fields(e2e_s: float, nfe: int, B: int, G: int) -> dict:
    return {"e2e_s": round(e2e_s, 4), "nfe": nfe, "e2e_ms_per_forward": round(e2e_s * 1e3 / nfe, 3),
            "tokens_per_s": round(B * G / e2e_s, 2), "tokens_per_forward": round(G / nfe, 3)}


def _interleaved(model, args, device, x, s, e, prompt, modes) -> tuple[float, list[dict], dict]:
    """(full forward median ms, one row per mode, machine load): every repeat times the full
    forward, each mode's step and each mode's ``generate`` in turn (see the module doc)."""
    B, G, bl = args.batch_size, args.gen_length, args.block_length
    steps, kws = {}, {}
    for name, cache, rule, graphs in modes:
        steps[name] = step_fn(model, cache, x, s, e, graphs and bool(cache.supports_graphs))
        kws[name] = dict(gen_length=G, block_length=bl, steps=G, cache=cache, decoding=rule,
                         graphs=graphs and not graphs_unsupported(cache, rule))
    nfe = {}

    def full():
        model(x, logits_slice=slice(s, e))

    def run(name):
        nfe[name] = generate(model, prompt, **kws[name]).nfe

    timed = [("full", full)] + [(n, fn) for n, (fn, _) in steps.items() if fn is not None]
    if not args.skip_e2e:
        timed += [(f"e2e:{n}", lambda n=n: run(n)) for n in kws]
    samples = {"full": [], **{n: [] for n in steps}, **{f"e2e:{n}": [] for n in kws}}
    for _ in range(args.warmup):  # (and graph capture)
        for _, fn in timed:
            fn()
    with LoadMeter() as load:
        for _ in range(args.repeats):
            for key, fn in timed:
                samples[key].append(_time_ms(fn, device))
    rows = []
    for name, cache, rule, _ in modes:
        row = {"cache": name, "decoding": rule.name, "step_ms": None, "step_ms_iqr": None}
        if samples[name]:
            st = _spread(samples[name])
            row.update(step_ms=round(st["median"], 3), step_ms_iqr=[round(st["q1"], 3), round(st["q3"], 3)],
                       forwards_per_s=round(1e3 / st["median"], 2))
        if samples[f"e2e:{name}"]:
            st = _spread(samples[f"e2e:{name}"])
            row.update(_e2e_fields(st["median"] / 1e3, nfe[name], B, G))
            row["e2e_s_iqr"] = [round(st["q1"] / 1e3, 4), round(st["q3"] / 1e3, 4)]
        row["kv_cache_bytes"] = cache.kv_bytes(model, B, x.shape[1])
        rows.append(row)
    full_spread = _spread(samples["full"])
    for row in rows:
        row["full_forward_ms"] = round(full_spread["median"], 3)
        row["full_forward_ms_iqr"] = [round(full_spread["q1"], 3), round(full_spread["q3"], 3)]
        row["peak_memory_bytes"] = peak_memory_bytes(device)
    del steps
    clear_static_buffers(model)
    return full_spread["median"], rows, load.result()


@torch.no_grad()
def measure(model, args, device) -> dict:
    """Time every cache mode on ``model`` with the shapes in ``args``; the JSON-ready result."""
    cfg = model.config
    B, P, G, bl = args.batch_size, args.prompt_length, args.gen_length, args.block_length
    if P + G > cfg.max_length:
        raise SystemExit(f"error: prompt {P} + gen {G} exceeds the model's maximum length {cfg.max_length}")
    graphs = args.graphs == "on"
    use_fused(model, args.fused == "on")
    use_fused_projections(model, getattr(args, "fused_projections", "on") == "on")
    prompt, x, (s, e) = timing_input(cfg, B, P, G, bl, args.seed, device)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows, load = [], None
    if getattr(args, "interleave", False):
        modes = [(name, *build_plugins(name, args.decoding, **plugin_args(args)), graphs) for name in cache_names(args)]
        reset_peak(device)
        full_ms, rows, load = _interleaved(model, args, device, x, s, e, prompt, modes)
    else:
        full_ms = median_ms(lambda: model(x, logits_slice=slice(s, e)), device, 1, args.repeats)  # not captured
    for name in [] if rows else cache_names(args):
        if device.type == "cuda":
            torch.cuda.empty_cache()
        reset_peak(device)
        cache, rule = build_plugins(name, args.decoding, **plugin_args(args))
        fn, buffers = step_fn(model, cache, x, s, e, graphs and bool(cache.supports_graphs))
        step_ms = median_ms(fn, device, args.warmup, args.repeats) if fn is not None else None
        kv_bytes = cache.kv_bytes(model, B, P + G)
        del fn, buffers
        kw = dict(gen_length=G, block_length=bl, steps=G, cache=cache, decoding=rule,
                  graphs=graphs and not graphs_unsupported(cache, rule))
        row = {"cache": name, "decoding": rule.name, "step_ms": None if step_ms is None else round(step_ms, 3),
               "full_forward_ms": round(full_ms, 3),
               "forwards_per_s": None if step_ms is None else round(1e3 / step_ms, 2), "kv_cache_bytes": kv_bytes}
        if not args.skip_e2e:
            generate(model, prompt, **kw)  # warm-up (and graph capture)
            synchronize(device)
            t0 = time.perf_counter()
            res = generate(model, prompt, **kw)
            synchronize(device)
            row.update(_e2e_fields(time.perf_counter() - t0, res.nfe, B, G))
        row["peak_memory_bytes"] = peak_memory_bytes(device)
        rows.append(row)
        clear_static_buffers(model)
    out = {"bench": "dllm_bench.bench", "arch": cfg.arch, "params": cfg.n_params(),
           "weights_bytes": weights_bytes, "device": str(device), "device_name": device_name(device),
           "dtype": args.dtype, "batch_size": B, "prompt_length": P, "gen_length": G, "block_length": bl,
           "decoding": args.decoding, "graphs": args.graphs, "fused": args.fused,
           "fused_projections": getattr(args, "fused_projections", "on"),
           "interleave": bool(getattr(args, "interleave", False)), "repeats": args.repeats,
           "torch": torch.__version__, "results": rows}
    if load is not None:
        out["machine_load"] = load
    if device.type == "cuda":
        bw = copy_bandwidth(device)
        floor_ms = weights_bytes / bw * 1e3  # the weights must be read once per step (bw counts read + write)
        out["copy_bandwidth_gb_s"] = round(bw / 1e9, 1)
        out["bandwidth_floor_ms"] = round(floor_ms, 3)
        for r in rows:
            r["ratio_to_floor"] = None if r["step_ms"] is None else round(r["step_ms"] / floor_ms, 2)
    return out


def run(args) -> dict:
    device, config = validate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, source = build(args, device, config)
    return {"model": source, **measure(model, args, device)}


def print_table(out: dict) -> None:
    cols = ["cache", "step_ms", "full_forward_ms", "forwards_per_s", "nfe", "e2e_ms_per_forward",
            "tokens_per_s", "kv_cache_bytes", "peak_memory_bytes"]
    if out.get("interleave"):
        cols[2:2] = ["step_ms_iqr"]
        cols.insert(cols.index("tokens_per_s"), "e2e_s_iqr")
    if "bandwidth_floor_ms" in out:
        cols.append("ratio_to_floor")
    print(f"# {out['model']} on {out['device_name']} ({out['dtype']}, graphs {out['graphs']}, "
          f"fused {out.get('fused', 'off')}, fused projections {out.get('fused_projections', 'on')}), batch {out['batch_size']}, "
          f"prompt {out['prompt_length']}, gen {out['gen_length']}, block {out['block_length']}"
          + (f"; interleaved, {out['repeats']} repeats, load {out['machine_load']}" if out.get("interleave") else ""))
    print(" | ".join(cols))
    for r in out["results"]:
        print(" | ".join(str(r.get(c, "")) for c in cols))


def main(argv=None) -> int:
    out = run(parse_args(argv))
    print_table(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
