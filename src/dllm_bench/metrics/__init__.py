"""Measurement: timing and memory (``timing``), the metric protocol (``base``) and the metrics that
plug into it (``kv_similarity``: K/V staleness across decoding steps; ``agreement``: token agreement
with one-token-per-step decoding; ``replays``: step-by-step pictures of the decoding). Importing this
package registers the built-in metrics."""
from .base import METRICS, JobView, Metric, build_metrics, run_extra_pass
from . import agreement, kv_similarity, replays  # noqa: F401  (registration)

__all__ = ["METRICS", "JobView", "Metric", "build_metrics", "run_extra_pass"]
