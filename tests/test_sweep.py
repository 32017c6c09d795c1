"""Sweeps through ``run.py``: the issue's six-job multirun, its rerun (all skipped), failures that
do not stop a sweep, make the launch exit 1 and are retried, and a two-job sweep through the
submitit_local launcher."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import SIX_JOBS, TINY, needs_fixtures, run_cli

pytestmark = [needs_fixtures, pytest.mark.slow]


def _results(sweep):
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def test_six_jobs_complete(six_job_sweep):
    sweep, _, _ = six_job_sweep
    res = _results(sweep)
    assert len(res) == 6 and all(r["status"] == "ok" for r in res.values())
    cells = {(r["config"]["cache"]["name"], r["config"]["decoding"]["threshold"]) for r in res.values()}
    assert cells == {(c, t) for c in ("none", "prefix", "dual") for t in (0.7, 0.9)}
    assert len({r["config_hash"] for r in res.values()}) == 6
    for job, r in res.items():
        assert "cache=" in job and r["sweep"] == "six" and r["schema_version"] == 1
        assert set(r["metrics"]) >= {"accuracy", "tokens_per_s", "nfe_mean", "latency_s_mean", "latency_s_median",
                                     "latency_s_p90", "tokens_per_forward", "ms_per_forward",
                                     "cache_refreshes_mean", "peak_memory_bytes", "kv_cache_bytes", "n_samples",
                                     "accuracy_pass_s", "tokens_per_s_q25", "tokens_per_s_q75", "timing_rel_iqr",
                                     "load_1m", "compute_skipped"}
        assert r["config"]["model"]["path"] == "../shared/fixtures/llada_tiny"  # as written, not resolved
        assert len((sweep / job / "samples.jsonl").read_text().splitlines()) == 2
        assert (sweep / job / ".hydra" / "config.yaml").exists()
    table = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert sorted(row["job_dir"] for row in table) == sorted(res)
    assert {row["metrics.nfe_mean"] for row in table} == {str(r["metrics"]["nfe_mean"]) for r in res.values()}
    assert (sweep / "multirun.yaml").exists()


def test_rerun_skips_all_six(six_job_sweep):
    sweep, cwd, _ = six_job_sweep
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    proc = run_cli([*SIX_JOBS, f"sweeps_dir={cwd}"], cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[skip]") + proc.stderr.count("[skip]") == 6
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")} == before


def test_failed_job_does_not_stop_the_sweep_and_is_retried(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    # two cells; the first one's task fails while the flag file exists
    args = ["-m", *TINY, "n_samples=1", "task._target_=conftest.FlakyTask",
            f"+task.fail_flag={flag},{tmp_path / 'absent'}", "sweep_name=flaky", f"sweeps_dir={tmp_path}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]  # the other cell ran, then the launch reports the failure
    first = _results(tmp_path / "flaky")
    assert sorted(r["status"] for r in first.values()) == ["failed", "ok"]
    failed = next(j for j, r in first.items() if r["status"] == "failed")
    assert first[failed]["error"].startswith("RuntimeError: injected failure")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cell +task.fail_flag={flag} failed: {first[failed]['error']} "
                      f"(traceback in flaky/{failed}/run.log)"]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in (tmp_path / "flaky" / failed / "run.log").read_text()
    flag.unlink()
    proc = run_cli(args, tmp_path)  # the same sweep again: the ok cell is skipped, the failed one rerun
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = _results(tmp_path / "flaky")
    assert all(r["status"] == "ok" for r in again.values()) and again.keys() == first.keys()
    assert (proc.stdout + proc.stderr).count("[skip]") == 1
    ok = next(j for j in first if j != failed)
    assert again[ok] == first[ok]


def test_submitit_local_two_jobs(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()  # one of the two jobs fails; the other must still finish
    proc = run_cli(["-m", "hydra/launcher=submitit_local", *TINY, "n_samples=1", "n_parallel=2",
                    "num_threads=null", "task._target_=conftest.FlakyTask",
                    f"+task.fail_flag={tmp_path / 'absent'},{flag}", "sweep_name=sub", f"sweeps_dir={tmp_path}"],
                   tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]  # outcomes are read back from the sweep folder
    sweep = tmp_path / "sub"
    res = _results(sweep)
    assert sorted(r["status"] for r in res.values()) == ["failed", "ok"]
    assert [line.split(" failed: ")[0] for line in proc.stderr.splitlines() if line.startswith("error:")] == \
        [f"error: cell +task.fail_flag={flag}"]
    assert "== 2 cells: 1 ok, 1 failed ==" in proc.stdout
    assert all(r["config"]["n_parallel"] == 2 for r in res.values())
    assert len(list(csv.DictReader((sweep / "sweep.csv").open()))) == 2
    assert (sweep / ".submitit").is_dir()  # it really went through submitit
