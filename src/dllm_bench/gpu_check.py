"""One GPU session's worth of checks: equivalence on the device, then timings, as one JSON file.

    python -m dllm_bench.gpu_check --fixtures ../shared/fixtures --out gpu_check.json

Needs only torch (no Hydra, W&B or weights): the timed models are random LLaDA-8B- and
Dream-7B-shaped models (``--presets``) in bfloat16. A variant (``--variants``) is a set of kernel
switches joined by "+": ``graphs`` (static buffers, CUDA graphs; ``decoding/graphs.py``),
``fused`` (compiled RMSNorm / RoPE / SwiGLU and confidence; ``models/ops.py``) and ``split`` (one
matmul per projection, as before the fused QKV / gate-up; ``models/layers.py``); ``eager`` is none
of them and the reference. In order (each section past ``--budget-s`` is skipped with a note; a
failing piece becomes a note, not a lost run; ``section_s`` records what each took):
1. the golden cases of every fixture (float32) on the device: eager and every variant without
   ``split`` (method files only where their plugin is registered; graphs only where supported);
2. bf16 tokens of every variant vs eager on the first preset (short generation), and whether
   each row of the eager batch of 2 equals its batch-of-1 run;
3. per-forward latency of the prefix / dual steps and the full forward, batch 1 / 8 / 32, every
   variant and preset, with end-to-end tokens/s at batch 1 and each step's floors (below);
4. kernel profiles: one eager-launched step per variant's kernels at batch 1, and at batch 32
   for the last variant;
5. ``predict``'s confidence at batch 1 / 8 / 32: eager vs fused, time and agreement;
6. the method table: every registered cache x rule (``CACHES`` x ``RULES``, each plugin's
   ``example_args``), on every preset with the last variant (graphs where the pair allows):
   NFE, ms per forward, tokens/s, and bf16 batch invariance (row 0 of a padded batch of 2 vs
   batch 1); pairs the engine refuses (ValueError) are listed as refused.
Floors: weights bytes / measured copy bandwidth, and the step's FLOPs (matmuls and attention)
/ measured bf16 matmul rate; ``floor_ms`` is the larger.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from . import bench, replay
from .decoding import CACHES, RULES, build_plugins, generate, graphs_unsupported
from .decoding.confidence import predict
from .decoding.graphs import clear_static_buffers
from .method_table import method_row, ordered_pairs
from .metrics.timing import synchronize
from .models import build_model, load_model
from .models.layers import use_fused_projections
from .models.loading import family_of
from .models.ops import use_fused

FLAGS = ("graphs", "fused", "split")
EAGER = {f: False for f in FLAGS}
SECTIONS = ("golden", "agreement", "timings", "profile", "confidence", "methods")


def parse_variants(text: str) -> dict[str, dict]:
    """``"graphs+fused,graphs+fused+split"`` -> {name: {graphs, fused, split}}; unknown names are an error."""
    out = {}
    for name in [v for v in text.split(",") if v]:
        parts = [] if name == "eager" else name.split("+")
        if any(p not in FLAGS for p in parts) or len(set(parts)) != len(parts):
            raise SystemExit(f"error: unknown variant {name!r} in --variants; valid: eager, or any of "
                             f"{', '.join(FLAGS)} joined by '+'")
        out[name] = {f: f in parts for f in FLAGS}
    if not out:
        raise SystemExit(f"error: no variant in --variants {text!r}")
    return out


def configure(model, v: dict):
    """Switch ``model`` to a variant's kernels (graphs are a ``generate`` argument); returns it."""
    clear_static_buffers(model)
    use_fused_projections(use_fused(model, v["fused"]), not v["split"])
    return model


