"""analysis.load: sweep folders -> one DataFrame; plus the small helpers the report relies on
(roles and labels, the Pareto front, commands and expected jobs from Hydra's records)."""
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis import NotASweepError, load, load_sweep, load_sweeps, methods, spread
from analysis.commands import job_command, sweep_command
from analysis.figures import pareto_front
from analysis.load import expected_overrides, read_multirun
from conftest import compose
from fixture_paths import ROOT

try:
    from test_analysis_fakes import make_sweep
except ImportError:  # tests/ collected as a package
    from tests.test_analysis_fakes import make_sweep


def _results(sweep_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def test_one_row_per_job_with_config_metrics_and_status(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "threshold=0.7,0.9"],
                       ["decoding=threshold"], failed={1}, missing={2})
    df = load_sweep(sweep)
    assert sorted(df["job_dir"]) == ["0", "1", "2", "3"]
    assert dict(zip(df["job_dir"], df["status"])) == {"0": "ok", "1": "failed", "2": "missing",
                                                      "3": "ok"}
    for col in ("model.name", "cache.name", "decoding.name", "decoding.threshold", "block_length",
                "gen_length", "task.name", "metrics.accuracy", "metrics.tokens_per_s", "status",
                "job_dir", "config_hash", "sweep", "env.torch"):
        assert col in df.columns, col
    for job, res in _results(sweep).items():
        row = df[df["job_dir"] == job].iloc[0]
        assert row["config_hash"] == res["config_hash"] and row["sweep"] == res["sweep"]
        assert row["cache.name"] == res["config"]["cache"]["name"]
        assert row["decoding.threshold"] == res["config"]["decoding"]["threshold"]
        for name, value in res["metrics"].items():
            assert row[f"metrics.{name}"] == pytest.approx(value)
    failed = df[df["status"] == "failed"].iloc[0]
    assert failed["error"] == _results(sweep)["1"]["error"]
    missing = df[df["status"] == "missing"].iloc[0]  # config read from .hydra/config.yaml
    assert missing["cache.name"] == "dual" and missing["overrides"][-1] == "threshold=0.7"
    # the config switch measure.kv_similarity must not pose as a measurement
    assert "measure.kv_similarity" in df.columns and "metrics.kv_similarity" not in df.columns
    assert df["decoding.threshold"].dtype == float


def test_threshold_is_numeric_across_sweeps_and_sweeps_concatenate(tmp_path):
    a = make_sweep(tmp_path, "a", ["cache=none,dual"], ["decoding=fixed"])
    b = make_sweep(tmp_path, "b", ["threshold=0.7,0.8"], ["decoding=threshold"], dirnames="overrides")
    df = load_sweeps([a, b])
    assert len(df) == 4 and sorted(df["sweep"].unique()) == ["a", "b"]
    assert df["decoding.threshold"].dtype == float  # None for fixed, numbers for threshold
    assert df.loc[df["sweep"] == "a", "decoding.threshold"].isna().all()
    assert set(df.loc[df["sweep"] == "b", "job_dir"]) == {"decoding=threshold,threshold=0.7",
                                                          "decoding=threshold,threshold=0.8"}


def test_half_finished_sweep_lists_jobs_not_started(tmp_path):
    axes = ["cache=none,prefix", "threshold=0.7,0.8,0.9"]
    sweep = make_sweep(tmp_path, "s", axes, ["decoding=threshold"], stop_after=4)
    df = load_sweep(sweep)
    assert (df["status"] == "ok").sum() == 4
    not_started = df[df["status"] == "not_started"]
    combos = [["logger=none", "decoding=threshold", *c] for c in itertools.product(
        ["cache=none", "cache=prefix"], ["threshold=0.7", "threshold=0.8", "threshold=0.9"])]
    assert sorted(map(sorted, not_started["overrides"])) == sorted(map(sorted, combos[4:]))


@pytest.mark.parametrize("content", ["empty", "files", "missing"])
def test_not_a_sweep_is_a_one_line_error_naming_the_path(tmp_path, content):
    path = tmp_path / "nothing"
    if content != "missing":
        path.mkdir()
    if content == "files":
        (path / "notes.txt").write_text("hello")
        (path / "sub").mkdir()
    with pytest.raises(NotASweepError) as err:
        load_sweep(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_sweep_csv_alone_is_enough(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual"], multirun=False)
    expected = _results(sweep)
    for job in ("0", "1"):
        for f in (sweep / job).rglob("*"):
            if f.is_file():
                f.unlink()
        for d in sorted((sweep / job).rglob("*"), reverse=True):
            d.rmdir()
        (sweep / job).rmdir()
    df = load_sweep(sweep)
    assert sorted(df["job_dir"]) == ["0", "1"]
    for job, res in expected.items():
        row = df[df["job_dir"] == job].iloc[0]
        assert row["metrics.accuracy"] == pytest.approx(res["metrics"]["accuracy"])


def test_expected_jobs_and_commands_from_multirun_yaml(tmp_path):
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "threshold=0.7,0.9"],
                       ["decoding=threshold"], stop_after=0)
    multirun = read_multirun(sweep)
    assert len(expected_overrides(multirun)) == 4
    multirun["hydra"]["sweeper"]["params"] = {"block_length": "8,16,32"}
    assert len(expected_overrides(multirun)) == 12
    multirun["hydra"]["overrides"]["hydra"].append("hydra.sweep.dir=my sweeps/x")
    cmd = sweep_command(multirun)
    assert cmd == ("python run.py -m 'hydra.sweep.dir=my sweeps/x' logger=none decoding=threshold "
                   "cache=none,dual threshold=0.7,0.9")
    assert job_command(["cache=dual", "task.name=a b"]) == "python run.py cache=dual 'task.name=a b'"
    assert job_command(None) is None


