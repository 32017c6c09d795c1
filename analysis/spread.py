"""Timing spread: the value and the quartiles of a timed metric, when a job measured them.

Convention (docs/results_schema.md, "Timing spread"): a job that times a quantity `<m>` several
times (e.g. `tokens_per_s`, `ms_per_forward`, `latency_s`) may write `<m>_median`, `<m>_q25` and
`<m>_q75` into `metrics`. Tables and figures then show `<m>_median` as the value of `<m>` and draw
the interquartile range as error bars or bands; without the quartiles they draw no bars. A job
that wrote only `<m>` (or, for latency, `<m>_mean`) is shown with that.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

TIMED = ("tokens_per_s", "ms_per_forward", "latency_s")
NOISY_IQR = 0.2  # IQR above this fraction of the median: the report flags the measurement


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    if name not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[name], errors="coerce").astype(float)


def value(df: pd.DataFrame, metric: str) -> pd.Series:
    """Per row: `<metric>_median`, else `<metric>`, else `<metric>_mean` (NaN when none)."""
    base = f"metrics.{metric}"
    return _col(df, f"{base}_median").fillna(_col(df, base)).fillna(_col(df, f"{base}_mean"))


def quartiles(df: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    """(q25, q75) per row; NaN where the job did not record them."""
    base = f"metrics.{metric}"
    return _col(df, f"{base}_q25"), _col(df, f"{base}_q75")


def errorbars(df: pd.DataFrame, metric: str, scale: float = 1.0) -> np.ndarray | None:
    """A (2, n) array for matplotlib's xerr/yerr (distance from the value down to q25 and up to
    q75, zero where unknown), or None when no row has both quartiles."""
    q25, q75 = quartiles(df, metric)
    known = q25.notna() & q75.notna()
    if not known.any():
        return None
    center = value(df, metric)
    lo = (center - q25).where(known, 0.0).clip(lower=0.0)
    hi = (q75 - center).where(known, 0.0).clip(lower=0.0)
    return np.vstack([lo.to_numpy(), hi.to_numpy()]) * scale


def noisy(df: pd.DataFrame, metric: str) -> pd.Series:
    """True where the interquartile range exceeds NOISY_IQR of the value."""
    q25, q75 = quartiles(df, metric)
    return ((q75 - q25) / value(df, metric)).gt(NOISY_IQR)
