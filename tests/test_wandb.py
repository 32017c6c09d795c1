"""W&B mirror: the offline run files of the six-job sweep hold the same config and metrics as
results.json; a W&B that cannot write costs a warning, never the local results; online without a
reachable server costs one short connection attempt per process, then offline with one warning."""
from __future__ import annotations

import json
import socket
import struct
import time
import warnings

import pytest

from conftest import compose, needs_fixtures
from dllm_bench.job import run_job
from dllm_bench import logging_wandb
from dllm_bench.logging_wandb import WandbLogger, wandb_key
from fixture_paths import ROOT

pytestmark = needs_fixtures
BLOCK, HEADER = 32768, 7  # the .wandb file: a LevelDB-style log of protobuf Records


def read_wandb_records(path):
    """Every ``Record`` of a .wandb file (7-byte file header, then 32 KiB blocks of chunks, each
    with a 7-byte header: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, out = HEADER, b"", []
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer too small for a header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        buf += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def wait_for_run_file(job_dir, timeout_s=60):
    """The job's offline .wandb file once complete: in-process, wandb 0.31's ``run.finish()``
    returns before its service has written the records out."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = list((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        if len(files) == 1 and any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(files[0])):
            return files[0]
        assert time.monotonic() < deadline, f"no complete offline run in {job_dir}: {files}"
        time.sleep(0.2)


def run_contents(job_dir):
    """(run record, config dict, summary dict) of the job's one offline run."""
    [run_file] = list((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    run, config, summary = None, {}, {}
    for rec in read_wandb_records(run_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run = rec.run
            config.update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in rec.summary.update if u.key})
    config.pop("_wandb", None)
    return run, config, summary


@pytest.mark.slow
def test_offline_runs_match_results(six_job_sweep):
    sweep, _, _ = six_job_sweep
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(jobs) == 6
    for job in jobs:
        res = json.loads((job / "results.json").read_text())
        run, config, summary = run_contents(job)
        assert config == res["config"]
        for name, value in res["metrics"].items():
            assert summary[wandb_key(name)] == pytest.approx(value), name
        assert summary["status"] == "ok" and summary["config_hash"] == res["config_hash"]
        assert run.run_group == "six"
        assert {f"cache:{res['config']['cache']['name']}", "decoding:threshold",
                "model:fixture_llada_tiny"} <= set(run.tags)


def test_unwritable_wandb_dir_warns_and_keeps_results(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    job = tmp_path / "s" / "j"
    job.mkdir(parents=True)
    (job / "wandb").write_text("a file where W&B wants its folder")
    with pytest.warns(RuntimeWarning, match="W&B logging failed"):
        res = run_job(compose(["logger=wandb", "n_samples=1"]), job, ROOT)
    assert res["status"] == "ok"
    assert json.loads((job / "results.json").read_text())["status"] == "ok"


def test_mode_offline_unless_logged_in_or_set(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert WandbLogger().mode == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert WandbLogger().mode == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert WandbLogger().mode == "disabled"
    assert WandbLogger(mode="offline").mode == "offline"


def test_online_without_network_goes_offline_once(tmp_path, monkeypatch):
    """Two jobs of one process with W&B set online and no server: one short connection attempt,
    one warning, and both runs written offline (instead of a ~90 s stall per job)."""
    with socket.socket() as s:  # a closed local port: no server there, network or not
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setattr(logging_wandb, "_OFFLINE_BECAUSE", {})
    attempts, real = [], logging_wandb._unreachable
    monkeypatch.setattr(logging_wandb, "_unreachable", lambda *a: attempts.append(a) or real(*a))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in (1, 2):
            cfg = compose(["logger=wandb", "n_samples=1", "logger.connect_timeout_s=2", f"seed={seed}"])
            assert run_job(cfg, tmp_path / "s" / f"j{seed}", ROOT)["status"] == "ok"
    messages = [str(w.message) for w in caught]
    offline = [m for m in messages if "cannot be used" in m]
    assert len(offline) == 1 and f"127.0.0.1:{port}" in offline[0] and "offline" in offline[0]
    assert attempts == [("127.0.0.1", port, 2)]
    assert not [m for m in messages if "W&B logging failed" in m]
    for seed in (1, 2):
        run_file = wait_for_run_file(tmp_path / "s" / f"j{seed}")
        run, config, summary = run_contents(run_file.parents[2])
        assert config["seed"] == seed and summary["status"] == "ok"


def test_connection_attempt_is_bounded(monkeypatch):
    """A name lookup or connect that hangs counts as unreachable after the timeout."""
    monkeypatch.setattr(logging_wandb.socket, "create_connection", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    assert logging_wandb._unreachable("api.example", 443, 0.5) == "no answer within 0.5 s"
    assert time.perf_counter() - start < 10
    assert logging_wandb._endpoint("https://api.example") == ("api.example", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert logging_wandb._endpoint("https://api.example") == ("proxy.example", 3128)
    with pytest.raises(ValueError, match="connect_timeout_s must be a finite number > 0, got nan"):
        WandbLogger(connect_timeout_s=float("nan"))
