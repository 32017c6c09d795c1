"""The metric protocol: a measurement beside accuracy and speed, the same in a job, ``bench`` and
the lm-eval adapter.

A metric sees the main (accuracy) pass through ``on_batch`` — the ``GenerationResult`` of each
batch and the sample rows it produced, to which it may add per-sample fields — and may ask for an
untimed extra pass over its first ``samples`` prompts at batch size 1 (``begin_sample`` /
``on_step`` / ``end_sample``), run after the timed pass so its extra forwards are never timed. The
extra pass decodes with the cell's own engine unless ``extra_engine`` returns another (e.g. one
token per step, for agreement with sequential decoding). Once the main pass is scored and the extra
pass done, ``finish`` sees the job (``JobView``: the rows, the tokenizer, the job's scoring of other
generations). ``result()`` is its section of results.json (under its name), ``summary()`` its
scalar metrics (merged into ``metrics``) and ``files()`` what it writes into the job folder.
``run_extra_pass`` drives the extra pass for a set of metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..decoding.registry import Registry

METRICS = Registry("metric")


@dataclass
class JobView:
    """What ``Metric.finish`` sees of the job.

    rows: the scored sample rows, in prompt order (dicts a metric may extend; written to samples.jsonl).
    tokenizer: the model's tokenizer. title: one line naming the cell (model, cache, decoding, lengths).
    score(indices, token_rows): other generations of samples ``indices`` (generated ids, prompt
    excluded) post-processed and scored exactly as the job scores its own -> [(text, Score)].
    """

    rows: list[dict]
    tokenizer: Any
    title: str
    score: Callable[[list[int], list], list]


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

    def extra_engine(self, engine: dict) -> dict:
        """The ``generate`` keyword arguments of this metric's extra pass (default: the cell's)."""
        return engine

    def begin_sample(self, index: int, prompt) -> None:
        """Extra pass: before generating prompt ``index`` (only for index < ``samples``)."""

    def on_step(self, info) -> None:
        """Extra pass: after every forward of the engine (a ``StepInfo``)."""

    def end_sample(self, index: int, result) -> None:
        """Extra pass: after prompt ``index`` was generated."""

    def finish(self, job: JobView) -> None:
        """After the extra pass, with the main pass scored (see ``JobView``)."""

    def result(self) -> dict | None:
        """The metric's section of results.json (None: nothing beyond ``summary``)."""
        return None

    def summary(self) -> dict:
        """Scalar metrics merged into results.json's ``metrics``."""
        return {}

    def files(self) -> dict[str, bytes]:
        """Files for the job folder: relative path -> content (written before results.json)."""
        return {}


def build_metrics(model, measure: dict) -> list[Metric]:
    """The metrics a ``measure`` node switches on (``<name>: true`` for each registered metric)."""
    return [METRICS[name].from_measure(model, measure) for name in METRICS if measure.get(name)]


def run_extra_pass(metrics: list[Metric], model, prompts, engine: dict, generate, generator=None) -> None:
    """Generate the first ``max(samples)`` prompts one at a time for the metrics that asked; metrics
    that share an engine (``extra_engine``) share one pass."""
    passes: list[tuple[dict, list[Metric]]] = []
    for m in metrics:
        own = m.extra_engine(engine)
        group = next((g for e, g in passes if e is own), None)
        if group is None:
            passes.append((own, group := []))
        group.append(m)
    for own, group in passes:
        _one_pass(group, model, prompts, own, generate, generator)


def _one_pass(metrics: list[Metric], model, prompts, engine: dict, generate, generator) -> None:
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
