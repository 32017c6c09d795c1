"""Chained modular arithmetic with a worked solution: the synthetic task of the shipped tiny models.

A problem sets ``a`` to a number, then defines ``n_steps`` more variables, each the previous one
combined (``+ - *``, modulo ``modulus``) with a constant or an earlier variable, and asks for the
last one. The answer is the worked solution, one line per step with the values substituted, then
``#`` and the final value::

    prompt  a=7;b=a*3;c=b-5;d=c+a;d?          (modulus 10)
    answer  7*3=1;1-5=6;6+7=3;#3

Each line starts from the previous line's result, so unmasking many answer tokens in one step can
break the chain: the failure the confidence threshold of parallel decoding guards against. (With
one-character numbers a solution line is as long as its prompt line, so line k of the answer sits
at a fixed distance from line k of the prompt. With constants from 1..3 (``max_operand=3``) and no
look-ups (``var_prob=0``), the shipped tiny models' recipe, a 0.7 M-parameter model learns every step
exactly in under 30 CPU-minutes; with uniform constants, ``(x + v) % 10`` is learned far more slowly.) Problems come
from a seeded generator; the split of a problem is a hash of its prompt (``heldout`` when the
hash is 0 mod 10, else ``train``), so the two splits never share a problem.
"""
from __future__ import annotations

import hashlib
import random
import re
import string
from dataclasses import dataclass
from typing import Iterator

from .base import Sample, Score

SPLITS = ("train", "heldout")
OPS = "+-*"
_FINAL = re.compile(r"#(\d+)")


@dataclass(frozen=True)
class Problem:
    prompt: str     # "a=7;b=a*3;...;d?"
    solution: str   # "7*3=1;1-5=6;6+7=3;#3"
    value: int      # the final value


def split_of(prompt: str) -> str:
    """``heldout`` for one prompt in ten (by SHA-256 of the text), else ``train``."""
    h = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "heldout" if h % 10 == 0 else "train"


def make_problem(rng: random.Random, n_steps: int, modulus: int, ops: str, var_prob: float,
                 max_operand: int | None = None) -> Problem:
    """One random problem: ``n_steps`` chained operations after ``a=<number>``; constant operands
    are drawn from 0..modulus-1, or from 1..max_operand when that is given."""
    names = string.ascii_lowercase[: n_steps + 1]
    values = [rng.randrange(modulus)]
    prompt, solution = [f"a={values[0]}"], []
    for i in range(1, n_steps + 1):
        op = rng.choice(ops)
        if i > 1 and rng.random() < var_prob:  # an earlier variable other than the previous one
            j = rng.randrange(i - 1)
            operand, rhs = values[j], names[j]
        else:
            operand = rng.randrange(modulus) if max_operand is None else rng.randint(1, max_operand)
            rhs = str(operand)
        prev = values[-1]
        v = (prev + operand if op == "+" else prev - operand if op == "-" else prev * operand) % modulus
        values.append(v)
        prompt.append(f"{names[i]}={names[i - 1]}{op}{rhs}")
        solution.append(f"{prev}{op}{operand}={v}")
    return Problem(";".join(prompt) + f";{names[-1]}?", ";".join(solution) + f";#{values[-1]}", values[-1])


class ArithmeticTask:
    """The ``arith`` task (implements :class:`dllm_bench.tasks.base.Task`).

    n_steps: operations after ``a=`` (1..25); the answer has ``n_steps`` worked lines.
    modulus: all values are taken modulo this (2..1000); 10 keeps every number one character.
    ops: the operators to draw from (a non-empty subset of ``+-*``).
    var_prob: probability that an operand (from the third variable on) is an earlier variable.
    max_operand: constant operands from 1..max_operand (None: 0..modulus-1). Small ranges make the
        steps learnable fast (the result then correlates with each input on its own, where
        ``(a + b) % m`` with ``b`` uniform does not); the chain through the values stays.
    split: ``heldout`` (evaluation) or ``train``.
    seed: base seed; ``samples(n, seed)`` draws from the stream of ``(self.seed, seed)``.
    n_eval: how many samples ``samples(None)`` returns (the stream itself is endless).
    """

    name = "arith"
    stop_sequences = ["\n"]
    requires_code_execution = False

    def __init__(self, n_steps: int = 8, modulus: int = 10, ops: str = OPS, var_prob: float = 0.3,
                 max_operand: int | None = None, split: str = "heldout", seed: int = 0, n_eval: int = 500):
        problems = []
        if not isinstance(n_steps, int) or not 1 <= n_steps <= 25:
            problems.append(f"n_steps must be an int in 1..25, got {n_steps!r}")
        if not isinstance(modulus, int) or not 2 <= modulus <= 1000:
            problems.append(f"modulus must be an int in 2..1000, got {modulus!r}")
        if not ops or any(o not in OPS for o in ops):
            problems.append(f"ops must be a non-empty subset of {OPS!r}, got {ops!r}")
        if not 0.0 <= var_prob <= 1.0:
            problems.append(f"var_prob must be in [0, 1], got {var_prob!r}")
        if max_operand is not None and (type(max_operand) is not int or not 1 <= max_operand < modulus):
            problems.append(f"max_operand must be None or an int in 1..modulus-1, got {max_operand!r}")
        if split not in SPLITS:
            problems.append(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if problems:
            raise ValueError("invalid arith task: " + "; ".join(problems))
        self.n_steps, self.modulus, self.ops, self.var_prob = n_steps, modulus, ops, var_prob
        self.max_operand = max_operand
        self.split, self.seed, self.n_eval = split, seed, n_eval

    @property
    def max_answer_chars(self) -> int:
        """Length of the longest possible answer (one token per character)."""
        d = len(str(self.modulus - 1))
        return self.n_steps * (3 * d + 3) - 1 + 2 + d  # "XoY=V" lines joined by ";", then ";#V"

    @property
    def gen_length(self) -> int:
        """Smallest multiple of 16 that holds the longest answer and one EOS."""
        return -(-(self.max_answer_chars + 1) // 16) * 16

    def problems(self, seed: int = 0) -> Iterator[Problem]:
        """Endless stream of this split's problems, deterministic for ``(self.seed, seed)``."""
        rng = random.Random(f"arith:{self.seed}:{seed}")
        while True:
            p = make_problem(rng, self.n_steps, self.modulus, self.ops, self.var_prob, self.max_operand)
            if split_of(p.prompt) == self.split:
                yield p

    def samples(self, n: int | None = None, seed: int = 0) -> list[Sample]:
        n = self.n_eval if n is None else n
        stream = self.problems(seed)
        out = []
        for i in range(n):
            p = next(stream)
            out.append(Sample(id=f"arith-{self.split}-{seed}-{i}", prompt=p.prompt, target=p.value,
                              meta={"solution": p.solution, "chat": False}))
        return out

    def score(self, sample: Sample, output: str) -> Score:
        """Exact match of the last ``#N`` in the output; extras: full-solution match and steps right."""
        finals = _FINAL.findall(output)
        extracted = int(finals[-1]) if finals else None
        want = sample.meta.get("solution", "")
        want_lines = want.split(";")[:-1]
        got_lines = output.strip().split(";")
        steps_ok = sum(g == w for g, w in zip(got_lines, want_lines))
        return Score(extracted=extracted, correct=extracted == sample.target,
                     extra={"solution_exact": output.strip() == want,
                            "steps_correct": steps_ok / max(1, len(want_lines))})
