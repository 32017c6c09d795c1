"""dllm-bench vs the Fast-dLLM reference code on the CPU: ms per forward, interleaved, same weights.

    python scripts/compare_reference.py --reference /path/to/Fast-dLLM/llada --preset llada-cpu \
        --threads 2 --rounds 5

The reference (NVlabs/Fast-dLLM, its ``llada/`` folder: ``generate.py`` and ``model/``) is not part
of this project: point ``--reference`` at a checkout, in an environment that has what it imports
(transformers 4.46.x, einops) plus dllm-bench. A random LLaDA checkpoint of the preset's shape is
written once in the official format and loaded by both sides; each round runs one end-to-end
generate per side and cache mode, alternating the side that goes first, after a warm-up round.
Prints per mode the median (and min-max) ms per forward of each side, their ratio, and the tokens
(they must agree), then one JSON line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from dllm_bench import build_model, generate, load_model, save_model
from dllm_bench.bench import PRESETS
from dllm_bench.metrics.timing import device_name

REFERENCE_FN = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}


def reference_side(folder: Path, path: str):
    sys.path.insert(0, str(Path(path).resolve()))
    gen = importlib.import_module("generate")
    model = importlib.import_module("model.modeling_llada").LLaDAModelLM.from_pretrained(
        str(folder), torch_dtype=torch.float32).eval()
    return gen, model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, help="the Fast-dLLM checkout's llada/ folder")
    p.add_argument("--preset", default="llada-cpu", choices=sorted(PRESETS))
    p.add_argument("--vocab-size", type=int, default=None,
                   help="replace the preset's vocabulary (mask id = vocab - 1, EOS/pad = vocab - 2)")
    p.add_argument("--modes", default="none,prefix,dual")
    p.add_argument("--prompt-length", type=int, default=128)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    raw = dict(PRESETS[args.preset])
    if args.vocab_size:
        v = args.vocab_size
        raw.update(vocab_size=v, embedding_size=v, mask_token_id=v - 1, eos_token_id=v - 2, pad_token_id=v - 2)
    with tempfile.TemporaryDirectory() as tmp:
        save_model(build_model(raw, seed=args.seed), tmp)
        ours = load_model(tmp)
        gen, ref = reference_side(Path(tmp), args.reference)
    cfg = ours.config
    g = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(0, cfg.mask_token_id, (1, args.prompt_length), generator=g)
    G, bl = args.gen_length, args.block_length
    kw = dict(gen_length=G, block_length=bl, steps=G // bl, threshold=args.threshold)

    def run_ours(mode):
        t0 = time.perf_counter()
        res = generate(ours, prompt, cache=mode, decoding="threshold", **kw)
        return time.perf_counter() - t0, res.nfe, res.tokens[0].tolist()

    def run_ref(mode):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = getattr(gen, REFERENCE_FN[mode])(ref, prompt, mask_id=cfg.mask_token_id, **kw)
        dt = time.perf_counter() - t0
        x, nfe = out if isinstance(out, tuple) else (out, None)
        return dt, nfe, x[0, args.prompt_length:].tolist()

    modes = args.modes.split(",")
    sides = {"dllm_bench": run_ours, "reference": run_ref}
    times = {m: {s: [] for s in sides} for m in modes}
    tokens = {m: {} for m in modes}
    for r in range(args.rounds + 1):  # round 0 warms up
        for m in modes:
            order = list(sides) if r % 2 else list(sides)[::-1]
            for s in order:
                dt, nfe, toks = sides[s](m)
                if r:
                    times[m][s].append(1e3 * dt / nfe)
                tokens[m][s] = toks
    rows = []
    print(f"# {args.preset} (vocab {cfg.vocab_size}) on {device_name('cpu')}, prompt {args.prompt_length}, gen {G}, block {bl}, "
          f"threshold {args.threshold}, {args.rounds} interleaved rounds: ms per forward, median (min-max)")
    for m in modes:
        a, b = times[m]["dllm_bench"], times[m]["reference"]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        same = tokens[m]["dllm_bench"] == tokens[m]["reference"]
        rows.append({"cache": m, "dllm_bench_ms": statistics.median(a), "reference_ms": statistics.median(b),
                     "dllm_bench_ms_all": [round(v, 3) for v in a], "reference_ms_all": [round(v, 3) for v in b],
                     "ratio_median": ratio, "same_tokens": same})
        print(f"{m:7s} dllm-bench {statistics.median(a):7.2f} ({min(a):.2f}-{max(a):.2f})  reference "
              f"{statistics.median(b):7.2f} ({min(b):.2f}-{max(b):.2f})  ratio {ratio:.3f}  same tokens: {same}")
    print(json.dumps({"preset": args.preset, "vocab_size": cfg.vocab_size, "device_name": device_name("cpu"), "threads": args.threads,
                      "rounds": args.rounds, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
