"""Replay golden files on the engine: ``python -m dllm_bench.replay FILE [--checkpoints DIR]``.

A golden file holds cases made by running a reference implementation (Fast-dLLM's
``*/golden.json``; each published method's ``methods/<method>.json``): a prompt, the reference's
own arguments, the tokens it produced and its forward count. Each case's arguments are mapped to
our plugins by the adapter its method registered (``decoding.registry.golden_adapter``, kept
beside the plugin), run with ``generate`` on the case's checkpoint, and compared: tokens (every
row), forward count, and the plugin counters an adapter names. Prints one line per failing case
and, last, ``N/M cases passed``; exits non-zero unless all passed.

A case's ``checkpoint`` (or the file's) names a folder under ``--checkpoints`` (default: the
fixtures folder the file sits in, i.e. the parent of ``methods/`` or of ``<checkpoint>/``).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .decoding import generate
from .decoding.registry import GOLDEN_ADAPTERS, golden_adapter
from .models import load_model


@golden_adapter("fast_dllm")
def fast_dllm_case(case: dict) -> dict:
    """Fast-dLLM's goldens (``<checkpoint>/golden.json``): LLaDA and Dream, none / prefix / dual."""
    kw = dict(gen_length=case["gen_length"], block_length=case["block_length"], steps=case["steps"],
              cache=case["cache"])
    if case.get("alg", "confidence_threshold" if case.get("threshold") is not None else None) == "confidence_threshold":
        kw.update(decoding="threshold", threshold=case["threshold"])
    elif case.get("factor") is not None:
        kw.update(decoding="factor", factor=case["factor"])
    else:
        kw.update(decoding="fixed")
    return kw


@dataclass
class CaseResult:
    id: str
    ok: bool
    why: str = ""


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: cannot read golden file {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise SystemExit(f"error: {path} is not a golden file (no 'cases' list)")
    return data


def method_of(data: dict) -> str:
    return data.get("method", "fast_dllm")


def adapter_for(data: dict, path: str | Path = "?"):
    method = method_of(data)
    if method not in GOLDEN_ADAPTERS:
        import dllm_bench.decoding.caches  # noqa: F401  (plugins register their adapters on import)
        import dllm_bench.decoding.rules  # noqa: F401
    if method not in GOLDEN_ADAPTERS:
        raise SystemExit(f"error: no plugin replays method {method!r} of {path} "
                         f"(known: {', '.join(sorted(GOLDEN_ADAPTERS))})")
    return GOLDEN_ADAPTERS[method]


def default_checkpoints(path: str | Path) -> Path:
    return Path(path).resolve().parent.parent


def case_prompt(case: dict):
    ids = case["prompt_ids"]
    return torch.tensor(ids if ids and isinstance(ids[0], list) else [ids])


def expected_rows(case: dict) -> list[list[int]]:
    exp = case["expected_tokens"]
    return exp if exp and isinstance(exp[0], list) else [exp]


def run_case(model, case: dict, adapter, **overrides) -> CaseResult:
    """Replay one case on ``model``; ``overrides`` go to ``generate`` (e.g. graphs=True)."""
    kw = dict(adapter(case))
    expect_stats = kw.pop("expect_stats", {})
    try:
        res = generate(model, case_prompt(case), **kw, **overrides)
    except Exception as e:  # noqa: BLE001 - a failing case is reported, the others still run
        return CaseResult(case["id"], False, f"{type(e).__name__}: {e}")
    rows = res.tokens.tolist()
    for r, (got, want) in enumerate(zip(rows, expected_rows(case))):
        if got != want:
            pos = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b) if len(got) == len(want) else -1
            return CaseResult(case["id"], False, f"row {r} tokens differ from position {pos}")
    if "expected_nfe" in case and res.nfe != case["expected_nfe"]:
        return CaseResult(case["id"], False, f"nfe {res.nfe} != expected {case['expected_nfe']}")
    for key, want in expect_stats.items():
        if res.stats.get(key) != want:
            return CaseResult(case["id"], False, f"stats[{key!r}] {res.stats.get(key)!r} != expected {want!r}")
    return CaseResult(case["id"], True)


def replay(path: str | Path, checkpoints: str | Path | None = None, *, device="cpu", dtype=torch.float32,
           ids: list[str] | None = None, **overrides) -> list[CaseResult]:
    data = load(path)
    adapter = adapter_for(data, path)
    root = Path(checkpoints) if checkpoints else default_checkpoints(path)
    models: dict[str, torch.nn.Module] = {}
    out = []
    for case in data["cases"]:
        if ids and case["id"] not in ids:
            continue
        name = case.get("checkpoint") or data.get("checkpoint")
        if name not in models:
            models[name] = load_model(root / name, device=device, dtype=dtype)
        out.append(run_case(models[name], case, adapter, **overrides))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dllm_bench.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="a golden file (fixtures/<checkpoint>/golden.json or fixtures/methods/<method>.json)")
    p.add_argument("--checkpoints", help="folder holding the cases' checkpoint folders")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--case", action="append", help="replay only this case id (repeatable)")
    p.add_argument("--graphs", action="store_true", help="run on the static-buffer (CUDA graph) path")
    args = p.parse_args(argv)
    extra = {"graphs": True} if args.graphs else {}
    results = replay(args.file, args.checkpoints, device=args.device, dtype=args.dtype, ids=args.case, **extra)
    for r in results:
        if not r.ok:
            print(f"FAIL {r.id}: {r.why}")
    passed = sum(r.ok for r in results)
    print(f"{passed}/{len(results)} cases passed")
    return 0 if results and passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
