"""One GPU session's worth of checks: equivalence on the device, then timings, as one JSON file.

    python -m dllm_bench.gpu_check --fixtures ../shared/fixtures --out gpu_check.json

Needs only torch (no Hydra, W&B or weights): the timed model is a random LLaDA-8B-shaped model in
bfloat16. Each variant (``--variants``: eager, graphs, fused, graphs+fused; see ``decoding/graphs.py``
and ``models/ops.py``) goes through, in order (timings skipped with a note past ``--budget-s``; a
failing piece becomes a note, not a lost run):
1. the golden cases of every fixture (float32) on the device;
2. the variant's tokens vs the eager path's for the 8B shape in bfloat16 (short generation), and
   whether each row of the eager batch of 2 equals its batch-of-1 run;
3. a kernel profile of one eager / fused dual and prefix step (kernels, kernel time, top kernels);
4. per-forward latency of each cache mode, batch 1 / 8 / 32;
5. end-to-end tokens/s at batch 1 (threshold decoding: random weights accept one token per step);
6. floors: weights bytes / measured copy bandwidth, and 2 * params * tokens / measured matmul rate.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import bench
from . import replay
from .decoding import CACHES, build_plugins, generate, graphs_unsupported
from .decoding.graphs import clear_static_buffers
from .models import build_model, load_model
from .metrics.timing import synchronize
from .models.loading import family_of
from .models.ops import use_fused


VARIANTS = {"eager": (False, False), "graphs": (True, False), "fused": (False, True), "graphs+fused": (True, True)}


def parse_variants(text: str) -> dict:
    """``"eager,graphs+fused"`` -> {name: (graphs, fused)}; unknown names are an error."""
    names = [v for v in text.split(",") if v]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SystemExit(f"error: unknown variant {bad[0] if bad else text!r} in --variants; valid: {', '.join(VARIANTS)}")
    return {v: VARIANTS[v] for v in names}


def guarded(report: dict, what: str, fn) -> None:
    """Run ``fn``; a failure becomes a note (one failing piece must not cost the run's other numbers)."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - recorded, and the check goes on
        report["notes"].append(f"{what} failed: {type(err).__name__}: {str(err)[:300]}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def golden_cases(fixtures: Path, device, graphs: bool, fused: bool = False) -> dict:
    """Every golden file under ``fixtures`` replayed on ``device`` (float32). Method files whose
    plugins have no static path are replayed only when ``graphs`` is off."""
    out = {}
    files = sorted(fixtures.glob("*/golden.json")) + sorted(fixtures.glob("methods/*.json"))
    models: dict = {}
    for path in files:
        data = replay.load(path)
        adapter = replay.adapter_for(data, path)
        ok = n = 0
        for case in data["cases"]:
            name = case.get("checkpoint") or data.get("checkpoint")
            if name not in models:
                models[name] = use_fused(load_model(fixtures / name, device=device, dtype=torch.float32), fused)
            kw = adapter(case)
            if graphs and graphs_unsupported(*build_plugins(kw["cache"], kw["decoding"])):
                continue
            n += 1
            ok += replay.run_case(models[name], case, adapter, graphs=graphs).ok
        if n:
            out[f"{path.parent.name}/{path.stem}" if path.parent.name == "methods" else path.parent.name] = \
                {"match": ok, "cases": n}
    return out


def matmul_tflops(device, dtype=torch.bfloat16, n=8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = bench.median_ms(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def kernel_profile(model, device, batch: int, prompt_length: int, gen_length: int, block_length: int,
                   cache: str = "dual", calls: int = 3) -> dict:
    """Where one eager step's GPU time goes: kernels per step, summed kernel time, the top kernels.

    Kernel time far below the step's wall time means launch/Python overhead (what graphs remove);
    kernel time near it means the GPU itself is the limit (fusion or fewer kernels would help).
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    _, x, (s, e) = bench.timing_input(model.config, batch, prompt_length, gen_length, block_length, 0, device)
    fn, buffers = bench.step_fn(model, CACHES.build(cache), x, s, e, graphs=False)
    fn(), fn()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)

    def self_us(e) -> float:  # (CPU: operators stand in for kernels)
        if not cuda:
            return e.self_cpu_time_total
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    kernels = sorted(((e.key, self_us(e) / calls / 1e3, e.count / calls) for e in prof.key_averages()
                      if self_us(e) > 0), key=lambda k: -k[1])
    del fn, buffers
    return {"cache": cache, "batch_size": batch, "kernels_per_step": round(sum(k[2] for k in kernels), 1),
            "kernel_ms_per_step": round(sum(k[1] for k in kernels), 3),
            "top": [{"kernel": k[0][:90], "ms_per_step": round(k[1], 3), "per_step": k[2]} for k in kernels[:10]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dllm_bench.gpu_check")
    p.add_argument("--fixtures", default=None, help="folder of fixture checkpoints with golden.json")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="llada-8b", choices=sorted(bench.PRESETS))
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt-length", type=int, default=768)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip remaining timings past this")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--variants", default="eager,graphs,graphs+fused",
                   help=f"comma list of {', '.join(VARIANTS)}: each is timed, golden-checked, compared with eager")
    p.add_argument("--profile", action="store_true", help="kernel profile on CPU too (always on CUDA)")
    args = p.parse_args(argv)
    parse_variants(args.variants)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA GPU is available on this machine")
    report: dict = {"device_name": bench.device_name(device), "torch": torch.__version__,
                    "preset": args.preset, "notes": []}
    if device.type == "cuda":
        b = torch.backends.cuda
        report["sdpa_backends_enabled"] = {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
                                           "cudnn": b.cudnn_sdp_enabled(), "math": b.math_sdp_enabled()}

    def elapsed():
        return time.perf_counter() - t_start

    def save():
        report["wall_s"] = round(elapsed(), 1)
        Path(args.out).write_text(json.dumps(report, indent=1))

    variants = parse_variants(args.variants)
    if args.fixtures:
        for name, (graphs, fused) in variants.items():
            guarded(report, f"golden {name}", lambda: report.__setitem__(
                f"golden_{name}", golden_cases(Path(args.fixtures), device, graphs=graphs, fused=fused)))
        save()

    raw = bench.PRESETS[args.preset]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(family_of(raw).parse_config(raw), device=device, dtype=dtype, seed=0)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(1000, model.config.mask_token_id), (2, 64), generator=g).to(device)
    n = min(64, args.gen_length)
    kws = {cache: dict(gen_length=n, block_length=min(32, n), steps=n, cache=cache, decoding="fixed")
           for cache in ("none", "prefix", "dual")}
    use_fused(model, False)
    eager = {cache: generate(model, prompt, **kw).tokens for cache, kw in kws.items()}
    report["batch_invariant_eager"] = {  # each row of the batch of 2 equals its batch-of-1 run
        cache: all(torch.equal(eager[cache][i:i + 1], generate(model, prompt[i:i + 1], **kw).tokens)
                   for i in range(prompt.shape[0])) for cache, kw in kws.items()}
    report["tokens_equal_eager"] = {}
    for name, (graphs, fused) in variants.items():
        if name == "eager":
            continue

        def agree(graphs=graphs, fused=fused, name=name):
            use_fused(model, fused)
            report["tokens_equal_eager"][name] = {
                cache: bool(torch.equal(eager[cache], generate(model, prompt, graphs=graphs, **kw).tokens))
                for cache, kw in kws.items()}
        guarded(report, f"agreement {name}", agree)
    use_fused(model, False)
    clear_static_buffers(model)  # so the timings' peak memory holds no buffers of these checks
    save()
    if device.type == "cuda" or args.profile:
        profiles = []
        for fused in sorted({f for _, f in variants.values()}):
            def prof(fused=fused):
                use_fused(model, fused)
                profiles.extend(kernel_profile(model, device, 1, args.prompt_length, args.gen_length,
                                               args.block_length, cache) | {"fused": fused}
                                for cache in ("dual", "prefix"))
            guarded(report, f"kernel profile fused={fused}", prof)
        report["kernel_profile"] = profiles
        save()

    timings = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for name, (graphs, fused) in variants.items():
            if elapsed() > args.budget_s:
                report["notes"].append(f"skipped batch {batch} {name}: time budget")
                continue
            ns = SimpleNamespace(batch_size=batch, prompt_length=args.prompt_length, gen_length=args.gen_length,
                                 block_length=args.block_length, caches="none,prefix,dual", decoding="threshold",
                                 threshold=0.9, factor=None, arg=[], graphs="on" if graphs and device.type == "cuda" else "off",
                                 fused="on" if fused else "off", warmup=min(3, args.repeats), repeats=args.repeats,
                                 seed=0, dtype=str(dtype).replace("torch.", ""), skip_e2e=batch != 1)
            guarded(report, f"batch {batch} {name}", lambda: timings.append(bench.measure(model, ns, device)))
            report["timings"] = timings
            save()

    if device.type == "cuda":
        tflops = matmul_tflops(device)
        tokens = args.prompt_length + args.gen_length
        report["matmul_tflops"] = round(tflops, 1)
        report["full_forward_compute_floor_ms"] = round(2 * model.config.n_params() * tokens / (tflops * 1e12) * 1e3, 3)
    save()
    for t in timings:
        bench.print_table({"model": args.preset, **t})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
