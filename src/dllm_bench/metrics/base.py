"""The metric protocol: a measurement beside accuracy and speed, the same in a job, ``bench`` and
the lm-eval adapter.

A metric sees the main (accuracy) pass through ``on_batch`` — the ``GenerationResult`` of each
batch and the sample rows it produced, to which it may add per-sample fields — and may ask for an
untimed extra pass over its first ``samples`` prompts at batch size 1 (``begin_sample`` /
``on_step`` / ``end_sample``), run after the timed pass so its extra forwards are never timed.
``result()`` is its section of results.json (under its name) and ``summary()`` its scalar
metrics (merged into ``metrics``). ``run_extra_pass`` drives the extra pass for a set of metrics.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ..decoding.registry import Registry

METRICS = Registry("metric")


class Metric:
    name: ClassVar[str] = "?"
    kind: ClassVar[str] = "metric"

    def __init__(self, model, samples: int = 0, **options: Any):
        self.model, self.samples = model, samples

    @classmethod
    def from_measure(cls, model, measure: dict) -> "Metric":
        """Built from the job's ``measure`` node: ``<name>_samples`` and ``<name>_<option>`` keys."""
        prefix = f"{cls.name}_"
        opts = {k[len(prefix):]: v for k, v in measure.items() if k.startswith(prefix)}
        return cls(model, **opts)

    def on_batch(self, result, rows: list[dict]) -> None:
        """Main pass: one batch's GenerationResult and its sample rows (dicts it may extend)."""

    def begin_sample(self, index: int, prompt) -> None:
        """Extra pass: before generating prompt ``index`` (only for index < ``samples``)."""

    def on_step(self, info) -> None:
        """Extra pass: after every forward of the engine (a ``StepInfo``)."""

    def end_sample(self, index: int, result) -> None:
        """Extra pass: after prompt ``index`` was generated."""

    def result(self) -> dict | None:
        """The metric's section of results.json (None: nothing beyond ``summary``)."""
        return None

    def summary(self) -> dict:
        """Scalar metrics merged into results.json's ``metrics``."""
        return {}


def build_metrics(model, measure: dict) -> list[Metric]:
    """The metrics a ``measure`` node switches on (``<name>: true`` for each registered metric)."""
    return [METRICS[name].from_measure(model, measure) for name in METRICS if measure.get(name)]


def run_extra_pass(metrics: list[Metric], model, prompts, engine: dict, generate, generator=None) -> None:
    """Generate the first ``max(samples)`` prompts one at a time for the metrics that asked."""
    n = max((m.samples for m in metrics), default=0)
    for i, prompt in enumerate(prompts[:n]):
        active = [m for m in metrics if i < m.samples]
        for m in active:
            m.begin_sample(i, prompt)

        def on_step(info, active=active):
            for m in active:
                m.on_step(info)

        res = generate(model, [prompt], generator=generator, on_step=on_step, **engine)
        for m in active:
            m.end_sample(i, res)
