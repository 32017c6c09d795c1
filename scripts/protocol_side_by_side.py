"""The two evaluation protocols side by side on a shipped tiny model (arith task, CPU, a minute).

    python scripts/protocol_side_by_side.py assets/models/dream-tiny-arith --threshold 0.7 --n 50 --show 4

For each protocol: each sample's prompt as tokenized, then (for the samples shown: the first
``--show`` and every one where the protocols disagree) the raw generation with its special tokens,
each protocol's post-processed output and score; last, each protocol's accuracy over ``--n``.
"""
from __future__ import annotations

import argparse
import json

import torch

from dllm_bench import generate, load_model, load_tokenizer
from dllm_bench.tasks.arithmetic import ArithmeticTask
from dllm_bench.tasks.protocol import PROTOCOLS, EvalProtocol
from dllm_bench.tasks.tokens import stop_token_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--show", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--cache", default="dual")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = load_model(args.folder), load_tokenizer(args.folder)
    task = ArithmeticTask(max_operand=3, var_prob=0.0)
    samples = task.samples(args.n)
    eos = stop_token_ids(tok, model.config.eos_token_id)
    rows = {s.id: {"target": s.meta["solution"]} for s in samples}
    for name in PROTOCOLS:
        proto = EvalProtocol(name, model.config.arch, instruct=False)
        prompts = [proto.encode(tok, s.prompt, chat=False) for s in samples]
        out = generate(model, [torch.tensor(p) for p in prompts], gen_length=64, block_length=16, steps=64,
                       cache=args.cache, decoding="threshold", threshold=args.threshold)
        for s, p, ids in zip(samples, prompts, out.tokens):
            text, n = proto.postprocess(ids, tok, eos, task.stop_sequences)
            rows[s.id][name] = {"prompt": tok.decode(p, skip_special_tokens=False), "n_tokens": n,
                                "raw": tok.decode(ids, skip_special_tokens=False), "output": text,
                                "correct": task.score(s, text).correct}
    shown = [k for i, (k, r) in enumerate(rows.items())
             if i < args.show or r["clean"]["output"] != r["reference"]["output"]]
    for k in shown:
        print(json.dumps({"id": k, **rows[k]}, indent=1))
    acc = {name: sum(r[name]["correct"] for r in rows.values()) / len(rows) for name in PROTOCOLS}
    print(json.dumps({"folder": args.folder, "n": len(rows), "threshold": args.threshold, "accuracy": acc,
                      "outputs_differ": sum(r["clean"]["output"] != r["reference"]["output"] for r in rows.values())}))


if __name__ == "__main__":
    main()
