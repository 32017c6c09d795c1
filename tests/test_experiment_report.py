"""A ``*_tiny`` experiment run for real, then the report: every figure the sweep supports is drawn,
the rest are skipped with a note, cells skipped as duplicates are not missing, the command the
report gives for the missing baseline really adds it, and the analysis tests' fake results carry
the keys a real job writes."""
from __future__ import annotations

import json
import random
import re
import shlex

import pytest
import yaml

from analysis import load_sweep
from analysis.report import build_report
from conftest import compose, needs_fixtures, run_cli
from dllm_bench.config import validate
from test_analysis_fakes import fake_results, job_config

pytestmark = needs_fixtures
FIXTURE = ["model=fixture_llada_tiny", "logger=none", "n_samples=2", "batch_size=2", "gen_length=32",
           "block_length=16", "num_threads=1", "progress=false"]


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= _flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def test_fig5_tiny_experiment_then_report_then_its_baseline(tmp_path):
    # the experiment's axes (6 thresholds x {threshold, fixed 32 and 16 steps}, dual cache)
    proc = run_cli(["-m", "+experiment=fig5_threshold_tiny", *FIXTURE, f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = tmp_path / "fig5_threshold_tiny"
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == 8 and all(r["status"] == "ok" for r in results)  # 6 thresholds, k=1, k=2
    assert len(list(sweep.glob("*/.hydra"))) == 18

    df = load_sweep(sweep)
    assert df["status"].value_counts().to_dict() == {"duplicate": 10, "ok": 8}
    report = build_report([sweep])
    assert report.problems.empty
    drawn = {f.name: f for f in report.figures if not f.skipped}
    skipped = {f.name for f in report.figures if f.skipped}
    assert {"threshold_sweep", "pareto", "latency_breakdown"} <= set(drawn)
    assert {"block_size_sweep", "kv_similarity"} <= skipped  # one block length, no KV metric
    assert "(c): points labelled" in drawn["threshold_sweep"].images[0][1]  # fixed-k panel drawn
    for f in report.figures:
        assert all(p.exists() and p.stat().st_size > 0 for p in f.paths)
    html = report.html.read_text()
    for src in re.findall(r'<img[^>]+src="([^"]+)"', html):
        assert (report.html.parent / src).stat().st_size > 0
    md = report.markdown.read_text()
    for r in results:  # every job's throughput appears as the report prints it
        assert f"{r['metrics']['tokens_per_s']:.1f}" in md or f"{r['metrics']['tokens_per_s']:.2f}" in md

    # no baseline yet: the report says so and gives the command that adds it; run that command
    command = re.search(r"Add the baseline cells with:\n\n```\n(.*)\n```", md).group(1)
    args = shlex.split(command)
    assert args[:3] == ["python", "run.py", "-m"] and args[-3:] == ["cache=none", "decoding=fixed", "steps=${gen_length}"]
    proc = run_cli(args[2:], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = load_sweep(sweep)
    base = df[df["job_dir"].str.contains("cache=none,decoding=fixed")]
    assert sorted(base["status"]) == ["duplicate"] * (len(base) - 1) + ["ok"]  # one baseline: none, fixed, k=1
    ok = base[base["status"] == "ok"].iloc[0]
    assert (ok["cache.name"], ok["decoding.name"], ok["steps"]) == ("none", "fixed", 32)
    md = build_report([sweep]).markdown.read_text()
    assert "No baseline" not in md
    assert re.search(r"\| baseline \| [\d.]+ \| [\d.]+ \| (?:[\d.]+–[\d.]+ \| )?1\.00 \|", md)


def test_fake_results_have_the_keys_of_a_real_job(tmp_path):
    """tests/test_analysis_fakes.py mirrors the real schema: a real job and its fake agree."""
    proc = run_cli(["+experiment=fig5_threshold_tiny", "+cell=fixed_steps16", *FIXTURE,
                    f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (job,) = (tmp_path / "fig5_threshold_tiny").glob("*/results.json")
    real = json.loads(job.read_text())
    overrides = yaml.safe_load((job.parent / ".hydra" / "overrides.yaml").read_text())
    composed, cfg = job_config(overrides, real["sweep"])
    assert yaml.safe_load(composed) == yaml.safe_load((job.parent / ".hydra" / "config.yaml").read_text())
    assert cfg == real["config"]
    fake = fake_results(cfg, real["config_hash"], random.Random(0))
    assert set(fake) | {"samples"} == set(real)  # write_job adds the samples record
    assert _flat_keys(fake["config"]) == _flat_keys(real["config"])
    assert set(fake["env"]) == set(real["env"])
    # every metric a job writes is faked; the optional timing spread keys may come or not
    spread = fake_results(cfg, real["config_hash"], random.Random(0), spread=0.05)["metrics"]
    assert set(fake["metrics"]) <= set(real["metrics"]) <= set(spread)


@pytest.mark.parametrize("cell", ["swept", "fixed_steps32", "fixed_steps16"])
def test_every_cell_option_composes_and_validates(cell):
    swept = compose(["+experiment=fig5_threshold_tiny"])
    cfg = compose(["+experiment=fig5_threshold_tiny", f"+cell={cell}"])
    validate(cfg)
    if cell == "swept":
        assert cfg == swept
    else:
        assert (cfg.cache.name, cfg.decoding.name) == ("dual", "fixed")
        assert cfg.steps == int(cell.removeprefix("fixed_steps"))
