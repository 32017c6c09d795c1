"""The task registry: ``get_task(name, **kwargs)`` builds any task by name; ``TASKS`` lists them.

Factories are looked up lazily (``"module:Class"``), so importing this package imports neither
lm-eval nor a task module that is not asked for. Names:

  arith         the synthetic task of the tiny models (``dllm_bench.tasks.arithmetic``)
  gsm8k         lm-eval ``gsm8k`` (5-shot); data_dir holds train.jsonl + test.jsonl
  minerva_math  lm-eval ``minerva_math`` group (4-shot); data_dir holds <subject>/test.jsonl; runs in a
                worker process with antlr4 4.11 beside Hydra's 4.9 (``dllm_bench.tasks.isolated``)
  humaneval     lm-eval ``humaneval`` (0-shot, runs code); data_dir holds HumanEval.jsonl.gz
  mbpp          lm-eval ``mbpp`` (3-shot, runs code); data_dir holds test.jsonl
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Callable

from .base import Sample, Score, Task, cut_at_stop, score_all
from .protocol import PROTOCOLS, EvalProtocol
from .tokens import count_generated_tokens, decode_generated, encode_prompt

TASK_FILES = {
    "gsm8k": "train.jsonl, test.jsonl ({question, answer}; openai/gsm8k main)",
    "minerva_math": "<subject>/test.jsonl for algebra, counting_and_probability, geometry, intermediate_algebra, "
                    "number_theory, prealgebra, precalculus ({problem, solution}; EleutherAI/hendrycks_math)",
    "humaneval": "HumanEval.jsonl.gz or HumanEval.jsonl ({task_id, prompt, canonical_solution, test, entry_point})",
    "mbpp": "test.jsonl ({task_id, text, code, test_list}; google-research-datasets/mbpp full/test)",
}


def _lazy(target: str, **bound) -> Callable[..., Task]:
    def factory(**kwargs) -> Task:
        module, name = target.split(":")
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            valid = [p for p in params if p not in bound]
            for key in kwargs:
                if key not in valid:
                    raise ValueError(f"unknown argument {key!r} for task {bound.get('name', name)!r}; "
                                     f"valid: {', '.join(valid)}")
        return cls(**bound, **kwargs)
    factory.target = target  # type: ignore[attr-defined]
    return factory


TASKS: dict[str, Callable[..., Task]] = {
    "arith": _lazy("dllm_bench.tasks.arithmetic:ArithmeticTask"),
    **{name: _lazy("dllm_bench.tasks.harness_tasks:HarnessTask", name=name)
       for name in ("gsm8k", "humaneval", "mbpp")},
    "minerva_math": _lazy("dllm_bench.tasks.isolated:math_task", name="minerva_math"),  # own antlr4 4.11: see tasks.isolated
}
TASKS = dict(sorted(TASKS.items()))


def get_task(name: str, **kwargs) -> Task:
    """Build the task ``name`` with its keyword arguments (e.g. ``data_dir``, ``num_fewshot``,
    ``allow_code_execution``). Unknown names raise a one-line ValueError listing the valid ones."""
    if name not in TASKS:
        near = difflib.get_close_matches(str(name), TASKS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASKS)}{hint}")
    return TASKS[name](**kwargs)


__all__ = ["EvalProtocol", "PROTOCOLS", "Sample", "Score", "Task", "TASKS", "TASK_FILES", "count_generated_tokens",
           "cut_at_stop", "decode_generated", "encode_prompt", "get_task", "score_all"]
