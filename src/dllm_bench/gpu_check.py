"""One GPU session's worth of checks: equivalence on the device, then timings, as one JSON file.

    python -m dllm_bench.gpu_check --fixtures ../shared/fixtures --out gpu_check.json

Needs only torch (no Hydra, W&B or weights): the timed model is a random LLaDA-8B-shaped model in
bfloat16. Steps, in order, each skipped with a note if the time budget runs short:
1. the golden cases of every fixture (float32) on the device, eager and with graphs;
2. graphs vs eager tokens for the 8B shape in bfloat16 (short generation);
3. per-forward latency of each cache mode, batch 1 / 8 / 32, graphs off / on;
4. end-to-end tokens/s at batch 1 (threshold decoding: random weights accept one token per step);
5. floors: weights bytes / measured copy bandwidth, and 2 * params * tokens / measured matmul rate.
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
from .decoding import generate
from .models import build_model, load_model
from .models.loading import family_of


def case_kwargs(case: dict) -> dict:
    """``generate`` keyword arguments for one case of a fixture's golden.json (LLaDA or Dream)."""
    kw = dict(gen_length=case["gen_length"], block_length=case["block_length"], steps=case["steps"],
              cache=case["cache"])
    if case.get("alg", "confidence_threshold" if case.get("threshold") is not None else None) == "confidence_threshold":
        kw.update(decoding="threshold", threshold=case["threshold"])
    elif case.get("factor") is not None:
        kw.update(decoding="factor", factor=case["factor"])
    else:
        kw.update(decoding="fixed")
    return kw


def golden_cases(fixtures: Path, device, graphs: bool) -> dict:
    out = {}
    for folder in sorted(p for p in fixtures.iterdir() if (p / "golden.json").exists()):
        golden = json.loads((folder / "golden.json").read_text())
        model = load_model(folder, device=device, dtype=torch.float32)
        ok = 0
        for case in golden["cases"]:
            res = generate(model, torch.tensor([case["prompt_ids"]]), graphs=graphs, **case_kwargs(case))
            ok += res.tokens[0].tolist() == case["expected_tokens"] and res.nfe == case.get("expected_nfe", res.nfe)
        out[folder.name] = {"match": ok, "cases": len(golden["cases"])}
    return out


def matmul_tflops(device, dtype=torch.bfloat16, n=8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = bench.median_ms(lambda: a @ b, device, warmup=3, repeats=10)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


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
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA GPU is available on this machine")
    report: dict = {"device_name": bench.device_name(device), "torch": torch.__version__,
                    "preset": args.preset, "notes": []}

    def elapsed():
        return time.perf_counter() - t_start

    def save():
        report["wall_s"] = round(elapsed(), 1)
        Path(args.out).write_text(json.dumps(report, indent=1))

    if args.fixtures:
        report["golden_eager"] = golden_cases(Path(args.fixtures), device, graphs=False)
        report["golden_graphs"] = golden_cases(Path(args.fixtures), device, graphs=True)
        save()

    raw = bench.PRESETS[args.preset]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(family_of(raw).parse_config(raw), device=device, dtype=dtype, seed=0)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(1000, model.config.mask_token_id), (2, 64), generator=g).to(device)
    agree = {}
    n = min(64, args.gen_length)
    for cache in ("none", "prefix", "dual"):
        kw = dict(gen_length=n, block_length=min(32, n), steps=n, cache=cache, decoding="fixed")
        a = generate(model, prompt, **kw).tokens
        b = generate(model, prompt, graphs=True, **kw).tokens
        agree[cache] = bool(torch.equal(a, b))
    report["bf16_graphs_equal_eager"] = agree
    save()

    timings = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for graphs in ("off", "on"):
            if elapsed() > args.budget_s:
                report["notes"].append(f"skipped batch {batch} graphs {graphs}: time budget")
                continue
            ns = SimpleNamespace(batch_size=batch, prompt_length=args.prompt_length, gen_length=args.gen_length,
                                 block_length=args.block_length, caches="none,prefix,dual", decoding="threshold",
                                 threshold=0.9, factor=None, graphs=graphs if device.type == "cuda" else "off",
                                 warmup=min(3, args.repeats), repeats=args.repeats, seed=0, dtype=str(dtype).replace("torch.", ""),
                                 skip_e2e=batch != 1)
            try:
                timings.append(bench.measure(model, ns, device))
            except torch.cuda.OutOfMemoryError as err:  # pragma: no cover - GPU only
                report["notes"].append(f"batch {batch} graphs {graphs}: out of memory ({err})")
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