class Run:
    """The report being written, the clock, the budget and the notes."""

    def __init__(self, out: Path, budget_s: float, report: dict):
        self.out, self.budget_s, self.report = out, budget_s, report
        self.t0 = time.perf_counter()
        report.setdefault("notes", [])
        report.setdefault("section_s", {})

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self, what: str) -> bool:
        if self.elapsed() <= self.budget_s:
            return False
        self.report["notes"].append(f"skipped {what}: time budget")
        return True

    def guarded(self, what: str, fn) -> None:
        """Run ``fn``; a failure becomes a note (one failing piece must not cost the run's other numbers)."""
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - recorded, and the check goes on
            self.report["notes"].append(f"{what} failed: {type(err).__name__}: {str(err)[:300]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def section(self, name: str, fn) -> None:
        t = time.perf_counter()
        if not self.over(name):
            self.guarded(name, fn)
        self.report["section_s"][name] = round(time.perf_counter() - t, 1)
        self.save()

    def save(self) -> None:
        self.report["wall_s"] = round(self.elapsed(), 1)
        self.out.write_text(json.dumps(self.report, indent=1))


def graphs_refusal(kw: dict) -> str | None:
    """Why a golden case's ``generate`` arguments cannot take the static path (None: they can)."""
    names = set()
    for registry, spec in ((CACHES, kw["cache"]), (RULES, kw["decoding"])):
        if isinstance(spec, str):
            names |= set(registry[spec].arg_names())
    args = {k: v for k, v in kw.items() if k in names}
    return graphs_unsupported(*build_plugins(kw["cache"], kw["decoding"], **args), kw.get("cfg_scale", 0.0))


def golden_cases(fixtures: Path, device, v: dict, notes: list) -> dict:
    """Every golden file under ``fixtures`` replayed on ``device`` (float32) with variant ``v``.
    Method files whose plugin is not registered are noted and skipped; with graphs, cases whose
    plugins have no static path are skipped."""
    out = {}
    files = sorted(fixtures.glob("*/golden.json")) + sorted(fixtures.glob("methods/*.json"))
    models: dict = {}
    for path in files:
        data = replay.load(path)
        try:
            adapter = replay.adapter_for(data, path)
        except SystemExit:  # a method whose plugin is not on this branch
            notes.append(f"golden {path.parent.name}/{path.name}: no registered plugin replays it")
            continue
        ok = n = 0
        for case in data["cases"]:
            name = case.get("checkpoint") or data.get("checkpoint")
            if name not in models:
                models[name] = configure(load_model(fixtures / name, device=device, dtype=torch.float32), v)
            if v["graphs"] and graphs_refusal(adapter(case)):
                continue
            n += 1
            ok += replay.run_case(models[name], case, adapter, graphs=v["graphs"]).ok
        if n:
            out[f"{path.parent.name}/{path.stem}" if path.parent.name == "methods" else path.parent.name] = \
                {"match": ok, "cases": n}
    return out


def matmul_tflops(device, dtype=torch.bfloat16, n=8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = bench.median_ms(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def step_flops(cfg, batch: int, fed: int, attended: int, logit_rows: int) -> float:
    """Matmul FLOPs of one forward feeding ``fed`` tokens per row that attend over ``attended``
    keys, projecting ``logit_rows`` rows to logits (the embedding lookup is free)."""
    d, hd = cfg.d_model, cfg.head_dim
    per_token = 2 * cfg.n_layers * (2 * d * d + 2 * d * cfg.n_kv_heads * hd + 3 * d * cfg.mlp_hidden)
    attention = 4 * cfg.n_layers * cfg.n_heads * hd * fed * attended
    return batch * (per_token * fed + attention + 2 * cfg.vocab_size * d * logit_rows)


def add_floors(timing: dict, cfg, tflops: float | None) -> None:
    """Each row's compute floor (its counted FLOPs at the measured rate) and ``floor_ms`` = max(bandwidth
    floor, compute floor), with ratios. The full forward gets both its counted-FLOPs floor and
    ``full_forward_compute_floor_ms`` = 2 x params x tokens (the definition of runs 1-3 and issue #18,
    which counts the embedding and the LM head on every token, so ~10% higher)."""
    B, P, G, bl = timing["batch_size"], timing["prompt_length"], timing["gen_length"], timing["block_length"]
    L = P + G
    s, e = bench.block_bounds(P, G, bl)
    if tflops:
        timing["full_forward_compute_floor_ms"] = round(2 * cfg.n_params() * B * L / (tflops * 1e12) * 1e3, 3)
        timing["full_forward_flop_floor_ms"] = round(step_flops(cfg, B, L, L, e - s) / (tflops * 1e12) * 1e3, 3)
    for r in timing["results"]:
        window = bench.step_window(CACHES.build(r["cache"]), B, L, s, e)
        if window is None or not tflops:
            continue
        compute = step_flops(cfg, B, window[1] - window[0], L, e - s) / (tflops * 1e12) * 1e3
        r["compute_floor_ms"] = round(compute, 3)
        floor = max(compute, timing.get("bandwidth_floor_ms") or 0.0)
        r["floor_ms"] = round(floor, 3)
        if r.get("step_ms"):
            r["ratio_to_compute_floor"] = round(r["step_ms"] / compute, 2)
            r["ratio_to_floor_ms"] = round(r["step_ms"] / floor, 2)


def kernel_profile(model, device, batch: int, prompt_length: int, gen_length: int, block_length: int,
                   cache: str = "dual", calls: int = 3) -> dict:
    """Where one eager-launched step's GPU time goes: kernels per step, summed kernel time, the top kernels.

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
            "top": [{"kernel": k[0][:90], "ms_per_step": round(k[1], 3), "per_step": k[2]} for k in kernels[:12]]}


def confidence_timings(cfg, device, batches, fused: bool, block: int) -> list[dict]:
    """``predict`` on (B, block, V) bf16 logits of the preset's vocabulary: eager vs fused ms, and
    whether the fused one picks the same tokens with the same float64 probabilities (max relative gap)."""
    rows = []
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kw = dict(mask_id=cfg.mask_token_id, score="prob", fp64=True, temperature=0.0, remasking="low_confidence",
              generator=None)
    for B in batches:
        logits = (torch.randn(B, block, cfg.vocab_size, device=device) * 4).to(dtype)
        row = {"batch_size": B, "vocab": cfg.vocab_size,
               "eager_ms": round(bench.median_ms(lambda: predict(logits, **kw), device, 2, 10), 4)}
        if fused:
            row["fused_ms"] = round(bench.median_ms(lambda: predict(logits, fused=True, **kw), device, 2, 10), 4)
            (x0, conf), (fx0, fconf) = predict(logits, **kw), predict(logits, fused=True, **kw)
            row["same_tokens"] = bool(torch.equal(x0, fx0))
            row["max_relative_gap"] = float(((fconf - conf).abs() / conf).max())
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dllm_bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--fixtures", default=None, help="folder of fixture checkpoints with golden.json")
    p.add_argument("--out", default="gpu_check.json")
    p.add_argument("--device", default="cuda")
    p.add_argument("--presets", default="llada-8b,dream-7b", help=f"comma list of {', '.join(bench.PRESETS)}")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt-length", type=int, default=768)
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip remaining sections / rows past this")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--variants", default="graphs+fused+split,graphs+fused",
                   help="comma list of variants (eager, or graphs / fused / split joined by '+'); the last one "
                        "runs the method table")
    p.add_argument("--methods-prompt-length", type=int, default=768)
    p.add_argument("--methods-gen-length", type=int, default=64)
    p.add_argument("--profile", action="store_true", help="kernel profiles on CPU too (always on CUDA)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma list of the sections to run (default all: {', '.join(SECTIONS)})")
    return p


def check_args(args) -> tuple[dict, list[str], list[str]]:
    """(variants, presets, sections) from the command line; a bad name is a one-line error."""
    variants = parse_variants(args.variants)
    for flag, given, valid in (("presets", args.presets, bench.PRESETS), ("sections", args.sections, SECTIONS)):
        names = [x for x in given.split(",") if x]
        bad = next((x for x in names if x not in valid), None if names else given)
        if bad is not None:
            raise SystemExit(f"error: unknown {flag[:-1]} {bad!r} in --{flag}; valid: {', '.join(valid)}")
    return variants, [x for x in args.presets.split(",") if x], [x for x in args.sections.split(",") if x]


def goldens(c) -> None:
    for name, v in {"eager": EAGER, **c.variants}.items():
        if not v["split"] and not c.run.over(f"golden {name}"):
            c.report[f"golden_{name}"] = golden_cases(Path(c.args.fixtures), c.device, v, c.report["notes"])
            c.run.save()


def agreement(c) -> None:
    """bf16 tokens of each variant vs eager on the first preset; eager batch invariance."""
    model = c.models[c.presets[0]]
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(1000, model.config.mask_token_id), (2, 64), generator=g).to(c.device)
    n = min(64, c.args.gen_length)
    kws = {cache: dict(gen_length=n, block_length=min(32, n), steps=n, cache=cache, decoding="fixed")
           for cache in ("none", "prefix", "dual")}
    configure(model, EAGER)
    ref = {cache: generate(model, prompt, **kw).tokens for cache, kw in kws.items()}
    c.report["batch_invariant_eager"] = {  # each row of the batch of 2 equals its batch-of-1 run
        cache: all(torch.equal(ref[cache][i:i + 1], generate(model, prompt[i:i + 1], **kw).tokens)
                   for i in range(prompt.shape[0])) for cache, kw in kws.items()}
    agree = c.report["tokens_equal_eager"] = {}
    for vname, v in c.variants.items():
        def one(v=v, vname=vname):
            configure(model, v)
            agree[vname] = {cache: bool(torch.equal(ref[cache], generate(model, prompt, graphs=v["graphs"], **kw).tokens))
                            for cache, kw in kws.items()}
        c.run.guarded(f"agreement {vname}", one)
    configure(model, EAGER)


def timings(c, preset: str) -> None:
    """prefix / dual step and full forward at each batch, each variant; end to end at batch 1."""
    model, a = c.models[preset], c.args
    out = c.report.setdefault("timings", [])
    for batch in c.batches:
        for vname, v in c.variants.items():
            if c.run.over(f"timing {preset} batch {batch} {vname}"):
                continue
            repeats = a.repeats if batch == 1 else max(3, a.repeats // 3)
            ns = SimpleNamespace(batch_size=batch, prompt_length=a.prompt_length, gen_length=a.gen_length,
                                 block_length=a.block_length, caches="prefix,dual", decoding="threshold",
                                 threshold=0.9, factor=None, arg=[], graphs="on" if v["graphs"] and c.cuda else "off",
                                 fused="on" if v["fused"] else "off", fused_projections="off" if v["split"] else "on",
                                 warmup=min(3, repeats), repeats=repeats, seed=0, interleave=False,
                                 dtype=str(c.dtype).replace("torch.", ""), skip_e2e=batch != 1)

            def one(ns=ns, vname=vname, v=v):
                configure(model, v)
                t = {"model": preset, "variant": vname, **bench.measure(model, ns, c.device)}
                add_floors(t, model.config, c.report.get("matmul_tflops"))
                out.append(t)
            c.run.guarded(f"timing {preset} batch {batch} {vname}", one)
            c.run.save()


def profiles(c) -> None:
    model, a = c.models[c.presets[0]], c.args
    out = c.report.setdefault("kernel_profile", [])
    for vname, v in c.variants.items():
        configure(model, v)
        for cache in ("dual", "prefix"):
            out.append(kernel_profile(model, c.device, 1, a.prompt_length, a.gen_length, a.block_length, cache)
                       | {"variant": vname})
        c.run.save()
    configure(model, c.best)
    out.append(kernel_profile(model, c.device, max(c.batches), a.prompt_length, a.gen_length, a.block_length, "dual")
               | {"variant": c.best_name})
    configure(model, EAGER)


def methods(c) -> None:
    table = c.report.setdefault("methods", [])
    g = torch.Generator().manual_seed(1)
    P, G = c.args.methods_prompt_length, c.args.methods_gen_length
    shape = dict(gen_length=G, block_length=min(c.args.block_length, G), steps=G)
    c.report["methods_shape"] = {"prompt_length": P, **shape, "variant": c.best_name}
    for model in c.models.values():
        configure(model, c.best)
    for cache, rule in ordered_pairs():
        for preset, model in c.models.items():
            if c.run.over(f"method {preset} {cache} x {rule}"):
                continue
            hi = min(1000, model.config.mask_token_id)
            prompts = [torch.randint(0, hi, (n,), generator=g) for n in (P, max(1, P - 37))]  # moved by generate
            c.run.guarded(f"method {preset} {cache} x {rule}", lambda model=model, preset=preset: table.append(
                method_row(model, preset, cache, rule, prompts, shape, c.best["graphs"], c.device)))
        c.run.save()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    variants, presets, sections = check_args(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA GPU is available on this machine")
    cuda = device.type == "cuda"
    report: dict = {"device_name": bench.device_name(device), "torch": torch.__version__, "presets": presets,
                    "variants": list(variants), "sections": sections,
                    "registered": {"caches": list(CACHES), "rules": list(RULES)}}
    if cuda:
        b = torch.backends.cuda
        report["sdpa_backends_enabled"] = {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
                                           "cudnn": b.cudnn_sdp_enabled(), "math": b.math_sdp_enabled()}
    c = SimpleNamespace(args=args, device=device, cuda=cuda, variants=variants, presets=presets, report=report,
                        batches=[int(b) for b in args.batches.split(",")], best_name=list(variants)[-1],
                        best=variants[list(variants)[-1]], dtype=torch.bfloat16 if cuda else torch.float32,
                        run=Run(Path(args.out), args.budget_s, report))
    if args.fixtures and "golden" in sections:
        c.run.section("golden", lambda: goldens(c))
    c.models = {}
    for name in presets:
        raw = bench.PRESETS[name]
        c.models[name] = build_model(family_of(raw).parse_config(raw), device=device, dtype=c.dtype, seed=0)
    if "agreement" in sections:
        c.run.section("agreement", lambda: agreement(c))
    if "timings" in sections:
        if cuda:
            c.run.section("floors", lambda: report.update(matmul_tflops=round(matmul_tflops(device), 1)))
        for preset in presets:
            c.run.section(f"timings {preset}", lambda preset=preset: timings(c, preset))
    if (cuda or args.profile) and "profile" in sections:
        c.run.section("kernel_profile", lambda: profiles(c))
    if "confidence" in sections:
        c.run.section("confidence", lambda: report.update(confidence=confidence_timings(
            c.models[presets[0]].config, device, c.batches, any(v["fused"] for v in variants.values()),
            args.block_length)))
    if "methods" in sections:
        c.run.section("methods", lambda: methods(c))
    for t in report.get("timings", []):
        bench.print_table(t)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
