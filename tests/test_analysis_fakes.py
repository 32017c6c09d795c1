"""Synthetic sweep folders that follow docs/results_schema.md, for the analysis tests.

make_sweep() writes what a Hydra multirun of run.py leaves behind: multirun.yaml, sweep.csv and,
per job, results.json / samples.jsonl / .hydra/{config,overrides}.yaml, with plausible numbers
derived from the config (threshold lowers accuracy and raises tokens per step, caches cut time
per forward, ...) plus seeded jitter. The tests in this file check that the fakes really carry
every key the schema document names, so a schema change shows up here first.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import re
from pathlib import Path

import pandas as pd
import yaml

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "results_schema.md"

# Mirrors conf/config.yaml as resolved by Hydra: top-level threshold/factor feed decoding.*,
# the logger group is a `_target_` (W&B is recognised by it), `metrics` is a config group too.
BASE_CONFIG = {
    "model": {"name": "llada_tiny_arith", "path": "assets/models/llada_tiny_arith",
              "family": "llada", "instruct": False},
    "cache": {"name": "none"},
    "decoding": {"name": "fixed", "threshold": None, "factor": None, "temperature": 0.0},
    "task": {"_target_": "dllm_bench.tasks.arithmetic.ArithTask", "name": "arith"},
    "logger": {"_target_": "dllm_bench.logging_wandb.NullLogger"},
    "measure": {"kv_similarity": False, "kv_similarity_samples": 2},
    "gen_length": 64, "block_length": 16, "steps": 64, "threshold": 0.9, "factor": 1.0,
    "batch_size": 8, "n_samples": 50, "seed": 0, "device": "cpu", "dtype": "float32",
    "sweep_name": "default",
}
GROUP_PRESETS = {
    "decoding": {"fixed": {"name": "fixed", "threshold": None, "factor": None},
                 "threshold": {"name": "threshold", "threshold": "${threshold}", "factor": None},
                 "factor": {"name": "factor", "threshold": None, "factor": "${factor}"}},
    "logger": {"none": {"_target_": "dllm_bench.logging_wandb.NullLogger"},
               "wandb": {"_target_": "dllm_bench.logging_wandb.WandbLogger",
                         "project": "dllm-test", "mode": None}},
}
DIRNAME_EXCLUDED = ("logger", "sweep_name")  # like hydra.job.config.override_dirname.exclude_keys


def config_from_overrides(overrides: list[str], sweep: str = "default") -> dict:
    """Apply Hydra-style overrides to BASE_CONFIG (group choices first, then dotted keys), then
    resolve the `${threshold}` / `${factor}` interpolations as Hydra would."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["sweep_name"] = sweep
    cfg["decoding"].update(GROUP_PRESETS["decoding"]["fixed"])
    for ov in sorted(overrides, key=lambda o: "." in o.split("=")[0]):
        key, value = ov.lstrip("+").split("=", 1)
        if "." not in key and isinstance(cfg.get(key), dict):
            preset = GROUP_PRESETS.get(key, {}).get(value, {"name": value})
            cfg[key] = {**cfg[key], **copy.deepcopy(preset)}
            continue
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    for k in ("threshold", "factor"):
        if cfg["decoding"][k] == "${" + k + "}":
            cfg["decoding"][k] = cfg[k]
    return cfg


def fake_metrics(cfg: dict, rng: random.Random) -> dict:
    """Plausible numbers for one job of the tiny arithmetic model."""
    gen, steps, block = cfg["gen_length"], cfg["steps"], cfg["block_length"]
    dec, cache = cfg["decoding"], cfg["cache"]["name"]
    if dec["name"] == "threshold":
        tpf = 1 + 8 * (1 - dec["threshold"]) + rng.uniform(0, 0.3)
        acc = 0.82 - 0.6 * (1 - dec["threshold"]) ** 2
    else:
        tpf = gen / steps
        acc = 0.82 - 0.12 * (tpf - 1)
    acc -= {"none": 0.0, "prefix": 0.01, "dual": 0.02}.get(cache, 0.0) + 0.002 * abs(block - 16)
    n = cfg["n_samples"]
    acc = round(max(0.0, min(1.0, acc + rng.uniform(-0.03, 0.03))) * n) / n
    ms = {"none": 9.0, "prefix": 5.5, "dual": 3.8}.get(cache, 9.0) * rng.uniform(0.95, 1.05)
    nfe = gen / tpf + (gen / block if cache != "none" else 0)
    latency = nfe * ms / 1000
    tokens = gen * 0.9
    return {
        "accuracy": acc, "tokens_per_s": tokens / latency, "nfe_mean": nfe,
        "latency_s_mean": latency * 1.02, "latency_s_median": latency,
        "latency_s_p90": latency * 1.2, "tokens_per_forward": tokens / nfe,
        "ms_per_forward": ms, "cache_refreshes_mean": gen / block if cache != "none" else 0.0,
        "peak_memory_bytes": rng.randint(10**8, 2 * 10**8), "kv_cache_bytes": 4096 * gen,
        "n_samples": n, "wall_s": latency * n / cfg["batch_size"],
        "generated_tokens": tokens * n, "load_s": 0.4, "task_exact": acc,  # schema "Additions"
    }


