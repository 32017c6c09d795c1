"""Synthetic sweep folders that mirror what run.py writes (docs/results_schema.md), for the
analysis tests.

One helper, job_config(), makes every fake job's config the way run.py does: Hydra composes the
real conf/ with the job's overrides (conftest.compose), `.hydra/config.yaml` gets the composed
text and results.json the resolved config, with its config_hash from the engine's own
dllm_bench.results.config_hash. The files are written by the engine's writers (write_job,
rebuild_sweep_table) and job folders are named by the engine's job_dirname. Only the numbers are
invented: plausible metrics with the keys dllm_bench.job writes, derived from the config (the
threshold lowers accuracy and raises tokens per step, caches cut time per forward, ...) plus
seeded jitter. A job whose config an earlier ok job already holds gets only its .hydra folder, as
the sweep's skip leaves it. tests/test_experiment_report.py checks these fakes against a real
sweep, and the tests in this file check them against the schema document.
"""
from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf

from conftest import compose
from dllm_bench.config import RUN_ONLY_KEYS, job_dirname
from dllm_bench.results import config_hash, mark_skipped, rebuild_sweep_table, write_job

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "results_schema.md"
TIMED = ("tokens_per_s", "ms_per_forward", "latency_s")  # the metrics with a timing spread
ENV = {"device_name": "AMD EPYC", "torch": "2.13.0+cpu", "cuda": None, "transformers": "5.25.0",
       "dllm_bench": "0.1.0", "git_commit": "abc123", "hostname": "testhost", "python": "3.11.7"}


def job_config(overrides: list[str], sweep: str = "default") -> tuple[str, dict]:
    """(`.hydra/config.yaml` text, resolved config) of the job `python run.py <overrides>` runs,
    composed from the real conf/ (tiny LLaDA, arith, W&B logger by default)."""
    named = any(o.startswith("sweep_name=") for o in overrides)
    cfg = compose([*overrides, *([] if named else [f"sweep_name={sweep}"])], tiny=False)
    return OmegaConf.to_yaml(cfg), OmegaConf.to_container(cfg, resolve=True)


def job_dir_name(overrides: list[str]) -> str:
    """The folder run.py gives a job: Hydra's override_dirname (sorted, without the keys
    conf/config.yaml excludes), made safe by dllm_bench.config.job_dirname."""
    excluded = set(_dirname_excluded())
    kept = sorted(o for o in overrides if o.split("=")[0].lstrip("+~") not in excluded)
    return job_dirname(",".join(kept))


