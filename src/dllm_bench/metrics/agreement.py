"""Agreement with sequential decoding: does the cell's parallel rule produce the tokens that decoding
one token per step would (Fast-dLLM's Theorem 1, measured per sample)?

``Agreement`` (``measure.agreement=true``; ``measure.agreement_samples``: how many of the cell's
samples, default all) keeps the main pass's tokens of its samples and, in the untimed extra pass,
decodes each again with the same model, cache, block length, guidance and ``stop_at_eos`` but the
``fixed`` rule at ``steps = gen_length``: one token per step, greedy (LLaDA: the most probable
token of the block; Dream: the lowest-entropy one, Dream's own order). Per sample it adds to the row

- ``agreement_tokens``: the fraction of the ``gen_length`` generated positions holding the same token
  (EOS padding included);
- ``agreement_exact``: the whole generation is identical; ``agreement_first_diff``: the first
  position that differs (None when identical);
- ``agreement_answer``: the task's extracted answer of the sequential decode equals the cell's
  (the job post-processes and scores it like its own output: ``sequential_output``,
  ``sequential_extracted``, ``sequential_correct``, ``sequential_nfe``),

and aggregates them per cell into ``metrics.agreement_*`` (means over the measured samples, the
accuracy of both decodes on those samples, and the extra pass's cost in forwards and seconds, which
is also logged).
"""
from __future__ import annotations

import logging
import sys
import time

from .base import METRICS, JobView, Metric

log = logging.getLogger(__name__)


def compare(parallel: list[int], sequential: list[int]) -> dict:
    """Token agreement of two generations of the same length: fraction equal, exact, first diff."""
    if len(parallel) != len(sequential):
        raise ValueError(f"generations of different lengths: {len(parallel)} and {len(sequential)}")
    same = [a == b for a, b in zip(parallel, sequential)]
    first = next((i for i, s in enumerate(same) if not s), None)
    return {"agreement_tokens": sum(same) / len(same) if same else 1.0, "agreement_exact": first is None,
            "agreement_first_diff": first}


@METRICS.register("agreement")
class Agreement(Metric):
    """Per-sample token and answer agreement with one-token-per-step decoding (see module doc)."""

    def __init__(self, model, samples: int | None = None):
        super().__init__(model, sys.maxsize if samples is None else samples)
        self.parallel: list[list[int]] = []        # main-pass tokens of the first `samples` rows
        self.sequential: dict[int, tuple[list[int], int]] = {}  # index -> (tokens, nfe)
        self.forwards, self.seconds = 0, 0.0
        self.rows: list[dict] = []

    @classmethod
    def from_measure(cls, model, measure: dict) -> "Agreement":
        return cls(model, measure.get("agreement_samples"))

    def extra_engine(self, engine: dict) -> dict:
        from ..decoding import RULES

        return dict(engine, decoding=RULES.build("fixed"), steps=engine["gen_length"], graphs=False)

    def on_batch(self, result, rows: list[dict]) -> None:
        for r in range(len(rows)):
            if len(self.parallel) < self.samples:
                self.parallel.append(result.tokens[r].tolist())

    def begin_sample(self, index: int, prompt) -> None:
        self._t0 = time.perf_counter()

    def end_sample(self, index: int, result) -> None:
        self.seconds += time.perf_counter() - self._t0
        self.forwards += result.nfe
        self.sequential[index] = (result.tokens[0].tolist(), result.nfe)

    def finish(self, job: JobView) -> None:
        order = sorted(self.sequential)
        scored = job.score(order, [self.sequential[i][0] for i in order])
        for i, (text, score) in zip(order, scored):
            row = job.rows[i]
            row.update(compare(self.parallel[i], self.sequential[i][0]))
            row.update(agreement_answer=score.extracted == row.get("extracted"), sequential_output=text,
                       sequential_extracted=score.extracted, sequential_correct=bool(score.correct),
                       sequential_nfe=self.sequential[i][1])
        self.rows = [job.rows[i] for i in order]
        log.info(f"[agreement] {len(order)} samples decoded again one token per step: {self.forwards} extra "
                 f"forwards, {self.seconds:.1f} s (untimed)")

    def summary(self) -> dict:
        rows = self.rows
        if not rows:
            return {}
        n = len(rows)
        diffs = [r["agreement_first_diff"] for r in rows if r["agreement_first_diff"] is not None]
        return {
            "agreement_tokens": sum(r["agreement_tokens"] for r in rows) / n,
            "agreement_exact": sum(r["agreement_exact"] for r in rows) / n,
            "agreement_answer": sum(r["agreement_answer"] for r in rows) / n,
            "agreement_first_diff_mean": sum(diffs) / len(diffs) if diffs else None,
            "agreement_parallel_accuracy": sum(bool(r.get("correct")) for r in rows) / n,
            "agreement_sequential_accuracy": sum(r["sequential_correct"] for r in rows) / n,
            "agreement_n": n,
            "agreement_extra_forwards": self.forwards,
            "agreement_extra_s": self.seconds,
        }