def test_roles_and_labels_follow_the_paper_table():
    def row(cache, decoding, threshold=None, steps=64):
        return pd.Series({"cache.name": cache, "decoding.name": decoding, "gen_length": 64,
                          "steps": steps, "decoding.threshold": threshold, "block_length": 16})
    cases = {
        ("none", "fixed"): ("baseline", "baseline"),
        ("dual", "fixed"): ("+cache", "+cache (dual)"),
        ("none", "threshold", 0.9): ("+parallel", "+parallel (threshold 0.9)"),
        ("prefix", "threshold", 0.7): ("+cache +parallel", "+cache +parallel (prefix, threshold 0.7)"),
        ("none", "fixed", None, 32): ("fixed k", "fixed k=2"),
        ("dual", "fixed", None, 16): ("fixed k", "+cache (dual), fixed k=4"),
    }
    for args, (role, label) in cases.items():
        assert (methods.role(row(*args)), methods.label(row(*args))) == (role, label)
    assert methods.label(row("dual", "fixed"), with_block=True) == "+cache (dual, block 16)"


def test_pareto_front_keeps_only_undominated_points():
    x = np.array([1.0, 2.0, 3.0, 2.0, 0.5])
    y = np.array([0.9, 0.8, 0.5, 0.7, 0.95])
    assert pareto_front(x, y) == [4, 0, 1, 2]  # point 3 is beaten by point 1 on both axes


def test_speedup_table_averages_repeats_of_one_configuration(tmp_path):
    from analysis import speedup_table

    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "seed=0,1"], ["decoding=fixed"])
    table = speedup_table(load_sweep(sweep)).set_index("Method")
    assert list(table.index) == ["baseline", "+cache (dual)"] and list(table["Jobs"]) == [2, 2]
    res = _results(sweep)
    by_cache = {c: [r["metrics"] for r in res.values() if r["config"]["cache"]["name"] == c]
                for c in ("none", "dual")}
    mean = {c: {k: np.mean([m[k] for m in ms]) for k in ("accuracy", "tokens_per_s")}
            for c, ms in by_cache.items()}
    assert table.loc["baseline", "Accuracy (%)"] == pytest.approx(mean["none"]["accuracy"] * 100)
    assert table.loc["+cache (dual)", "Speed-up (× baseline)"] == pytest.approx(
        mean["dual"]["tokens_per_s"] / mean["none"]["tokens_per_s"])


def test_cells_skipped_as_duplicates_are_not_missing(tmp_path):
    # fixed decoding does not read the threshold, so each cache's second cell repeats its first
    sweep = make_sweep(tmp_path, "s", ["cache=none,dual", "threshold=0.7,0.9"], ["decoding=fixed"])
    df = load_sweep(sweep).set_index("job_dir")
    assert dict(df["status"]) == {"0": "ok", "1": "duplicate", "2": "ok", "3": "duplicate"}
    assert df.loc["1", "duplicate_of"] == "0" and df.loc["3", "duplicate_of"] == "2"
    assert df.loc["3", "cache.name"] == "dual" and "job 2" in df.loc["3", "error"]
    # a folder without results whose config no ok job holds is still missing
    other = make_sweep(tmp_path, "t", ["threshold=0.7,0.9"], ["decoding=threshold"], missing={1})
    assert list(load_sweep(other)["status"]) == ["ok", "missing"]


def test_a_skipped_job_says_which_job_holds_its_results(tmp_path):
    """A real skip writes skipped.json, which the loader turns into a duplicate row."""
    from dllm_bench.job import run_job

    sweep = tmp_path / "s"
    first = run_job(compose(["n_samples=1", "timing.repeats=1", "timing.warmup=0"]), sweep / "a", ROOT)
    (sweep / "b").mkdir()
    run_job(compose(["n_samples=1", "timing.repeats=1", "timing.warmup=0", "num_threads=2"]), sweep / "b", ROOT)
    assert json.loads((sweep / "b" / "skipped.json").read_text()) == {"duplicate_of": "a",
                                                                      "config_hash": first["config_hash"]}
    df = load_sweep(sweep).set_index("job_dir")
    assert df.loc["a", "status"] == "ok" and df.loc["b", "status"] == "duplicate"
    assert df.loc["b", "duplicate_of"] == "a"


def test_timing_spread_gives_the_median_and_quartiles_when_recorded():
    df = pd.DataFrame({"metrics.tokens_per_s": [100.0, 50.0],
                       "metrics.tokens_per_s_median": [90.0, np.nan],
                       "metrics.tokens_per_s_q25": [80.0, np.nan],
                       "metrics.tokens_per_s_q75": [120.0, np.nan],
                       "metrics.latency_s_mean": [2.0, 3.0],
                       "metrics.latency_s_median": [np.nan, 2.5]})
    assert list(spread.value(df, "tokens_per_s")) == [90.0, 50.0]  # median first, else the value
    assert list(spread.value(df, "latency_s")) == [2.0, 2.5]       # median, else the mean
    assert spread.errorbars(df, "tokens_per_s").tolist() == [[10.0, 0.0], [30.0, 0.0]]
    assert spread.errorbars(df, "latency_s") is None                # no quartiles: no bars
    assert list(spread.noisy(df, "tokens_per_s")) == [True, False]  # IQR 40 of 90 > 20%