def _dirname_excluded() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "conf" / "config.yaml").read_text()
    return yaml.safe_load(text)["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]


def fake_metrics(cfg: dict, rng: random.Random, spread: float | None = None) -> dict:
    """Plausible numbers for one job of the tiny arithmetic model, with the keys dllm_bench.job
    writes; `spread` (a fraction) adds `<m>_median` / `_q25` / `_q75` for the timed metrics."""
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
    nfe = gen / tpf
    latency = nfe * ms / 1000
    tokens = gen * 0.9  # answers end before gen_length: EOS padding is not counted
    out = {
        "accuracy": acc, "tokens_per_s": tokens / latency, "nfe_mean": nfe,
        "latency_s_mean": latency * 1.02, "latency_s_median": latency,
        "latency_s_p90": latency * 1.2, "tokens_per_forward": tokens / nfe,
        "ms_per_forward": ms, "cache_refreshes_mean": gen / block,
        "peak_memory_bytes": rng.randint(10**8, 2 * 10**8),
        "kv_cache_bytes": 4096 * gen if cache != "none" else 0, "n_samples": n,
        "generated_tokens": round(tokens * n), "accuracy_pass_s": latency * n / cfg["batch_size"],
        "timed_samples": min(n, cfg["batch_size"]), "timing_repeats": 3, "remasked_mean": 0.0,
        "load_1m": 1.0, "load_other_cpu": 0.1, "cpus": 8, "torch_threads": 1,
        "layer_tokens_computed": round(nfe * n * 4 * (gen + 32) * (1 if cache == "none" else 0.4)),
        "layer_tokens_total": round(nfe * n * 4 * (gen + 32)),
        "compute_skipped": 0.0 if cache == "none" else 0.6,
        "load_s": 0.4, "task_solution_exact": acc, "task_steps_correct": min(1.0, acc + 0.1),
    }
    if spread:  # the timing quartiles (a job always writes them; fakes only where a test asks)
        for m in TIMED:
            mid = out.get(m, out.get(f"{m}_median")) * 0.98  # the median differs from the mean
            out.update({f"{m}_median": mid, f"{m}_q25": mid * (1 - spread), f"{m}_q75": mid * (1 + spread)})
        out.update(timing_rel_iqr=2 * spread, timing_noisy=2 * spread > 0.25)
    return out


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
               dirnames: str = "num", spread: float | None = None,
               noisy: set = frozenset()) -> Path:
    """Write sweep `root/name`: the product of `sweep` ("key=v1,v2") with `fixed` overrides.

    Job i gets status "failed" if i in `failed`, only a .hydra folder if i in `missing` (or if an
    earlier ok job has its config: a skipped duplicate), no folder at all if i >= stop_after (a
    half-finished sweep), a kv_similarity block if in kv_jobs, timing quartiles `spread` apart
    (0.4 apart if in `noisy`). `logger=none` is added to `fixed` unless it names a logger. Job
    folders are "0", "1", ... (Hydra's default) or, with dirnames="overrides", named by the
    overrides as run.py names them.
    """
    sweep_dir = Path(root) / name
    sweep_dir.mkdir(parents=True)
    if not any(o.startswith("logger=") for o in fixed):  # W&B only where a test asks for it
        fixed = ["logger=none", *fixed]
    axes = [[f"{o.split('=')[0]}={v}" for v in o.split("=", 1)[1].split(",")] for o in sweep]
    combos = [list(fixed) + list(c) for c in itertools.product(*axes)]
    if multirun:
        _, cfg = job_config(list(fixed), name)
        cfg["hydra"] = {
            "sweep": {"dir": f"sweeps/{name}", "subdir": "${hydra.job.num}"},
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "max_batch_size": None, "params": None},
            "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": list(fixed) + list(sweep)},
            "job": {"name": "run", "config_name": "config", "num": "???"},
        }
        (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    done: dict[str, str] = {}  # config hash -> the job folder holding its results
    for i, overrides in enumerate(combos):
        if stop_after is not None and i >= stop_after:
            break
        job = sweep_dir / (str(i) if dirnames == "num" else job_dir_name(overrides))
        composed, cfg = job_config(overrides, name)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(composed)
        chash = config_hash(cfg, RUN_ONLY_KEYS)
        if chash in done and i not in missing:  # the job skips it as a duplicate, and says so
            mark_skipped(job, done[chash], chash)
        if i in missing or chash in done:
            continue
        rng = random.Random(f"{name}/{i}")
        results = fake_results(cfg, chash, rng, failed=i in failed, kv=i in kv_jobs,
                               spread=0.4 if i in noisy else spread)
        write_job(job, results, fake_samples(results))
        if results["status"] == "ok":
            done[chash] = job.name
    if csv:
        rebuild_sweep_table(sweep_dir)
    return sweep_dir


def fake_results(cfg: dict, chash: str, rng: random.Random, *, failed=False, kv=False,
                 spread: float | None = None) -> dict:
    out = {
        "schema_version": 1, "status": "failed" if failed else "ok",
        "error": "RuntimeError: fake failure for the tests" if failed else None,
        "sweep": cfg["sweep_name"], "config": cfg, "config_hash": chash,
        "metrics": {} if failed else fake_metrics(cfg, rng, spread),
        "env": dict(ENV), "started_at": "2026-11-27T06:00:00Z",
        "sharing": {"other_jobs": [], "other_jobs_max": 0, "load_1m_max": 1.0, "cpus": 8, "tracked": True},
    }
    if not failed:  # the timed pass's repeats (docs/timing.md)
        walls = [round(0.05 * (1 + 0.1 * rng.random()), 4) for _ in range(3)]
        out["timing"] = {"order": ["cell"] * 3, "cell": [{"wall_s": w, "nfe": 32} for w in walls]}
    if kv and not failed:
        out["kv_similarity"] = fake_kv_similarity(rng)
    out["finished_at"] = "2026-11-27T06:01:00Z"
    return out


def fake_samples(results: dict) -> list[dict]:
    m, n = results["metrics"], results["config"]["n_samples"]
    n_correct = round(m.get("accuracy", 0) * n)
    rows = []
    for i in range(n if m else 0):
        a, b = 3 * i + 1, 7 * i + 2
        answer = str(a + b) if i < n_correct else str(a + b + 1)
        rows.append({"id": i, "prompt": f"{a}+{b}=", "output": answer, "target": str(a + b),
                     "nfe": m["nfe_mean"], "remasked": 0, "batch_size": results["config"]["batch_size"],
                     "batch_latency_s": m["latency_s_median"] * results["config"]["batch_size"],
                     "n_generated_tokens": len(answer), "cache_refreshes": m["cache_refreshes_mean"],
                     "extracted": answer, "correct": i < n_correct, "extra": {}})
    return rows


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
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], kv_jobs={1}, spread=0.05)
    res = json.loads((sweep / "1" / "results.json").read_text())
    assert set(keys["top"]) <= set(res)
    assert {k for k in keys["metrics"] if not k.startswith("speedup")} <= set(res["metrics"])  # speedup: opt-in
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
    _, fixed = job_config(["decoding=fixed", "threshold=0.7"])
    assert "threshold" not in fixed["decoding"] and fixed["threshold"] == 0.7  # the alias only


def test_a_config_already_done_leaves_only_its_hydra_folder(tmp_path):
    # fixed decoding ignores the threshold: the second cell is the first one's config
    sweep = make_sweep(tmp_path, "s", ["threshold=0.7,0.9"], ["decoding=fixed"])
    assert (sweep / "0" / "results.json").is_file()
    assert (sweep / "1" / ".hydra" / "config.yaml").is_file()
    assert not (sweep / "1" / "results.json").exists()
