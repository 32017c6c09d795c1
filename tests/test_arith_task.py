"""The arith task: deterministic per seed, disjoint splits, correct worked solutions, scoring."""
import re

import pytest

from dllm_bench.tasks.arithmetic import ArithmeticTask, split_of
from dllm_bench.tasks.base import Task


def _solve(prompt: str, modulus: int) -> list[tuple[str, int]]:
    """Independent evaluator: run the assignments of the prompt, modulo ``modulus``."""
    env, lines = {}, []
    for stmt in prompt.rstrip("?").split(";")[:-1]:
        name, expr = stmt.split("=")
        if len(expr) > 1 and expr[0].isalpha():  # "b+3" -> "7+3=0" with b = 7
            worked = "".join(str(env[c]) if c.isalpha() else c for c in expr)
        else:
            worked = None
        env[name] = eval(expr, {}, dict(env)) % modulus  # noqa: S307 (our own generated text)
        lines.append((name, env[name], worked))
    return lines


def test_protocol_and_names():
    task = ArithmeticTask()
    assert isinstance(task, Task)
    assert task.name == "arith" and task.requires_code_execution is False
    assert isinstance(task.stop_sequences, list)


@pytest.mark.parametrize("kw", [{}, {"n_steps": 3, "modulus": 100, "ops": "+-"}, {"n_steps": 12, "var_prob": 1.0},
                                {"max_operand": 3, "var_prob": 0.5}])
def test_solution_is_the_worked_chain(kw):
    task = ArithmeticTask(**kw)
    for s in task.samples(50):
        steps = _solve(s.prompt, task.modulus)
        assert s.prompt.endswith(f"{steps[-1][0]}?")
        want = ";".join(f"{w}={v}" for _, v, w in steps[1:]) + f";#{steps[-1][1]}"
        assert s.meta["solution"] == want and s.target == steps[-1][1]
        assert len(s.meta["solution"]) <= task.max_answer_chars < task.gen_length
        assert len(re.findall(r"[a-z]=", s.prompt)) == task.n_steps + 1


def test_max_operand_bounds_the_constants_only():
    task = ArithmeticTask(max_operand=3, var_prob=0.0)
    consts = [int(c) for s in task.samples(200) for c in re.findall(r"[+*-](\d)", s.prompt)]
    assert set(consts) == {1, 2, 3}
    values = {int(v) for s in task.samples(200) for v in re.findall(r"=(\d)", s.meta["solution"])}
    assert values == set(range(10))  # the chain still visits every value


def test_default_answers_are_long():
    task = ArithmeticTask()
    assert min(len(s.meta["solution"]) for s in task.samples(100)) >= 32


def test_deterministic_per_seed():
    a, b = ArithmeticTask(seed=3), ArithmeticTask(seed=3)
    assert [s.prompt for s in a.samples(30)] == [s.prompt for s in b.samples(30)]
    assert [s.prompt for s in a.samples(30, seed=1)] != [s.prompt for s in a.samples(30, seed=2)]
    assert [s.prompt for s in ArithmeticTask(seed=4).samples(30)] != [s.prompt for s in a.samples(30)]


def test_splits_never_overlap():
    train = {s.prompt for seed in range(3) for s in ArithmeticTask(split="train", n_steps=2, modulus=5).samples(400, seed)}
    held = {s.prompt for seed in range(3) for s in ArithmeticTask(split="heldout", n_steps=2, modulus=5).samples(400, seed)}
    # a small problem space, so both splits are drawn densely and a leak would show
    assert train and held and not train & held
    assert {split_of(p) for p in train} == {"train"} and {split_of(p) for p in held} == {"heldout"}


def test_scoring_uses_the_last_final_answer():
    task = ArithmeticTask()
    s = task.samples(1)[0]
    right = task.score(s, s.meta["solution"])
    assert right.correct and right.extracted == s.target and right.extra["solution_exact"]
    wrong = (s.target + 1) % task.modulus
    assert not task.score(s, s.meta["solution"].rsplit("#", 1)[0] + f"#{wrong}").correct
    assert task.score(s, f"#{wrong};#{s.target}").correct
    assert task.score(s, "b=").extracted is None and not task.score(s, "").correct


@pytest.mark.parametrize("kw", [{"n_steps": 0}, {"n_steps": 26}, {"modulus": 1}, {"ops": "/"}, {"ops": ""},
                                {"split": "test"}, {"var_prob": 1.5}, {"max_operand": 0}, {"max_operand": 10},
                                {"max_operand": 2.0}])
def test_invalid_difficulty_is_rejected(kw):
    with pytest.raises(ValueError, match="invalid arith task"):
        ArithmeticTask(**kw)
