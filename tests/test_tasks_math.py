"""MATH (lm-eval minerva_math, 4-shot) from local files: the seven subject tasks, round-robin
samples, the harness's Minerva few-shot prompt and answer equivalence; or, where lm-eval's math
extras cannot be imported, a one-line error naming them."""
import functools
import json

import pytest

from dllm_bench.tasks import get_task

SUBJECTS = ("algebra", "counting_and_prob", "geometry", "intermediate_algebra", "num_theory", "prealgebra", "precalc")
FOLDERS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra",
           "precalculus")  # the hub configs of EleutherAI/hendrycks_math


@functools.lru_cache(maxsize=1)
def _math_extras_ok() -> bool:
    try:
        import lm_eval.tasks.minerva_math.utils  # noqa: F401  (asserts antlr4 4.11, math_verify)
        return True
    except (ImportError, AssertionError):
        return False


@pytest.fixture()
def math_dir(tmp_path):
    for k, subject in enumerate(FOLDERS):
        (tmp_path / subject).mkdir()
        rows = [{"problem": f"What is {k} + {i}?", "solution": f"It is $\\boxed{{{k + i}}}$.",
                 "level": "Level 1", "type": subject} for i in range(2)]
        (tmp_path / subject / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


@pytest.mark.skipif(not _math_extras_ok(), reason="lm-eval[math] extras not importable here")
def test_minerva_math_prompts_and_scoring(math_dir):
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


@pytest.mark.skipif(_math_extras_ok(), reason="lm-eval[math] extras are importable here")
def test_minerva_math_without_extras_says_what_to_install(math_dir):
    with pytest.raises(ImportError) as e:
        get_task("minerva_math", data_dir=math_dir)
    assert "\n" not in str(e.value) and "lm-eval[math]" in str(e.value)
