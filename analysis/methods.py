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
CACHE_ORDER = {"none": 0, "prefix": 1, "dual": 2, "dllm_cache": 3, "dkv_decode": 4, "dkv_greedy": 5}
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


def point_label(row: pd.Series, with_block: bool = False) -> str:
    """Short text beside a plotted point: "dual, thr 0.9", "none, k=1", "prefix, factor 1"."""
    name = get(row, "decoding.name", "?")
    if name == "fixed":
        k = fixed_k(row)
        rule = f"k={k:g}" if k is not None else "fixed"
    else:
        param = get(row, f"decoding.{name}")
        short = {"threshold": "thr"}.get(name, name)
        rule = f"{short} {param:g}" if isinstance(param, numbers.Real) else str(name)
    block = get(row, "block_length")
    tail = f", block {block:g}" if with_block and block is not None else ""
    return f"{get(row, 'cache.name', 'none')}, {rule}{tail}"


def point_labels(df: pd.DataFrame) -> list[str]:
    """point_label of every row (block length added when it varies), and the sweep's name where
    rows of several sweeps would otherwise share a label."""
    texts = [point_label(r, varies(df, "block_length")) for _, r in df.iterrows()]
    return _disambiguated(df, texts)


def job_labels(df: pd.DataFrame) -> list[str]:
    """label of every row, as point_labels does it for the longer table-style label."""
    texts = [label(r, varies(df, "block_length")) for _, r in df.iterrows()]
    return _disambiguated(df, texts)


def _disambiguated(df: pd.DataFrame, texts: list[str]) -> list[str]:
    if len(set(texts)) == len(texts) or not varies(df, "sweep"):
        return texts
    shared = {t for t in texts if texts.count(t) > 1}
    return [f"{t} [{get(r, 'sweep', '?')}]" if t in shared else t
            for t, (_, r) in zip(texts, df.iterrows())]


def n_configs(df: pd.DataFrame) -> int:
    """How many distinct configurations the rows hold (by config_hash; by label where a row has
    none), so that one job read twice, or a sweep of a single cell, counts once."""
    return len({get(r, "config_hash") or label(r, with_block=True) for _, r in df.iterrows()})


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
