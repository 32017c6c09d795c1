"""What a report says about a sweep besides its numbers: a single cell, cells skipped as
duplicates, and timings that the machine's load, not the method, explains (noisy repeats, or the
same forward taking very different times in different cells)."""
from __future__ import annotations

import pandas as pd

from . import methods, spread

def sweep_notes(df: pd.DataFrame) -> list[str]:
    """Notes for the report's summary, one sentence each."""
    ok = df[df["status"] == "ok"]
    notes = []
    if len(ok) and methods.n_configs(ok) == 1:
        notes.append("The sweep holds one finished cell: figures that compare cells are skipped; "
                     "its numbers are in the tables below.")
    dup = df[df["status"] == "duplicate"]
    if len(dup):
        notes.append(f"{len(dup)} cells were skipped as duplicates: their config equals that of "
                     "another job of the sweep (e.g. fixed decoding does not read the threshold "
                     "it was swept over), whose folder holds the results; see "
                     "'Skipped duplicates'.")
    notes += _load_notes(ok)
    noisy = {m: spread.noisy(ok, m) for m in spread.TIMED}
    for i, (_, r) in enumerate(ok.iterrows()):
        which = [m for m, flags in noisy.items() if flags.iloc[i]]
        if which:
            notes.append(f"Noisy timing in job {r['job_dir']} ({r['sweep']}): the interquartile "
                         f"range of {', '.join(which)} exceeds {spread.NOISY_IQR:.0%} of the "
                         "median; the machine was probably busy, rerun it with force=true.")
    return notes


# Cells that run the same forward (model, cache, block, batch, ...) should take about the same
# time per forward; refresh steps make threshold cells up to ~2x slower per forward than fixed
# ones, so a larger spread means the machine's load changed between them.
_SAME_FORWARD = ("model.name", "task.name", "gen_length", "cache.name", "block_length",
                 "batch_size", "dtype", "device", "graphs", "fused")
_SHOWN = _SAME_FORWARD[:6]
LOAD_RATIO = 3.0


def _load_notes(ok: pd.DataFrame) -> list[str]:
    ms = spread.value(ok, "ms_per_forward")
    keys = [c for c in _SAME_FORWARD if c in ok.columns]
    if not keys or ms.isna().all():
        return []
    notes = []
    for key, idx in ok.groupby(keys, dropna=False).groups.items():
        times = ms.loc[idx].dropna()
        key = key if isinstance(key, tuple) else (key,)
        if len(times) >= 2 and times.max() > LOAD_RATIO * times.min():
            notes.append(
                f"Timing looks load-dependent: ms/forward ranges {times.min():.1f}–"
                f"{times.max():.1f} ({times.max() / times.min():.1f}×) across "
                f"{len(times)} jobs that run the same forward "
                f"({', '.join(f'{k}={v}' for k, v in zip(keys, key) if k in _SHOWN)}); "
                "compare their speeds with care or rerun them on an idle machine.")
    return notes
