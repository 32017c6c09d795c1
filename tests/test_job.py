"""One job end to end on the random-weight fixtures, in process: results.json against
samples.jsonl and against direct engine calls, skip / force, failures recorded and retried, bad
input refused before anything is written."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from conftest import compose, needs_fixtures
from dllm_bench import generate, load_model
from dllm_bench.config import ConfigError
from dllm_bench.job import resolve_model_path, run_job, set_threads
from dllm_bench.metrics.timing import percentile
from dllm_bench.tasks import encode_prompt
from dllm_bench.tokenizer import build_tokenizer
from fixture_paths import LLADA_TINY, ROOT

pytestmark = needs_fixtures


def _rows(job_dir):
    return [json.loads(line) for line in (job_dir / "samples.jsonl").read_text().splitlines()]


def test_job_metrics_match_samples_and_the_engine(tmp_path):
    cfg = compose(["cache=dual", "decoding=threshold", "threshold=0.7", "n_samples=3", "batch_size=2"])
    job = tmp_path / "sweep" / "job"
    res = run_job(cfg, job, ROOT)
    assert res["status"] == "ok" and res["error"] is None
    on_disk = json.loads((job / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["config"]["decoding"] == {"_target_": "dllm_bench.decoding.rules.threshold.Threshold",
                                             "name": "threshold", "threshold": 0.7, "temperature": 0.0,
                                             "remasking": "low_confidence"}
    rows, m = _rows(job), res["metrics"]
    assert len(rows) == m["n_samples"] == 3
    assert set(rows[0]) >= {"id", "prompt", "output", "extracted", "target", "correct", "nfe", "latency_s",
                            "batch_latency_s", "n_generated_tokens", "remasked"}
    assert m["accuracy"] == sum(r["correct"] for r in rows) / 3
    assert m["nfe_mean"] == pytest.approx(sum(r["nfe"] for r in rows) / 3)
    tokens = sum(r["n_generated_tokens"] for r in rows)
    assert m["tokens_per_forward"] == pytest.approx(tokens / sum(r["nfe"] for r in rows))
    # the timed pass: one batch (batch_size=2 prompts), 3 repeats after a warm-up, medians and quartiles
    walls = [t["wall_s"] for t in res["timing"]["cell"]]
    assert m["timed_samples"] == 2 and m["timing_repeats"] == len(walls) == 3 and res["timing"]["order"] == ["cell"] * 3
    timed_tokens = sum(r["n_generated_tokens"] for r in rows[:2])
    assert m["tokens_per_s"] == m["tokens_per_s_median"] == pytest.approx(statistics.median(timed_tokens / w for w in walls))
    assert m["tokens_per_s_q25"] <= m["tokens_per_s_median"] <= m["tokens_per_s_q75"]
    assert m["timing_rel_iqr"] == pytest.approx((percentile(walls, 75) - percentile(walls, 25)) / statistics.median(walls))
    assert m["timing_noisy"] == (m["timing_rel_iqr"] > 0.25)
    assert m["load_1m"] >= 0 and m["load_other_cpu"] >= 0 and m["torch_threads"] == 1 and m["cpus"] >= 1
    # per-sample latency: the timed samples' own (batch wall / rows, median over repeats); the rest have the
    # accuracy pass's batch wall time only
    assert all(r["latency_s"] > 0 for r in rows[:2]) and "latency_s" not in rows[2]
    assert rows[0]["batch_size"] == 2 and rows[2]["batch_size"] == 1 and rows[2]["batch_latency_s"] > 0
    assert m["latency_s_q25"] <= m["latency_s_median"] <= m["latency_s_q75"] and m["latency_s_p90"] >= m["latency_s_median"]
    assert m["cache_refreshes_mean"] == 2  # one per block: gen_length 32 / block_length 16
    assert m["peak_memory_bytes"] > 0
    # dual cache of the largest batch: 2 (K, V) x layers x B x H_kv x (prompt + gen) x head_dim x 4 bytes
    model = load_model(LLADA_TINY)
    tok, c = build_tokenizer(), model.config
    prompts = [torch.tensor(encode_prompt(tok, r["prompt"], False)) for r in rows]
    longest = max(len(p) for p in prompts[:2]) + 32
    assert m["kv_cache_bytes"] == 2 * c.n_layers * 2 * c.n_kv_heads * longest * c.head_dim * 4
    # each sample's NFE is what the engine spends on it alone
    for p, r in zip(prompts, rows):
        alone = generate(model, [p], gen_length=32, block_length=16, steps=32, cache="dual",
                         decoding="threshold", threshold=0.7)
        assert r["nfe"] == alone.nfe_per_row[0]
    assert "kv_similarity" not in res
    assert (job.parent / "sweep.csv").read_text().count("\n") == 2


def test_no_cache_has_no_kv_bytes_and_dream_runs(tmp_path):
    res = run_job(compose(["model=fixture_dream_tiny", "cache=none", "decoding=fixed", "n_samples=1"]),
                  tmp_path / "s" / "j", ROOT)
    assert res["status"] == "ok"
    assert res["metrics"]["kv_cache_bytes"] == 0
    assert res["metrics"]["nfe_mean"] == 32  # fixed decoding, steps = gen_length, one token a step


def test_rerun_skips_unless_forced(tmp_path):
    cfg = compose(["n_samples=1"])
    first = run_job(cfg, tmp_path / "s" / "a", ROOT)
    mtime = (tmp_path / "s" / "a" / "results.json").stat().st_mtime_ns
    again = run_job(compose(["n_samples=1", "logger=none", "num_threads=2"]), tmp_path / "s" / "b", ROOT)
    assert again == first and not (tmp_path / "s" / "b" / "results.json").exists()  # run-only keys: same job
    assert (tmp_path / "s" / "a" / "results.json").stat().st_mtime_ns == mtime
    forced = run_job(compose(["n_samples=1", "force=true"]), tmp_path / "s" / "a", ROOT)
    assert forced["started_at"] >= first["started_at"]
    assert (tmp_path / "s" / "a" / "results.json").stat().st_mtime_ns != mtime


def test_failed_job_is_recorded_then_retried(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    over = ["task._target_=conftest.FlakyTask", f"+task.fail_flag={flag}", "n_samples=1"]
    job = tmp_path / "s" / "j"
    res = run_job(compose(over), job, ROOT)  # returns normally: a sweep goes on
    assert res["status"] == "failed" and res["error"].startswith("RuntimeError: injected failure")
    assert json.loads((job / "results.json").read_text())["status"] == "failed"
    assert (job / "samples.jsonl").read_text() == ""
    assert "failed" in (job.parent / "sweep.csv").read_text()
    flag.unlink()
    retry = run_job(compose(over), job, ROOT)
    assert retry["status"] == "ok" and retry["config_hash"] == res["config_hash"]


@pytest.mark.parametrize("overrides,message", [
    (["model.path=no/such/folder"], "model folder not found: .*no/such/folder"),
    (["block_length=20"], "block_length=20"),
    (["task.n_steps=30"], "task 'arith': ValueError: .*n_steps"),
])
def test_bad_input_stops_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_job(compose(overrides), tmp_path / "s" / "j", ROOT)
    assert not (tmp_path / "s").exists()


def test_model_paths_resolve_against_the_root(tmp_path):
    assert resolve_model_path("../shared/fixtures/llada_tiny", ROOT) == str(LLADA_TINY.resolve())
    assert resolve_model_path(str(LLADA_TINY), tmp_path) == str(LLADA_TINY.resolve())  # absolute
    assert resolve_model_path("GSAI-ML/LLaDA-8B-Instruct", ROOT) == "GSAI-ML/LLaDA-8B-Instruct"
    with pytest.raises(ConfigError, match="assets/models/nope"):
        resolve_model_path("assets/models/nope", ROOT)


def test_threads_are_shared_between_parallel_jobs(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
        assert set_threads(compose(["num_threads=null", "n_parallel=4"])) == 2
        assert set_threads(compose(["num_threads=null", "n_parallel=16"])) == 1
        assert set_threads(compose(["num_threads=3"])) == 3 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_default_config_is_the_tiny_llada_cell():
    cfg = compose([], tiny=False)
    assert (cfg.model.name, cfg.cache.name, cfg.decoding.name, cfg.decoding.threshold, cfg.task.name,
            cfg.n_samples, cfg.logger._target_.rsplit(".", 1)[-1]) == \
        ("llada_tiny_arith", "dual", "threshold", 0.9, "arith", 50, "WandbLogger")


@pytest.mark.parametrize("model", ["llada_tiny_arith", "dream_tiny_arith"])
def test_shipped_tiny_models_solve_arith(tmp_path, model):
    """The whole path (char tokenizer, prompts, decoding, stop at EOS, scoring) on a trained model."""
    folder = ROOT / "assets" / "models" / model.replace("_arith", "-arith").replace("_", "-")
    assert (folder / "config.json").exists(), f"{folder} is missing: the shipped tiny models are part of the project"
    res = run_job(compose([f"model={model}", "n_samples=50", "gen_length=64", "batch_size=25"]),
                  tmp_path / "s" / "j", ROOT)
    assert res["status"] == "ok"
    assert res["metrics"]["accuracy"] >= 0.85  # threshold 0.9 + dual cache: see tests/test_arith_shipped_models.py
    assert res["metrics"]["tokens_per_forward"] > 1  # threshold decoding accepts several tokens a step


@pytest.mark.parametrize("option", ["graphs", "fused"])
def test_engine_option_reaches_the_engine_with_the_same_tokens(tmp_path, option):
    base = ["cache=dual", "decoding=threshold", "threshold=0.7", "n_samples=2"]
    eager = run_job(compose(base), tmp_path / "s" / "eager", ROOT)
    other = run_job(compose([*base, f"{option}=true"]), tmp_path / "s" / option, ROOT)
    assert other["status"] == "ok" and other["config"][option] is True
    assert other["config_hash"] != eager["config_hash"]
    outputs = [[r["output"] for r in _rows(tmp_path / "s" / d)] for d in ("eager", option)]
    assert outputs[0] == outputs[1]


def test_timed_pass_interleaves_the_baseline_and_records_spread_and_load(tmp_path):
    cfg = compose(["cache=dual", "decoding=threshold", "threshold=0.9", "n_samples=3", "batch_size=2",
                   "timing.repeats=4", "timing.baseline=true", "timing.samples=3"])
    res = run_job(cfg, tmp_path / "s" / "j", ROOT)
    m, t = res["metrics"], res["timing"]
    assert res["status"] == "ok" and m["timed_samples"] == 3
    # repeat r times both engines, the order rotating: no engine always goes first
    assert t["order"] == ["cell", "baseline", "baseline", "cell", "cell", "baseline", "baseline", "cell"]
    cell, base = [r["wall_s"] for r in t["cell"]], [r["wall_s"] for r in t["baseline"]]
    ratios = [b / c for c, b in zip(cell, base)]
    assert m["speedup"] == m["speedup_median"] == pytest.approx(statistics.median(ratios))
    assert m["speedup_q25"] <= m["speedup_median"] <= m["speedup_q75"]
    # the baseline decodes one token per forward: 32 forwards for each of the 2 batches
    assert all(r["nfe"] == 2 * 32 for r in t["baseline"]) and all(r["nfe"] < 2 * 32 for r in t["cell"])
    assert m["timing_repeats"] == 4 and m["timing_rel_iqr"] >= 0 and isinstance(m["timing_noisy"], bool)
    assert {"load_1m", "load_other_cpu", "cpus", "torch_threads"} <= set(m)
    with pytest.raises(ConfigError, match="timing.repeats=0"):
        run_job(compose(["timing.repeats=0"]), tmp_path / "s" / "bad", ROOT)


def test_compute_skipped_reflects_the_cache(tmp_path):
    """Layer x token work a full forward at every step would do, and the fraction each cache skips."""
    out = {}
    for cache in ("none", "prefix", "dual"):
        res = run_job(compose([f"cache={cache}", "decoding=threshold", "threshold=0.9", "n_samples=2",
                               "timing.repeats=1", "timing.warmup=0"]), tmp_path / "s" / cache, ROOT)
        out[cache] = res["metrics"]
    assert out["none"]["compute_skipped"] == 0
    assert 0 < out["prefix"]["compute_skipped"] < out["dual"]["compute_skipped"] < 1
    for m in out.values():
        assert m["layer_tokens_computed"] > 0
