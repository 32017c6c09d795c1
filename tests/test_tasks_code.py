"""Code execution: HumanEval canonical solutions pass 164/164 through the project's path (in the
strict sandbox wherever it can exist), a broken copy fails, an infinite loop is cut by the timeout and
the run goes on; MBPP prompts come from lm-eval's own template and few-shot examples. What the
sandbox blocks is tested in test_sandbox.py."""
import json
import os
from pathlib import Path

import pytest

from dllm_bench.tasks import get_task
from dllm_bench.tasks.sandbox import sandbox_problem

HUMANEVAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "humaneval"
needs_humaneval = pytest.mark.skipif(not HUMANEVAL.is_dir(), reason=f"offline data not found at {HUMANEVAL}")
# strict wherever its isolation can exist (always as root, as in CI); the explicit weak mode elsewhere
SANDBOX = "strict" if sandbox_problem() is None or os.geteuid() == 0 else "weak"


@pytest.fixture(scope="module")
def humaneval():
    # generous timeout: the canonical solutions must pass on a loaded 2-core machine
    return get_task("humaneval", data_dir=HUMANEVAL, allow_code_execution=True, timeout_s=15, workers=4,
                    sandbox=SANDBOX)


@needs_humaneval
def test_canonical_solutions_pass_and_broken_fail(humaneval):
    samples = humaneval.samples()
    assert len(samples) == 164 and samples[0].prompt == samples[0].meta["doc"]["prompt"]
    outputs = [s.meta["doc"]["canonical_solution"] for s in samples]
    # the broken copy: each body returns None before the canonical code
    broken = ["    return None\n" + o for o in outputs[:8]]
    scores = humaneval.score_batch(samples + samples[:8], outputs + broken)
    good, bad = scores[:164], scores[164:]
    failed = [(s.id, sc.extra["detail"]) for s, sc in zip(samples, good) if not sc.correct]
    assert failed == [] and sum(sc.correct for sc in good) == 164
    assert not any(sc.correct for sc in bad) and all(sc.extra["status"] == "failed" for sc in bad)


@needs_humaneval
def test_infinite_loop_is_cut_and_scoring_continues():
    task = get_task("humaneval", data_dir=HUMANEVAL, allow_code_execution=True, timeout_s=1.5, workers=2,
                    sandbox=SANDBOX)
    s = task.samples(3)
    forever = "    while True:\n        pass\n"
    loop, ok, loop2 = task.score_batch(s, [forever, s[1].meta["doc"]["canonical_solution"], forever])
    for sc in (loop, loop2):
        assert (sc.correct, sc.extra["status"]) == (False, "timeout") and 1.4 < sc.extra["exec_seconds"] < 10
    assert ok.correct
    # the program is the harness's: prompt + completion, then the tests and check(entry_point)
    prog = task.program(s[0], "    return True\n")
    assert prog.startswith(s[0].meta["doc"]["prompt"] + "    return True\n")
    assert prog.rstrip().endswith(f"check({s[0].meta['doc']['entry_point']})")


def test_mbpp_prompt_and_scoring_from_local_file(tmp_path):
    rows = [{"task_id": 11, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n  return a + b",
             "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"],
             "test_setup_code": "", "challenge_test_list": []}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("mbpp", data_dir=tmp_path, allow_code_execution=True, sandbox=SANDBOX)
    (s,) = task.samples()
    assert task.num_fewshot == 3 and task.stop_sequences == ["[DONE]"]
    # three harness few-shot examples (MBPP tasks 2, 3, 4), each closed by [DONE], then the question
    assert s.prompt.count("[BEGIN]\n") == 4 and s.prompt.count("[DONE]") == 3
    assert "similar_elements" in s.prompt and s.prompt.endswith(
        "You are an expert Python programmer, and here is your task: Write a function to add two numbers. "
        "Your code should pass these tests:\n\nassert add(1, 2) == 3\nassert add(0, 0) == 0\n"
        "assert add(-1, 1) == 0\n[BEGIN]\n")
    good, bad = task.score_batch([s, s], ["def add(a, b):\n  return a + b\n", "def add(a, b):\n  return a - b\n"])
    assert good.correct and not bad.correct
