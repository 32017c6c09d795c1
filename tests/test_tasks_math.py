"""MATH (lm-eval minerva_math, 4-shot) from local files: the seven subject tasks, round-robin
samples, the harness's Minerva few-shot prompt and answer equivalence -- in this (Hydra, antlr4 4.9)
environment through the worker of ``dllm_bench.tasks.isolated``; without its antlr4 4.11 side folder,
a one-line error naming the install command."""
import functools
import json
from importlib.metadata import version

import pytest

from dllm_bench.tasks import get_task
from dllm_bench.tasks.isolated import _has_antlr_411, deps_dir

SUBJECTS = ("algebra", "counting_and_prob", "geometry", "intermediate_algebra", "num_theory", "prealgebra", "precalc")
FOLDERS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra",
           "precalculus")  # the hub configs of EleutherAI/hendrycks_math


@functools.lru_cache(maxsize=1)
def _math_extras_ok() -> bool:
    """antlr4 4.11 here, or in the side folder (``.ci/run`` installs it there)."""
    return version("antlr4-python3-runtime").startswith("4.11") or _has_antlr_411(deps_dir())


@pytest.fixture()
def math_dir(tmp_path):
    for k, subject in enumerate(FOLDERS):
        (tmp_path / subject).mkdir()
        rows = [{"problem": f"What is {k} + {i}?", "solution": f"It is $\\boxed{{{k + i}}}$.",
                 "level": "Level 1", "type": subject} for i in range(2)]
        (tmp_path / subject / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


@pytest.mark.skipif(not _math_extras_ok(), reason="no antlr4 4.11: run python -m dllm_bench.tasks.isolated install")
def test_minerva_math_prompts_and_scoring(math_dir):
    import omegaconf  # noqa: F401  (the sweep's antlr4 4.9 is loaded in this process)

    task = get_task("minerva_math", data_dir=math_dir)
    assert task.num_fewshot == 4 and task.stop_sequences == ["Problem:"]
    samples = task.samples(9)  # round-robin: one per subject, then the second algebra/counting doc
    assert [s.meta["task"] for s in samples[:7]] == [f"minerva_math_{s}" for s in SUBJECTS]
    assert samples[7].id == "minerva_math_algebra/1"
    p = samples[0].prompt
    assert p.startswith("Problem:\nFind the domain of the expression") and p.count("Problem:") == 5
    assert p.endswith("Problem:\nWhat is 0 + 0?\n\nSolution:")
    right = task.score(samples[1], " It is 1.\nFinal Answer: The final answer is $1$. I hope it is correct.")
    wrong = task.score(samples[1], " It is 2.\nFinal Answer: The final answer is $2$. I hope it is correct.")
    assert right.correct and not wrong.correct
    assert right.extra["math_verify,none"] == 1 and wrong.extra["math_verify,none"] == 0
    # equivalent forms through sympy (is_equiv), in a batch as the job scores them
    got = task.score_batch(samples[2:4], [" $\\frac{4}{2}$.\nFinal Answer: The final answer is $\\frac{4}{2}$. I hope it is correct.",
                                          " Final Answer: The final answer is $2.0$. I hope it is correct."])
    assert [g.correct for g in got] == [True, False]  # doc 2 is 2 + 0 = 2; doc 3 is 3 + 0 = 3


@pytest.mark.skipif(not _math_extras_ok(), reason="no antlr4 4.11: run python -m dllm_bench.tasks.isolated install")
def test_minerva_math_bad_input_raised_from_the_worker(math_dir, tmp_path):
    with pytest.raises(ValueError, match=r"num_fewshot=9 exceeds the 4 few-shot examples"):
        get_task("minerva_math", data_dir=math_dir, num_fewshot=9)
    with pytest.raises(ValueError, match=r"unknown argument 'shots' for task 'minerva_math'"):
        get_task("minerva_math", data_dir=math_dir, shots=4)
    with pytest.raises(FileNotFoundError, match="data_dir not found"):
        get_task("minerva_math", data_dir=tmp_path / "nowhere")


@pytest.mark.skipif(version("antlr4-python3-runtime").startswith("4.11"), reason="antlr4 4.11 in this environment")
def test_minerva_math_without_antlr_411_says_how_to_install(math_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_BENCH_MATH_DEPS", str(tmp_path / "empty"))
    with pytest.raises(ImportError) as e:
        get_task("minerva_math", data_dir=math_dir)
    msg = str(e.value)
    assert "\n" not in msg and "python -m dllm_bench.tasks.isolated install" in msg and str(tmp_path / "empty") in msg


@pytest.mark.skipif(not _math_extras_ok(), reason="no antlr4 4.11: run python -m dllm_bench.tasks.isolated install")
def test_minerva_math_job_in_the_sweep_process(math_dir, tmp_path):
    """The sweep's own process (Hydra loaded) runs a MATH job: worker-built prompts, engine, worker scoring."""
    from conftest import compose
    from dllm_bench.job import run_job
    from fixture_paths import FIXTURES, ROOT

    if not FIXTURES.is_dir():
        pytest.skip("../shared/fixtures missing")
    cfg = compose(["task=minerva_math", f"task.data_dir={math_dir}", "task.num_fewshot=1", "n_samples=2",
                   "batch_size=2", "gen_length=8", "block_length=8", "cache=dual", "decoding=threshold"])
    job = tmp_path / "sweep" / "math"
    res = run_job(cfg, job, ROOT)
    assert res["status"] == "ok", res["error"]
    rows = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["minerva_math_algebra/0", "minerva_math_counting_and_prob/0"]
    assert rows[0]["prompt"].count("Problem:") == 2 and rows[0]["prompt"].endswith("Solution:")
    assert all(isinstance(r["correct"], bool) for r in rows)
    assert res["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 2
