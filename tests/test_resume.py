"""Trustworthy resume: a rerun skips a job only when results.json is a well-formed result and the
samples it describes are on disk unchanged; anything else is computed again after a one-line
warning. sweep.csv is rebuilt by every run, skipped jobs included; a finished job whose W&B run
was lost is logged again from disk; the report reads a corrupt results.json as a failed row."""
from __future__ import annotations

import csv
import json
import logging
import shutil

import pytest

from conftest import TINY, compose, needs_fixtures, run_cli
from dllm_bench import results as R
from dllm_bench.job import run_job
from fixture_paths import ROOT

pytestmark = needs_fixtures
CELL = ["n_samples=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished job (sweep folder "s", job folder "j"), copied by each test."""
    base = tmp_path_factory.mktemp("finished")
    res = run_job(compose(CELL), base / "s" / "j", ROOT)
    assert res["status"] == "ok"
    return base / "s"


def _sweep(tmp_path, finished):
    sweep = tmp_path / "s"
    shutil.copytree(finished, sweep)
    return sweep, sweep / "j"


def _redo_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("[redo]")]


def test_samples_record_describes_the_samples_file(finished):
    res = json.loads((finished / "j" / "results.json").read_text())
    data = (finished / "j" / "samples.jsonl").read_bytes()
    import hashlib
    assert res["samples"] == {"count": 2, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert R.load_job(finished / "j") == (res, None)


def test_a_trusted_result_is_skipped(tmp_path, finished, caplog):
    sweep, job = _sweep(tmp_path, finished)
    before = (job / "results.json").read_bytes()
    with caplog.at_level(logging.INFO):
        res = run_job(compose(CELL), job, ROOT)
    assert (job / "results.json").read_bytes() == before and res == json.loads(before)
    assert any(r.getMessage().startswith("[skip] j") for r in caplog.records) and not _redo_lines(caplog)


@pytest.mark.parametrize("text,problem", [
    ("[]", "results.json holds a JSON list, not an object"),
    ("null", "results.json holds a JSON NoneType, not an object"),
    ("\x00\x01garbage", "results.json is not valid JSON"),
    ('{"status": "ok"', "results.json is not valid JSON"),
    ("7", "results.json holds a JSON int"),
])
def test_corrupt_results_json_is_redone_with_one_warning(tmp_path, finished, caplog, text, problem):
    sweep, job = _sweep(tmp_path, finished)
    (job / "results.json").write_text(text)
    res = run_job(compose(CELL), job, ROOT)
    assert res["status"] == "ok" and json.loads((job / "results.json").read_text()) == res
    [line] = _redo_lines(caplog)
    assert line.startswith(f"[redo] j: {problem}") and line.endswith("computing it again") and "\n" not in line


@pytest.mark.parametrize("edit,problem", [
    ({"status": "done"}, "status 'done'"),
    ({"config_hash": None}, "no config_hash str"),
    ({"metrics": [1, 2]}, "no metrics dict"),
    ({"samples": {"count": "2"}}, "malformed samples record"),
])
def test_results_json_off_schema_is_redone(tmp_path, finished, caplog, edit, problem):
    sweep, job = _sweep(tmp_path, finished)
    res = json.loads((job / "results.json").read_text())
    (job / "results.json").write_text(json.dumps({**res, **edit}))
    assert run_job(compose(CELL), job, ROOT)["status"] == "ok"
    [line] = _redo_lines(caplog)
    assert problem in line


def _flip_one_byte(path):
    data = bytearray(path.read_bytes())
    i = data.index(b'"output": "') + len(b'"output": "')
    data[i] = ord("X") if data[i] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,problem", [
    (lambda p: p.unlink(), "samples.jsonl is missing"),
    (lambda p: p.write_text("garbage\n"), "samples.jsonl has 8 bytes"),
    (lambda p: p.write_text(p.read_text().splitlines(keepends=True)[0]), "samples.jsonl has"),
    (_flip_one_byte, "samples.jsonl does not match the sha256"),  # same size: only the hash sees it
])
def test_samples_that_do_not_match_an_ok_result_are_redone(tmp_path, finished, caplog, damage, problem):
    sweep, job = _sweep(tmp_path, finished)
    damage(job / "samples.jsonl")
    res = run_job(compose(CELL), job, ROOT)
    assert res["status"] == "ok" and len((job / "samples.jsonl").read_text().splitlines()) == 2
    [line] = _redo_lines(caplog)
    assert problem in line
    assert R.load_job(job)[1] is None


def test_results_from_before_the_samples_record_are_checked_by_rows(tmp_path, finished, caplog):
    sweep, job = _sweep(tmp_path, finished)
    res = json.loads((job / "results.json").read_text())
    del res["samples"]
    (job / "results.json").write_text(json.dumps(res))
    assert R.load_job(job)[1] is None  # an older sweep stays resumable
    (job / "samples.jsonl").write_text('{"id": 1}\n')
    assert R.load_job(job)[1] == "samples.jsonl has 1 rows, results.json says 2"
    (job / "samples.jsonl").write_text('{"id": 1}\nnot json\n')
    assert R.load_job(job)[1] == "samples.jsonl holds a line that is not a JSON object"


