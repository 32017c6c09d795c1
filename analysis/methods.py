"""Names for configurations: the Fast-dLLM role of a job and a short human label.

Roles follow the paper's tables: "baseline" (no cache, fixed decoding at one token per step),
"+cache" (prefix or dual cache, fixed one token per step), "+parallel" (no cache, a parallel rule
such as threshold or factor), "+cache +parallel" (both). Fixed decoding at k > 1 tokens per step
(k = gen_length / steps) is the naive parallel baseline of paper Fig. 5 and gets role "fixed k".
All helpers take one row (a Series) of the frame from analysis.load.
"""
from __future__ import annotations

import math
import numbers

import pandas as pd

ROLE_ORDER = ("baseline", "+cache", "+parallel", "+cache +parallel", "fixed k")
CACHE_ORDER = {"none": 0, "prefix": 1, "dual": 2}
GROUP_KEYS = ("model.name", "task.name", "gen_length")  # one table block / figure per group


def get(row: pd.Series, key: str, default=None):
    """row[key] with NaN/None/absent mapped to `default`."""
    value = row.get(key, default)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return value


def fixed_k(row: pd.Series) -> float | None:
    """Tokens per step of fixed decoding: gen_length / steps (None if not fixed or unknown)."""
    if get(row, "decoding.name") != "fixed":
        return None
    gen, steps = get(row, "gen_length"), get(row, "steps")
    if not gen or not steps:
        return None
    return float(gen) / float(steps)


def role(row: pd.Series) -> str:
    cached = get(row, "cache.name", "none") != "none"
    if get(row, "decoding.name") == "fixed":
        k = fixed_k(row)
        if k is not None and k != 1:
            return "fixed k"
        return "+cache" if cached else "baseline"
    return "+cache +parallel" if cached else "+parallel"


def decoding_label(row: pd.Series) -> str:
    name = get(row, "decoding.name", "?")
    if name == "fixed":
        k = fixed_k(row)
        return f"fixed k={k:g}" if k is not None else "fixed"
    param = get(row, f"decoding.{name}")  # decoding.threshold / decoding.factor
    return f"{name} {param:g}" if isinstance(param, numbers.Real) else str(name)


def label(row: pd.Series, with_block: bool = False) -> str:
    """Short label: "baseline", "+cache (dual)", "+cache +parallel (dual, threshold 0.9)",
    "fixed k=2", "+cache (dual), fixed k=2"; with_block appends ", block 16"."""
    r, cache = role(row), get(row, "cache.name", "none")
    block = get(row, "block_length")
    block = [f"block {block:g}"] if with_block and block is not None else []
    if r == "fixed k":
        return ", ".join(([f"+cache ({cache})"] if cache != "none" else [])
                         + [decoding_label(row)] + block)
    details = (([cache] if cache != "none" else [])
               + ([decoding_label(row)] if r not in ("baseline", "+cache") else []) + block)
    return f"{r} ({', '.join(details)})" if details else r


def sort_key(row: pd.Series) -> tuple:
    r = role(row)
    return (
        ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER),
        CACHE_ORDER.get(get(row, "cache.name", "none"), len(CACHE_ORDER)),
        str(get(row, "cache.name", "")),
        str(get(row, "decoding.name", "")),
        float(get(row, "decoding.threshold", 0) or 0),
        float(fixed_k(row) or 0),
        float(get(row, "block_length", 0) or 0),
    )


def group_title(key: tuple) -> str:
    """"model · task · gen length N" for a GROUP_KEYS tuple."""
    model, task, gen = key
    gen_txt = f"{gen:g}" if isinstance(gen, numbers.Real) else str(gen)
    return f"{model} · {task} · gen length {gen_txt}"


def groups(df: pd.DataFrame):
    """Yield (key, sub-frame) per (model, task, gen_length); absent columns read as "?"."""
    if df.empty:
        return
    frame = df.copy()
    for col in GROUP_KEYS:
        if col not in frame.columns:
            frame[col] = "?"
        frame[col] = frame[col].where(frame[col].notna(), "?")
    for key, sub in frame.groupby(list(GROUP_KEYS), sort=False, dropna=False):
        yield tuple(key), sub


def varies(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].dropna().nunique() > 1
