"""Shared fixtures for the sweep tests: composing the root config, running ``run.py``, a tiny
failing task, and one six-job sweep (the issue's acceptance command) reused by several tests.

Every config here forces the random-weight fixture checkpoints (``../shared/fixtures``), a few
samples, one torch thread and ``logger=none`` unless a test is about W&B.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixture_paths import FIXTURES, LLADA_TINY, ROOT

CONF = ROOT / "conf"
# the fixture model, a few short samples, one thread, no W&B
TINY = ["model=fixture_llada_tiny", "logger=none", "n_samples=2", "batch_size=2", "gen_length=32",
        "block_length=16", "num_threads=1", "progress=false"]

needs_fixtures = pytest.mark.skipif(not (FIXTURES / "llada_tiny").is_dir(), reason="../shared/fixtures missing")


def count_forwards(model):
    """``model.forward_calls`` grows by one as each forward starts (one that raises counts too), for
    tests that a refusal comes before any forward."""
    model.forward_calls = []
    model.register_forward_pre_hook(lambda *a: model.forward_calls.append(1))
    return model


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest and does not fight other jobs for the cores (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def counted_llada():
    """The fixture LLaDA with ``forward_calls`` (see ``count_forwards``)."""
    from dllm_bench import load_model

    return count_forwards(load_model(LLADA_TINY))


@pytest.fixture(autouse=True, scope="module")
def _fresh_global_hydra():
    """Each test module starts without a global Hydra instance: ``compose`` keeps one alive for
    speed, and modules that initialise Hydra themselves (the trainer's tests) must not find it."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield


def compose(overrides: list[str] = (), hydra_cfg: bool = False, tiny: bool = True):
    """The root config composed like run.py does, with ``TINY`` (unless ``tiny=False``) then
    ``overrides`` applied."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import dllm_bench.config  # noqa: F401  registers the schema

    if not GlobalHydra.instance().is_initialized():  # once per process: initializing is the slow part
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")
    return _compose("config", overrides=[*(TINY if tiny else ()), *overrides], return_hydra_config=hydra_cfg)


def cli_env(**extra) -> dict:
    """The environment of ``run.py`` subprocesses: W&B and the hub offline, ``tests/`` on the path
    so that configs can name ``conftest.FlakyTask``; ``extra`` on top (a None value removes)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1", PYTHONPATH=path)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run_cli(args: list[str], cwd: Path, timeout: int = 240, **env) -> subprocess.CompletedProcess:
    """``python run.py <args>`` in a subprocess (``cli_env(**env)``); output captured."""
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout)


class FlakyTask:
    """The arith task, except that scoring raises while the file ``fail_flag`` exists: a job made
    to fail on demand, with a config (and so a config hash) that does not change between runs."""

    def __init__(self, name: str = "arith", fail_flag: str = "", **kwargs):
        from dllm_bench.tasks.arithmetic import ArithmeticTask

        self._inner = ArithmeticTask(**kwargs)
        self.name, self.fail_flag = name, fail_flag
        self.stop_sequences, self.requires_code_execution = self._inner.stop_sequences, False

    def samples(self, n=None, seed=0):
        return self._inner.samples(n, seed)

    def score(self, sample, output):
        if self.fail_flag and Path(self.fail_flag).exists():
            raise RuntimeError(f"injected failure ({self.fail_flag} exists)")
        return self._inner.score(sample, output)


SIX_JOBS = ["-m", "cache=none,prefix,dual", "decoding=threshold", "threshold=0.7,0.9", "model=fixture_llada_tiny",
            "logger=wandb", "n_samples=2", "batch_size=2", "gen_length=32", "num_threads=1", "progress=false",
            "sweep_name=six"]


@pytest.fixture(scope="session")
def six_job_sweep(tmp_path_factory):
    """The issue's acceptance sweep (3 caches x 2 thresholds, W&B offline): (sweep dir, cwd, process)."""
    if not (FIXTURES / "llada_tiny").is_dir():
        pytest.skip("../shared/fixtures missing")
    cwd = tmp_path_factory.mktemp("six")
    proc = run_cli([*SIX_JOBS, f"sweeps_dir={cwd}"], cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "six", cwd, proc