def test_sweep_csv_is_rebuilt_when_every_job_is_skipped(tmp_path, finished):
    sweep, job = _sweep(tmp_path, finished)
    (sweep / "sweep.csv").unlink()
    run_job(compose(CELL), job, ROOT)
    [row] = list(csv.DictReader((sweep / "sweep.csv").open()))
    assert row["job_dir"] == "j" and row["status"] == "ok" and "sharing.other_jobs_max" in row
    (sweep / "sweep.csv").write_text("job_dir,status\nstale,ok\n")
    run_job(compose(CELL), job, ROOT)
    assert [r["job_dir"] for r in csv.DictReader((sweep / "sweep.csv").open())] == ["j"]


def test_sweep_table_and_find_done_survive_corrupt_neighbours(tmp_path, finished):
    sweep, job = _sweep(tmp_path, finished)
    chash = json.loads((job / "results.json").read_text())["config_hash"]
    for name, text in {"a": "[]", "b": "null", "c": "{", "d": '{"status": "ok", "config_hash": 5}'}.items():
        (sweep / name).mkdir()
        (sweep / name / "results.json").write_text(text)
    R.rebuild_sweep_table(sweep)
    assert [r["job_dir"] for r in csv.DictReader((sweep / "sweep.csv").open())] == ["j"]
    assert R.find_done(sweep, chash)[0] == "j"


def test_a_finished_job_whose_wandb_run_was_lost_is_logged_from_disk(tmp_path, monkeypatch, caplog):
    from dllm_bench.logging_wandb import WandbLogger
    from test_wandb import run_contents

    monkeypatch.setenv("WANDB_MODE", "offline")
    job = tmp_path / "s" / "j"

    def killed(self, results, samples, job_dir):
        raise KeyboardInterrupt  # the job is killed after results.json, before W&B has its run

    with monkeypatch.context() as m:
        m.setattr(WandbLogger, "_log", killed)
        with pytest.raises(KeyboardInterrupt):
            run_job(compose(["logger=wandb", "n_samples=1"]), job, ROOT)
    res = json.loads((job / "results.json").read_text())
    assert res["status"] == "ok" and not (job / "wandb").exists()

    with caplog.at_level(logging.INFO):
        assert run_job(compose(["logger=wandb", "n_samples=1"]), job, ROOT) == res  # skipped, not recomputed
    assert any(r.getMessage().startswith("[relog] j") for r in caplog.records)
    _, config, summary = run_contents(job)
    assert config == res["config"] and summary["config_hash"] == res["config_hash"]
    assert summary["quality/accuracy"] == res["metrics"]["accuracy"]

    caplog.clear()
    run_job(compose(["logger=wandb", "n_samples=1"]), job, ROOT)  # mirrored now: not logged twice
    assert not any(r.getMessage().startswith("[relog]") for r in caplog.records)
    assert len(list((job / "wandb").glob("offline-run-*"))) == 1


def test_logger_none_never_relogs_and_old_results_are_left_alone(tmp_path, finished):
    sweep, job = _sweep(tmp_path, finished)
    assert not R.mirrored(job, "dllm_bench.logging_wandb.WandbLogger")
    res = json.loads((job / "results.json").read_text())
    del res["samples"]
    (job / "results.json").write_text(json.dumps(res))
    assert R.mirrored(job, "dllm_bench.logging_wandb.WandbLogger")  # written before the marker existed


@pytest.mark.parametrize("text", ["[]", "null", "{oops", '{"status": "ok", "metrics": [1]}'])
def test_the_report_reads_a_corrupt_results_json_as_a_failed_row(tmp_path, finished, text):
    from analysis import load_sweep

    sweep, _ = _sweep(tmp_path, finished)
    (sweep / "bad").mkdir()
    (sweep / "bad" / "results.json").write_text(text)
    df = load_sweep(sweep).set_index("job_dir")
    assert df.loc["j", "status"] == "ok"
    assert df.loc["bad", "status"] == "failed" and df.loc["bad", "error"].startswith("results.json unreadable")


@pytest.mark.slow
def test_rerun_of_a_damaged_sweep_redoes_only_the_damage(tmp_path):
    """Through run.py, the issue's cases: results.json of ``[]``, garbage samples.jsonl next to an
    ok results.json, sweep.csv deleted. The rerun redoes the two damaged cells (one warning each,
    exit 0) and rebuilds sweep.csv; a further rerun skips both and rebuilds a deleted sweep.csv."""
    args = ["-m", *TINY, "n_samples=1", "cache=none,dual", "sweep_name=dmg", f"sweeps_dir={tmp_path}"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = tmp_path / "dmg"
    a, b = sorted(p.parent for p in sweep.glob("*/results.json"))
    (a / "results.json").write_text("[]")
    (b / "samples.jsonl").write_text("garbage\n")
    (sweep / "sweep.csv").unlink()
    proc = run_cli(args, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert out.count("[redo]") == 2 and out.count("[skip]") == 0 and out.count("[ok]") == 2
    assert all(R.load_job(j) == (json.loads((j / "results.json").read_text()), None) for j in (a, b))
    assert sorted(r["job_dir"] for r in csv.DictReader((sweep / "sweep.csv").open())) == [a.name, b.name]
    before = {j: (j / "results.json").read_bytes() for j in (a, b)}
    (sweep / "sweep.csv").unlink()
    proc = run_cli(args, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and out.count("[skip]") == 2 and out.count("[redo]") == 0
    assert {j: (j / "results.json").read_bytes() for j in (a, b)} == before
    assert len(list(csv.DictReader((sweep / "sweep.csv").open()))) == 2
