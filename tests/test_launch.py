"""A launch of ``run.py`` as a whole: every cell of a multirun checked before the first job, the
dry run, exit status and one error line per failed job, Ctrl-C, the end-of-run summary, quiet
output, and the README's offline GSM8K command."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, cli_env, needs_fixtures, run_cli
from dllm_bench import job as J
from dllm_bench.claims import CLAIMS
from dllm_bench.results import load_job
from fixture_paths import DATA, ROOT

pytestmark = needs_fixtures


def _errors(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def tiny(*overrides: str) -> list[str]:
    """``TINY`` with ``overrides`` in place of its own values of the same keys."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [t for t in TINY if t.split("=", 1)[0] not in keys] + list(overrides)


@pytest.mark.parametrize("sweep, bad, needle", [
    ("threshold=0.7,0.9,1.5", "threshold=1.5", "threshold must be a finite number in (0, 1], got 1.5"),
    # only the job's pre-load check finds this one: 32 + 8192 positions do not fit the fixture's 4096
    ("gen_length=32,8192", "gen_length=8192", "+ gen_length=8192 = "),
])
def test_a_bad_value_in_the_last_cell_fails_before_any_job_runs(tmp_path, sweep, bad, needle):
    n = len(sweep.split("=")[1].split(","))
    proc = run_cli(["-m", *tiny(sweep), "sweep_name=bad", f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    [error] = _errors(proc)
    assert error.startswith(f"error: cell {n}/{n} ({bad}): ") and needle in error, error
    assert "Traceback" not in proc.stderr
    assert "Launching" not in proc.stdout + proc.stderr and "[ok]" not in proc.stdout
    assert not (tmp_path / "bad").exists()  # no job folder, no multirun.yaml


def test_dry_run_lists_the_cells_and_runs_none(tmp_path):
    sweep = ["-m", *TINY, "cache=none,dual", "sweep_name=dry", f"sweeps_dir={tmp_path}"]
    proc = run_cli([*sweep, "threshold=0.7,0.9", "--dry-run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "dry").exists()
    cells = [line.split() for line in proc.stdout.splitlines() if re.match(r"\s+\d+/4 ", line)]
    assert [c[:4] for c in cells] == [[f"{i}/4", "run", f"cache={c}", f"threshold={t}"]
                                      for i, (c, t) in enumerate([(c, t) for c in ("none", "dual")
                                                                  for t in ("0.7", "0.9")], 1)]
    assert all(c[-2] == "->" and c[-1].startswith("dry/") and c[2] in c[-1] for c in cells)  # relative to the cwd

    done = run_cli(["-m", *TINY, "cache=dual", "threshold=0.9", "sweep_name=dry", f"sweeps_dir={tmp_path}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    proc = run_cli([*sweep, "threshold=0.9,1.5", "--dry-run"], tmp_path)
    assert proc.returncode == 1
    plans = [line.split()[1] for line in proc.stdout.splitlines() if re.match(r"\s+\d+/4 ", line)]
    assert plans == ["run", "invalid", "skip", "invalid"], proc.stdout
    assert "already ok in" in proc.stdout and "got 1.5" in proc.stdout
    assert len(list((tmp_path / "dry").glob("*/results.json"))) == 1  # still only the one cell that ran


def test_a_launcher_running_jobs_elsewhere_does_not_need_the_device_here(tmp_path):
    """On a login node without a GPU, a Slurm sweep with device=cuda is not refused for it (its jobs
    check the device where they run); the basic launcher runs its jobs here, so it is."""
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    base = ["-m", *TINY, "device=cuda", "threshold=0.7,0.9", f"sweeps_dir={tmp_path}", "--dry-run"]
    slurm = run_cli([*base, "hydra/launcher=slurm_gpu"], tmp_path)
    assert slurm.returncode == 0, slurm.stderr[-2000:]
    assert len(re.findall(r"^\s+\d/2\s+run\s", slurm.stdout, re.M)) == 2
    here = run_cli(base, tmp_path)
    assert here.returncode == 1 and "CUDA is not available" in here.stdout
    assert not list(tmp_path.iterdir())


def test_dry_run_of_one_cell(tmp_path):
    proc = run_cli([*TINY, "sweep_name=one", f"sweeps_dir={tmp_path}", "--dry-run"], tmp_path)
    assert proc.returncode == 0 and re.search(r"^\s+1/1\s+run\s", proc.stdout, re.M), proc.stdout
    assert not (tmp_path / "one").exists()


def test_unknown_root_key_added_with_plus_is_refused(tmp_path):
    proc = run_cli([*TINY, "+cahce=none", f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 1
    assert _errors(proc) == [proc.stderr.strip()] and "'cahce'" in proc.stderr and "did you mean cache?" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_hub_model_that_cannot_be_fetched_is_one_line(tmp_path):
    proc = run_cli(["model=llada_8b_instruct", "logger=none", f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 1
    assert _errors(proc) == [proc.stderr.strip()]
    assert "'GSAI-ML/LLaDA-8B-Instruct' cannot be fetched from the Hugging Face hub" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_failed_job_exits_non_zero_with_one_line_and_the_traceback_in_run_log(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    proc = run_cli([*TINY, "n_samples=1", "task._target_=conftest.FlakyTask", f"+task.fail_flag={flag}",
                    "sweep_name=f", f"sweeps_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    [error] = _errors(proc)
    assert "failed: RuntimeError: injected failure" in error and "run.log" in error
    [job] = [p for p in (tmp_path / "f").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert json.loads((job / "results.json").read_text())["status"] == "failed"
    assert "Traceback (most recent call last)" in (job / "run.log").read_text()
    assert re.search(r"^\S+\s+failed\s+-\s+-", proc.stdout, re.M)  # the summary row


@pytest.mark.slow
def test_summary_quiet_output_and_skip_message(tmp_path):
    """The default cell on the shipped tiny model with W&B (its own output not silenced by the
    environment): no W&B or transformers lines, the job's line and the summary; then a rerun skips."""
    args = ["n_samples=2", "batch_size=2", "num_threads=1", "progress=false", "sweep_name=q", f"sweeps_dir={tmp_path}"]
    proc = run_cli(args, tmp_path, WANDB_SILENT=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert not [line for line in out.splitlines() if line.startswith(("wandb:", "[transformers]"))], out
    assert "[ok]" in proc.stdout
    lines = proc.stdout.splitlines()
    head = lines.index("== 1 cell: 1 ok ==")
    assert lines[head + 1].split() == ["cell", "status", "accuracy", "tokens_per_s", "nfe_mean", "latency_s_median"]
    row = lines[head + 2].split()
    assert row[1] == "ok" and (tmp_path / "q" / row[0] / "results.json").is_file()
    assert float(row[2]) == json.loads((tmp_path / "q" / row[0] / "results.json").read_text())["metrics"]["accuracy"]
    assert "report:  python -m analysis.report q" in lines  # relative to the working directory
    assert "W&B:     offline runs; upload with: wandb sync q/*/wandb/offline-run-*" in lines
    again = run_cli(args, tmp_path)
    assert again.returncode == 0 and "(force=true reruns it)" in again.stdout and "1 skipped" in again.stdout


@pytest.mark.slow
def test_wandb_output_comes_back_with_quiet_false(tmp_path):
    env = cli_env(WANDB_SILENT=None)
    code = ("import sys; from conftest import compose; from dllm_bench.job import run_job; from fixture_paths import ROOT; "
            f"run_job(compose(['logger=wandb', 'n_samples=1', 'logger.quiet=' + sys.argv[1]]), sys.argv[2], ROOT)")
    shown = {}
    for quiet in ("true", "false"):
        proc = subprocess.run([sys.executable, "-c", code, quiet, str(tmp_path / quiet / "j")], env=env,
                              capture_output=True, text=True, timeout=240, cwd=ROOT / "tests")
        assert proc.returncode == 0, proc.stderr[-2000:]
        shown[quiet] = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("wandb:")]
    assert shown["true"] == [] and len(shown["false"]) >= 5


def test_ctrl_c_leaves_the_job_folder_clean_and_releases_the_claim(tmp_path):
    jobs = tmp_path / "jobs"
    env = cli_env(DLLM_BENCH_JOBS_DIR=str(jobs))
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *tiny("n_samples=400", "batch_size=1"),
                             "sweep_name=c", f"sweeps_dir={tmp_path}"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    claims = tmp_path / "c" / CLAIMS
    deadline = time.time() + 120
    while not list(claims.glob("*.json")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert list(claims.glob("*.json")), "the job never claimed its cell"
    time.sleep(1.0)  # inside the accuracy pass
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("interrupted (Ctrl-C) during ")
    [job] = [p for p in (tmp_path / "c").iterdir() if p.is_dir() and p.name != CLAIMS]
    left = sorted(str(p.relative_to(job)) for p in job.rglob("*") if p.is_file())
    assert left == [".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "run.log"]  # Hydra's own
    assert not list(claims.glob("*.json"))
    [entry] = [json.loads(p.read_text()) for p in jobs.glob("*.json")]
    assert entry["ended"] >= entry["started"]


def test_ctrl_c_while_results_are_written_waits_until_they_are_whole(tmp_path, monkeypatch):
    """SIGINT between samples.jsonl and results.json: both are written, then KeyboardInterrupt."""
    from conftest import compose

    real, calls = J.write_job, []

    def interrupted_write(job_dir, results, rows):
        calls.append(job_dir)
        os.kill(os.getpid(), signal.SIGINT)
        return real(job_dir, results, rows)

    monkeypatch.setattr(J, "write_job", interrupted_write)
    job = tmp_path / "s" / "j"
    with pytest.raises(KeyboardInterrupt):
        J.run_job(compose(["n_samples=1"]), job, ROOT)
    assert calls == [job]
    res, problem = load_job(job)
    assert problem is None and res["status"] == "ok"
    assert not list((tmp_path / "s" / CLAIMS).glob("*.json"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _readme_gsm8k_command() -> list[str]:
    """The README's offline GSM8K command (arguments after ``python run.py``)."""
    text = (ROOT / "README.md").read_text()
    line = next(ln for b in re.findall(r"```bash\n(.*?)```", text, re.S) for ln in b.splitlines()
                if ln.startswith("python run.py task=gsm8k task.data_dir="))
    args = shlex.split(line.split("#")[0])
    return args[2:]


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="../shared/data missing")
def test_readme_gsm8k_command_runs_and_the_default_model_is_refused_before_loading(tmp_path):
    args = _readme_gsm8k_command()
    assert "task.data_dir=../shared/data/gsm8k" in args and any(a.startswith("model=") for a in args)
    extra = ["logger=none", "progress=false", "num_threads=1", f"sweeps_dir={tmp_path}"]
    proc = run_cli([*args, *extra], ROOT, timeout=600)  # from the repository root, as the README says
    assert proc.returncode == 0, proc.stderr[-3000:]
    [res] = [json.loads(p.read_text()) for p in (tmp_path / "default").glob("*/results.json")]
    assert res["status"] == "ok" and res["config"]["task"]["name"] == "gsm8k"
    assert res["metrics"]["n_samples"] == int(next(a for a in args if a.startswith("n_samples=")).split("=")[1])

    default_model = [a for a in args if not a.startswith(("model=", "n_samples="))]
    proc = run_cli([*default_model, *extra, "sweep_name=refused"], ROOT)
    assert proc.returncode == 1
    [error] = _errors(proc)
    assert "does not fit model 'llada_tiny_arith'" in error and "holds 512" in error and "model=" in error
    assert not (tmp_path / "refused").exists()


def test_help_lists_only_run_py_groups(tmp_path):
    proc = run_cli(["--help"], tmp_path)
    assert proc.returncode == 0
    block = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {line.split(":")[0] for line in block.splitlines() if re.match(r"^[\w/]+: ", line)}
    assert groups == {d.name for d in (ROOT / "conf").iterdir() if d.is_dir() and d.name != "hydra"}
    assert {"cache", "decoding", "model", "task"} <= groups and "train" not in groups and "train/arch" not in groups
    assert "--dry-run" in proc.stdout.split("== Configuration groups ==")[0]
