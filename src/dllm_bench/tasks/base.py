"""What a task is: samples, prompts, answer extraction and scoring.

A task knows nothing of the engine. The job (``dllm_bench.job``) asks a task for its samples,
encodes ``sample.prompt`` (applying the tokenizer's chat template when the model is an instruct
model and ``sample.meta["chat"]`` does not forbid it), generates, post-processes the generated
tokens by the run's evaluation protocol (``clean``: up to the first EOS / stop sequence; see
``dllm_bench.tasks.protocol``), and hands that text back to ``task.score``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class Sample:
    id: str
    prompt: str                       # text for the model (few-shot context included)
    target: Any                       # the reference answer (task-specific)
    meta: dict = field(default_factory=dict)


@dataclass
class Score:
    extracted: Any                    # the answer pulled out of the output
    correct: bool                     # the task's primary metric for this sample
    extra: dict = field(default_factory=dict)  # secondary metrics (e.g. strict/flexible match)


@runtime_checkable
class Task(Protocol):
    """A benchmark: ``samples`` -> prompts, ``score`` -> correctness. Stateless after construction."""

    name: str
    stop_sequences: list[str]         # generation is cut at the first of these (and at EOS)
    requires_code_execution: bool     # True: the job refuses to run without allow_code_execution

    def samples(self, n: int | None = None, seed: int = 0) -> list[Sample]:
        """The first ``n`` evaluation samples (all when None), deterministic for a seed."""

    def score(self, sample: Sample, output: str) -> Score:
        """Score one generated text (already cut at EOS / stop sequences)."""


def cut_at_stop(text: str, stops: list[str]) -> str:
    """The text up to (not including) the earliest stop sequence."""
    cut = len(text)
    for s in stops:
        i = text.find(s) if s else -1
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def score_all(task: Task, samples: list[Sample], outputs: list[str]) -> list[Score]:
    """Score many outputs: the task's own ``score_batch`` when it has one (code tasks run their
    programs in parallel there), else ``score`` one by one."""
    batch = getattr(task, "score_batch", None)
    if batch is not None:
        return batch(samples, outputs)
    return [task.score(s, o) for s, o in zip(samples, outputs)]
