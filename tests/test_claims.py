"""Coordinated sweeps: a per-cell claim (owner + heartbeat) keeps two launchers from computing one
cell, a claim left by a killed launcher never blocks, and results.json says what else ran on the
host while the job was measured."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, compose, needs_fixtures
from dllm_bench import claims as C
from dllm_bench.job import run_job
from fixture_paths import ROOT

pytestmark = needs_fixtures
HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def _own_registry(tmp_path, monkeypatch):
    """Other people's jobs on this machine must not show up as sharing it."""
    monkeypatch.setenv("DLLM_BENCH_JOBS_DIR", str(tmp_path / "jobs"))


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is gone, as a killed launcher's is
    return proc.pid


def _write_claim(sweep, key, host, pid, age_s=0.0):
    path = sweep / C.CLAIMS / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "job": "other", "started": 0, "token": "t"}))
    if age_s:
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_one_holder_per_cell_and_release(tmp_path):
    first, second = C.Claim(tmp_path, "h", "a"), C.Claim(tmp_path, "h", "b")
    assert first.acquire() is None
    holder = second.acquire()
    assert holder["pid"] == os.getpid() and holder["job"] == "a"
    assert C.Claim(tmp_path, "other-cell", "c").acquire() is None  # another cell is free
    first.release()
    assert not first.path.exists()
    assert second.acquire() is None
    second.release()


@pytest.mark.parametrize("host,age_s,pid_kind,stale", [
    (HOST, 0, "dead", True),                # a killed launcher on this host: free at once
    (HOST, 0, "live", False),               # a live launcher here
    ("elsewhere", 0, "live", False),        # another host with a fresh heartbeat
    ("elsewhere", C.STALE_S + 5, "live", True),  # another host that stopped beating
    (HOST, C.STALE_S + 5, "live", True),    # a hung process here
])
def test_stale_claims_are_taken_over(tmp_path, live_pid, dead_pid, caplog, host, age_s, pid_kind, stale):
    path = _write_claim(tmp_path, "h", host, live_pid if pid_kind == "live" else dead_pid, age_s)
    claim = C.Claim(tmp_path, "h", "mine")
    holder = claim.acquire()
    try:
        assert (holder is None) == stale
        assert json.loads(path.read_text())["job"] == ("mine" if stale else "other")
        assert any("taking over the stale claim" in r.getMessage() for r in caplog.records) == stale
    finally:
        claim.release()
    assert path.exists() != stale  # a claim that is not ours is never removed


def test_unreadable_claim_is_stale(tmp_path):
    (tmp_path / C.CLAIMS).mkdir()
    (tmp_path / C.CLAIMS / "h.json").write_text("{torn")
    claim = C.Claim(tmp_path, "h", "mine")
    assert claim.acquire() is None
    claim.release()


