"""W&B mirror: the offline run files of the six-job sweep hold the same config and metrics as
results.json; a W&B that cannot write costs a warning, never the local results."""
from __future__ import annotations

import json
import struct

import pytest

from conftest import compose, needs_fixtures
from dllm_bench.job import run_job
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
