"""Measurement: timing and memory (``timing``), the metric protocol (``base``) and the metrics that
plug into it (``kv_similarity``: K/V staleness across decoding steps). Importing this package
registers the built-in metrics."""
from .base import METRICS, Metric, build_metrics, run_extra_pass
from . import kv_similarity  # noqa: F401  (registration)

__all__ = ["METRICS", "Metric", "build_metrics", "run_extra_pass"]