def test_heartbeat_renews_and_notices_a_takeover(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(C, "HEARTBEAT_S", 0.05)
    claim = C.Claim(tmp_path, "h", "mine")
    claim.acquire()
    os.utime(claim.path, (1, 1))
    deadline = time.time() + 10
    while claim.path.stat().st_mtime < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert claim.path.stat().st_mtime > time.time() - 60  # renewed
    _write_claim(tmp_path, "h", "elsewhere", 1)  # taken over while this process was stalled
    while not claim.lost and time.time() < deadline:
        time.sleep(0.05)
    assert claim.lost and any("took this cell's claim" in r.getMessage() for r in caplog.records)
    claim.release()
    assert json.loads(claim.path.read_text())["host"] == "elsewhere"  # the new owner's claim stays


def test_pid_alive():
    assert C.pid_alive(os.getpid()) and not C.pid_alive(0) and not C.pid_alive(-1) and not C.pid_alive(10**30)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while time.time() < deadline and Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        time.sleep(0.05)
    assert not C.pid_alive(zombie.pid)  # exited, not reaped yet
    zombie.wait()
    assert not C.pid_alive(zombie.pid)


def test_a_cell_claimed_by_a_live_launcher_is_skipped_then_computed_once_it_dies(tmp_path, caplog):
    cfg = compose(["n_samples=1"])
    from dllm_bench.config import RUN_ONLY_KEYS
    from dllm_bench.results import config_hash
    from omegaconf import OmegaConf

    chash = config_hash(OmegaConf.to_container(cfg, resolve=True), RUN_ONLY_KEYS)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_claim(tmp_path / "s", chash, HOST, holder.pid)
        with caplog.at_level(logging.INFO):
            assert run_job(cfg, tmp_path / "s" / "j", ROOT) is None
        assert not (tmp_path / "s" / "j" / "results.json").exists()
        assert any(r.getMessage().startswith(f"[busy] j: {HOST}:{holder.pid} (other) is computing this cell")
                   for r in caplog.records)
        assert (tmp_path / "s" / "sweep.csv").exists()  # rebuilt on this path too
    finally:
        holder.kill()  # the other launcher is killed: its claim must not block
        holder.wait()
    res = run_job(cfg, tmp_path / "s" / "j", ROOT)
    assert res["status"] == "ok" and not list((tmp_path / "s" / C.CLAIMS).glob("*.json"))


def test_results_record_other_jobs_on_the_host(tmp_path, live_pid, dead_pid):
    alone = run_job(compose(["n_samples=1"]), tmp_path / "s" / "a", ROOT)
    assert alone["sharing"]["other_jobs"] == [] and alone["sharing"]["other_jobs_max"] == 0
    assert alone["sharing"]["tracked"] and alone["sharing"]["cpus"] == os.cpu_count()
    assert alone["sharing"]["load_1m_max"] >= 0
    jobs, now = tmp_path / "jobs", time.time()

    def entry(name, pid, started, ended=None, beat_age=0.0):
        rec = {"host": HOST, "pid": pid, "job": name, "started": started, "token": name}
        (jobs / f"{name}.json").write_text(json.dumps(rec if ended is None else dict(rec, ended=ended)))
        os.utime(jobs / f"{name}.json", (now - beat_age, now - beat_age))

    entry("running", live_pid, now - 60)                  # another sweep's job, still running
    entry("ends-during", live_pid, now - 60, now + 3600)   # ends while ours runs (clock moved for the test)
    entry("killed-before", dead_pid, now - 7200, beat_age=3600)  # killed an hour ago
    entry("ancient", dead_pid, now - 3 * 86400, now - 2 * 86400)
    entry("garbage", "x", "y")
    shared = run_job(compose(["n_samples=1", "seed=1"]), tmp_path / "s" / "b", ROOT)
    assert shared["sharing"]["other_jobs"] == [f"{HOST}:{live_pid} (ends-during)", f"{HOST}:{live_pid} (running)"]
    assert shared["sharing"]["other_jobs_max"] == 2
    assert not (jobs / "ancient.json").exists()  # older than KEEP_S: removed
    ours = [json.loads(p.read_text()) for p in jobs.glob(f"{HOST}-{os.getpid()}-*.json")]
    assert len(ours) == 2 and all(o["ended"] >= o["started"] for o in ours)  # a and b, both ended


def test_a_job_that_started_and_ended_within_ours_counts(tmp_path, monkeypatch):
    """Not a sample at the start and the end: the registry keeps the runs, so a short job that ran
    entirely inside this one (e.g. on a launcher of another sweep) is still seen."""
    from dllm_bench import job as J

    real, jobs = J._measure, tmp_path / "jobs"

    def measure_while_another_job_comes_and_goes(*args):
        t = time.time()
        rec = {"host": HOST, "pid": 999999, "job": "short", "started": t, "ended": t + 0.01, "token": "s"}
        (jobs / "short.json").write_text(json.dumps(rec))
        return real(*args)

    monkeypatch.setattr(J, "_measure", measure_while_another_job_comes_and_goes)
    res = run_job(compose(["n_samples=1"]), tmp_path / "s" / "j", ROOT)
    assert res["sharing"]["other_jobs"] == [f"{HOST}:999999 (short)"] and res["sharing"]["other_jobs_max"] == 1


def test_most_at_once():
    assert C.most_at_once([]) == 0
    assert C.most_at_once([(0, 1), (1, 2)]) == 1  # back to back: never at once
    assert C.most_at_once([(0, 3), (1, 2), (1.5, 4)]) == 3


def _launch(args, cwd, env_extra):
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", PYTHONPATH=path,
               **env_extra)
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_launchers_on_one_sweep_compute_each_cell_once(tmp_path):
    args = ["-m", *TINY, "n_samples=2", "cache=none,prefix,dual", "sweep_name=two", f"sweeps_dir={tmp_path}"]
    env = {"DLLM_BENCH_JOBS_DIR": str(tmp_path / "jobs")}
    procs = [_launch(args, tmp_path, env) for _ in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-1500:] + outs[1][-1500:]
    out = "".join(outs)
    assert out.count("[ok]") == 3  # every cell computed exactly once over both launchers
    assert out.count("[ok]") + out.count("[skip]") + out.count("[busy]") == 6
    sweep = tmp_path / "two"
    res = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(res) == 3 and all(r["status"] == "ok" for r in res)
    assert len(list(sweep.glob("*/.hydra"))) == 3
    assert not list((sweep / C.CLAIMS).glob("*.json"))
    assert sweep.joinpath("sweep.csv").read_text().count("\n") == 4


@pytest.mark.slow
def test_a_killed_launcher_leaves_no_blocking_claim(tmp_path):
    args = [*TINY, "n_samples=2", "sweep_name=k", f"sweeps_dir={tmp_path}"]
    env = {"DLLM_BENCH_JOBS_DIR": str(tmp_path / "jobs")}
    proc = _launch(args, tmp_path, env)
    claims = tmp_path / "k" / C.CLAIMS
    deadline = time.time() + 120
    while not list(claims.glob("*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert list(claims.glob("*.json"))  # left behind by the killed launcher
    again = _launch(args, tmp_path, env)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out[-2000:]
    assert "taking over the stale claim" in out and "[ok]" in out
    assert not list(claims.glob("*.json"))