def fake_kv_similarity(rng: random.Random, n_layers: int = 4, n_steps: int = 8) -> dict:
    def regions(base):
        return {r: round(base - d - rng.uniform(0, 0.02), 4)
                for r, d in (("prompt", 0.0), ("finished", 0.02), ("block", 0.3), ("suffix", 0.05))}
    layers = [{"layer": i, "key": {"consecutive": regions(0.99), "to_refresh": regions(0.97 - 0.02 * i)},
               "value": {"consecutive": regions(0.98), "to_refresh": regions(0.95 - 0.03 * i)}}
              for i in range(n_layers)]
    heat = {region: [[round(1 - decay * abs(i - j), 4) for j in range(n_steps)]
                     for i in range(n_steps)] for region, decay in (("prompt", 0.004), ("suffix", 0.02))}
    return {"layers": layers, "heatmap": heat, "n_samples": 2}


def make_sweep(root: Path, name: str, sweep: list[str], fixed: list[str] = (), *,
               failed: set = frozenset(), missing: set = frozenset(), stop_after: int | None = None,
               kv_jobs: set = frozenset(), csv: bool = True, multirun: bool = True,
               dirnames: str = "num") -> Path:
    """Write sweep `root/name`: the product of `sweep` ("key=v1,v2") with `fixed` overrides.

    Job i gets status "failed" if i in `failed`, only a .hydra folder if i in `missing`, no
    folder at all if i >= stop_after (a half-finished sweep), a kv_similarity block if in kv_jobs.
    Job folders are "0", "1", ... (Hydra's default) or, with dirnames="overrides", named by the
    overrides like run.py's `dllm_job_dir` ("cache=dual,threshold=0.7").
    """
    sweep_dir = Path(root) / name
    sweep_dir.mkdir(parents=True)
    axes = [[f"{o.split('=')[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in sweep]
    combos = [list(fixed) + list(c) for c in itertools.product(*axes)]
    if multirun:
        cfg = config_from_overrides(list(fixed), name)
        cfg["hydra"] = {
            "sweep": {"dir": f"sweeps/{name}", "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "max_batch_size": None, "params": None},
            "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(fixed) + list(sweep)},
            "job": {"name": "run", "config_name": "config", "num": "???"},
        }
        (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    csv_rows = []
    for i, overrides in enumerate(combos):
        if stop_after is not None and i >= stop_after:
            break
        job = sweep_dir / (str(i) if dirnames == "num" else ",".join(
            sorted(o for o in overrides if o.split("=")[0] not in DIRNAME_EXCLUDED)))
        cfg = config_from_overrides(overrides, name)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        if i in missing:
            continue
        results = fake_results(cfg, name, random.Random(f"{name}/{i}"), failed=i in failed,
                               kv=i in kv_jobs)
        write_samples(job / "samples.jsonl", results)
        data = (job / "samples.jsonl").read_bytes()  # results.json last, describing its samples
        results["samples"] = {"count": data.count(b"\n"), "bytes": len(data),
                              "sha256": hashlib.sha256(data).hexdigest()}
        (job / "results.json").write_text(json.dumps(results, indent=2))
        csv_rows.append({"job_dir": job.name, "status": results["status"],
                         "config_hash": results["config_hash"], **_flat(cfg),
                         **_flat(results["metrics"], "metrics.")})
    if csv:
        pd.DataFrame(csv_rows).to_csv(sweep_dir / "sweep.csv", index=False)
    return sweep_dir


def fake_results(cfg: dict, sweep: str, rng: random.Random, *, failed=False, kv=False) -> dict:
    canonical = json.dumps(cfg, sort_keys=True)
    out = {
        "schema_version": 1, "status": "failed" if failed else "ok",
        "error": "RuntimeError: fake failure for the tests" if failed else None,
        "sweep": sweep, "config": cfg,
        "config_hash": hashlib.sha256(canonical.encode()).hexdigest(),
        "metrics": {} if failed else fake_metrics(cfg, rng),
        "env": {"device_name": "cpu", "torch": "2.13.0", "cuda": None, "transformers": "4.99",
                "dllm_bench": "0.1.0", "git_commit": "abc123", "hostname": "testhost",
                "python": "3.11.7"},
        "sharing": {"other_jobs": [], "other_jobs_max": 0, "load_1m_max": 1.0, "cpus": 8, "tracked": True},
        "started_at": "2026-11-27T06:00:00Z", "finished_at": "2026-11-27T06:01:00Z",
    }
    if kv and not failed:
        out["kv_similarity"] = fake_kv_similarity(rng)
    return out


def write_samples(path: Path, results: dict) -> None:
    m, n = results["metrics"], results["config"]["n_samples"]
    n_correct = round(m.get("accuracy", 0) * n)
    with open(path, "w") as f:
        for i in range(n if m else 0):
            a, b = 3 * i + 1, 7 * i + 2
            answer = str(a + b) if i < n_correct else str(a + b + 1)
            f.write(json.dumps({"id": i, "prompt": f"{a}+{b}=", "output": answer + "<eos>",
                                "extracted": answer, "target": str(a + b),
                                "correct": i < n_correct, "nfe": m["nfe_mean"],
                                "latency_s": m["latency_s_median"],
                                "n_generated_tokens": len(answer),
                                "cache_refreshes": m["cache_refreshes_mean"], "extra": {}}) + "\n")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- the fakes follow the schema document ----------------------------------------------------

def _schema_keys() -> dict:
    doc = SCHEMA_DOC.read_text()
    block = re.search(r"```json\n(.*?)```", doc, re.S).group(1)
    metrics = re.search(r'"metrics": \{(.*?)\n  \}', block, re.S).group(1)
    env = re.search(r'"env": \{(.*?)\}', block, re.S).group(1)
    kv = re.search(r'"kv_similarity": \{(.*?)\n  \},', block, re.S).group(1)
    samples = re.search(r"`samples\.jsonl` rows: `\{(.*?)\}`", doc, re.S).group(1)
    return {
        "top": re.findall(r'^  "(\w+)":', block, re.M),
        "metrics": re.findall(r'"(\w+)":', metrics),
        "env": re.findall(r'"(\w+)":', env),
        "kv": set(re.findall(r'"(\w+)":', kv)),
        "samples": re.findall(r'"(\w+)"', samples),
    }


def test_schema_doc_parses():
    keys = _schema_keys()
    assert {"status", "config", "metrics", "env"} <= set(keys["top"])
    assert {"accuracy", "tokens_per_s", "nfe_mean"} <= set(keys["metrics"])


def test_fake_results_carry_every_schema_key(tmp_path):
    keys = _schema_keys()
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], kv_jobs={1})
    res = json.loads((sweep / "1" / "results.json").read_text())
    assert set(keys["top"]) <= set(res)
    assert set(keys["metrics"]) <= set(res["metrics"])
    assert set(keys["env"]) <= set(res["env"])
    kv_keys = set()
    for layer in res["kv_similarity"]["layers"]:
        kv_keys |= set(layer) | set(layer["key"]) | set(layer["key"]["to_refresh"])
    kv_keys |= set(res["kv_similarity"]) | set(res["kv_similarity"]["heatmap"])
    assert keys["kv"] <= kv_keys
    first = json.loads((sweep / "1" / "samples.jsonl").read_text().splitlines()[0])
    assert set(keys["samples"]) == set(first)
    table = pd.read_csv(sweep / "sweep.csv")
    assert {"job_dir", "status", "config_hash", "cache.name", "metrics.accuracy"} <= set(table.columns)


def test_fake_overrides_reach_the_config(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["threshold=0.7,0.9"], ["decoding=threshold"],
                       dirnames="overrides")
    jobs = ["decoding=threshold,threshold=0.7", "decoding=threshold,threshold=0.9"]
    cfgs = [json.loads((sweep / j / "results.json").read_text())["config"] for j in jobs]
    assert [c["decoding"]["name"] for c in cfgs] == ["threshold", "threshold"]
    assert [c["decoding"]["threshold"] for c in cfgs] == [0.7, 0.9]
    fixed = config_from_overrides(["decoding=fixed", "threshold=0.7"])
    assert fixed["decoding"]["threshold"] is None and fixed["threshold"] == 0.7
