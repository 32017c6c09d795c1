"""Evaluate a shipped tiny model on held-out ``arith`` problems across decoding x cache settings.

    PYTHONPATH=src python scripts/eval_tiny.py assets/models/llada-tiny-arith [--n 500] [--n-grid 200]

The two headline cells (fixed 1 token/step without cache, the baseline; threshold 0.9 with the
dual cache) use ``--n`` problems, the rest of the grid the first ``--n-grid`` of them. Grid: decoding threshold in {0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0} and fixed k tokens/step in
{1, 2, 4, 8} (steps = gen_length / k), each with cache none / prefix / dual, block_length 16.
Per cell: accuracy, NFE (mean of each row's own forward count, i.e. its batch-size-1 cost) and
generated tokens per second (tokens up to EOS / batched wall time after a warm-up, on this CPU).
Writes ``eval_tiny.json`` into the model folder, replaces the table section of its README.md
and prints one JSON line per cell, then one summary line.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

from dllm_bench import load_model, load_tokenizer
from dllm_bench.metrics.timing import cpu_name
from dllm_bench.tasks.arithmetic import ArithmeticTask
from dllm_bench.train import EVAL_BEGIN, EVAL_END, evaluate

HEADLINE = ("fixed-1/none", "threshold-0.9/dual")
THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0)
KS = (1, 2, 4, 8)
CACHES = ("none", "prefix", "dual")


def cells(gen_length: int):
    for th in THRESHOLDS:
        for cache in CACHES:
            yield {"decoding": "threshold", "threshold": th, "cache": cache, "steps": gen_length}
    for k in KS:
        for cache in CACHES:
            yield {"decoding": "fixed", "k": k, "cache": cache, "steps": gen_length // k}


def table_markdown(rows: list[dict], meta: dict) -> str:
    base = next(r for r in rows if r["decoding"] == "fixed" and r["k"] == 1 and r["cache"] == "none")
    lines = [f"Measured by `scripts/eval_tiny.py` on held-out problems (task seed 0): gen_length "
             f"{meta['gen_length']}, block_length {meta['block_length']}, batch {meta['batch_size']}, "
             f"{meta['n']} problems for the baseline and threshold 0.9 + dual rows, the first {meta['n_grid']} "
             f"for the others, "
             f"{meta['device']} with torch.set_num_threads({meta['threads']}) (machine shared with other jobs, "
             f"so tokens/s is indicative). NFE: forwards per problem at batch size 1; "
             f"relative NFE against the baseline (fixed, 1 token/step, no cache: "
             f"{base['accuracy']:.1%}, NFE {base['nfe_mean']:.1f}).", "",
             "| decoding | cache | problems | accuracy | NFE | NFE vs baseline | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"threshold {r['threshold']}" if r["decoding"] == "threshold" else f"fixed {r['k']} tok/step"
        lines.append(f"| {name} | {r['cache']} | {r['n_samples']} | {r['accuracy']:.1%} | {r['nfe_mean']:.1f} | "
                     f"{r['nfe_mean'] / base['nfe_mean']:.0%} | {r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="checkpoint folder")
    ap.add_argument("--n", type=int, default=500, help="held-out problems for the headline cells")
    ap.add_argument("--n-grid", type=int, default=200, help="held-out problems for the other cells")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="regex on 'decoding/cache' cell names, e.g. 'fixed-1/none|threshold-0.9/dual'")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    folder = Path(args.model)
    model, tok = load_model(folder), load_tokenizer(folder)
    task_cfg = json.loads(json.dumps(__import__("yaml").safe_load((folder / "train_config.yaml").read_text())["task"]))
    task = ArithmeticTask(**task_cfg, split="heldout", seed=0)
    samples = task.samples(args.n)
    gen = {"gen_length": args.gen_length, "block_length": args.block_length}
    evaluate(model, tok, task, samples[:8], batch_size=8, cache="dual", decoding="threshold",
             threshold=0.9, steps=args.gen_length, **gen)  # warm-up
    rows = []
    for cell in cells(args.gen_length):
        name = f"{cell['decoding']}-{cell.get('threshold', cell.get('k'))}/{cell['cache']}"
        if args.only and not re.search(args.only, name):
            continue
        kw = {"threshold": cell["threshold"]} if cell["decoding"] == "threshold" else {}
        cell_samples = samples if name in HEADLINE else samples[: args.n_grid]
        res = evaluate(model, tok, task, cell_samples, batch_size=args.batch_size, cache=cell["cache"],
                       decoding=cell["decoding"], steps=cell["steps"], **kw, **gen)
        rows.append({**cell, **res})
        print(json.dumps({"cell": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}}), flush=True)
    meta = {"model": str(folder), "n": args.n, "n_grid": args.n_grid, "batch_size": args.batch_size, "threads": args.threads,
            "device": f"CPU ({cpu_name()})", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **gen}
    if args.only is None:
        (folder / "eval_tiny.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        card = folder / "README.md"
        if card.exists() and EVAL_BEGIN in card.read_text():
            text = card.read_text()
            head, rest = text.split(EVAL_BEGIN, 1)
            card.write_text(head + EVAL_BEGIN + "\n" + table_markdown(rows, meta) + "\n" + EVAL_END + rest.split(EVAL_END, 1)[1])
    print(json.dumps({"meta": meta, "cells": len(rows)}))


if __name__ == "__main__":
    main()
