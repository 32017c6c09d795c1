"""The paper's figures, redrawn from a sweep DataFrame (analysis.load_sweep).

Every function takes the frame and an output folder, draws one figure per (model, task, gen
length) group (or per job for KV similarity), writes PNG + PDF, and returns a FigureResult: the
written paths, or `skipped` with the reason when the data cannot support the figure (it never
draws an empty plot). Only rows with status "ok" are used.

- pareto:             accuracy vs tokens/s, Pareto front, colour = cache, marker = decoding.
- threshold_sweep:    paper Fig. 5: accuracy and tokens per step vs threshold, against fixed k.
- block_size_sweep:   paper Fig. 4: accuracy and tokens/s vs block length, one line per cache.
- kv_similarity:      paper Fig. 3: step x step heatmaps (prompt, suffix) and per-layer
                      similarity to the refresh step (results.json `kv_similarity`).
- latency_breakdown:  paper Fig. 1c: steps (NFE), time per step, latency per sample.
- agreement:          token / answer agreement with one-token-per-step decoding vs threshold (or
                      per configuration), next to accuracy (`measure.agreement`).
- replay_gallery:     the jobs' decoding replays (`measure.replays`, analysis.replays).
The Table 1/2 writer lives in analysis.tables (write_speedup_table).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from . import methods
from .replays import gallery as replay_gallery
from .style import (LABELS, FigureResult, cache_color, decoding_marker, new_figure, save, slug,
                    styled)


# Columns the figures index directly; absent ones read as NaN so a figure skips instead of failing.
_EXPECTED = ("cache.name", "decoding.name", "decoding.threshold", "block_length", "gen_length",
             "steps", "metrics.accuracy", "metrics.tokens_per_s", "metrics.tokens_per_forward")


def _figure(func):
    """Run a figure function in the house style on the finished rows only."""
    @functools.wraps(func)
    def wrapper(df: pd.DataFrame, out_dir, *args, **kwargs) -> FigureResult:
        ok = df[df["status"] == "ok"] if "status" in df.columns else df
        ok = ok.assign(**{c: np.nan for c in _EXPECTED if c not in ok.columns})
        if ok.empty:
            return FigureResult.skip(func.__name__, "no finished job (status ok)")
        with styled():
            return func(ok, out_dir, *args, **kwargs)
    return wrapper


@_figure
def pareto(df: pd.DataFrame, out_dir) -> FigureResult:
    """Accuracy (%) vs throughput (tokens/s) per group, with the Pareto front.

    Needs: metrics.accuracy, metrics.tokens_per_s, cache.name, decoding.name; >= 2 jobs a group.
    """
    result = FigureResult("pareto")
    for key, sub in methods.groups(_with(df, "metrics.accuracy", "metrics.tokens_per_s")):
        if len(sub) < 2:
            continue
        fig, (ax,) = new_figure(width=5.2, height=3.8)
        x = sub["metrics.tokens_per_s"].astype(float)
        y = sub["metrics.accuracy"].astype(float) * 100
        for (_, r), xi, yi in zip(sub.iterrows(), x, y):
            ax.scatter(xi, yi, color=cache_color(methods.get(r, "cache.name")),
                       marker=decoding_marker(methods.get(r, "decoding.name")), s=40, zorder=3)
        front = pareto_front(x.to_numpy(), y.to_numpy())
        # "pre": between two front points the boundary sits at the lower (right) point's accuracy
        ax.step(x.to_numpy()[front], y.to_numpy()[front], where="pre", color="black", lw=1,
                alpha=0.6, zorder=2, label="Pareto front")
        with_block = methods.varies(sub, "block_length")
        for i in front:
            ax.annotate(methods.label(sub.iloc[i], with_block), (x.iloc[i], y.iloc[i]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=LABELS["metrics.tokens_per_s"], ylabel=LABELS["metrics.accuracy"],
               title=f"Accuracy vs throughput\n{methods.group_title(key)}")
        _legend_cache_decoding(ax, sub, extra=[Line2D([], [], color="black", lw=1,
                                                      label="Pareto front")])
        _add(result, save(fig, out_dir, slug("pareto", *key)),
             f"Accuracy vs throughput, {methods.group_title(key)}")
    return _or_skip(result, "fewer than 2 jobs with accuracy and tokens/s in every group")


def pareto_front(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the points no other point beats on both x and y (higher is better), by x."""
    keep = []
    for i in range(len(x)):
        dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
        if not dominated and not (np.isnan(x[i]) or np.isnan(y[i])):
            keep.append(i)
    return sorted(keep, key=lambda i: x[i])


@_figure
def threshold_sweep(df: pd.DataFrame, out_dir) -> FigureResult:
    """Paper Fig. 5: accuracy and tokens per step vs confidence threshold, against fixed k.

    Needs: decoding.name == "threshold" with >= 2 values of decoding.threshold for one cache and
    block length; metrics.accuracy, metrics.tokens_per_forward. Fixed-decoding jobs of the same
    caches/block lengths (k = gen_length / steps) are drawn as dotted reference lines and as
    points in the accuracy-vs-tokens-per-step panel.
    """
    result = FigureResult("threshold_sweep")
    for key, sub in methods.groups(df):
        thr = sub[(sub["decoding.name"] == "threshold") & sub["decoding.threshold"].notna()]
        curves = [(ck, _mean_by(c, "decoding.threshold"))
                  for ck, c in thr.groupby(["cache.name", "block_length"], dropna=False)
                  if c["decoding.threshold"].nunique() >= 2]
        if not curves:
            continue
        fixed = sub[(sub["decoding.name"] == "fixed")
                    & sub["cache.name"].isin({ck[0] for ck, _ in curves})
                    & sub["block_length"].isin({ck[1] for ck, _ in curves})]
        fig, axes = new_figure(ncols=3, width=3.6)
        many_blocks = len({ck[1] for ck, _ in curves}) > 1
        for (cache, block), c in curves:
            name = f"threshold, {cache}" + (f", block {block:g}" if many_blocks else "")
            style = dict(color=cache_color(cache), marker="^", label=name)
            axes[0].plot(c["decoding.threshold"], c["metrics.accuracy"] * 100, **style)
            axes[1].plot(c["decoding.threshold"], c["metrics.tokens_per_forward"], **style)
            axes[2].plot(c["metrics.tokens_per_forward"], c["metrics.accuracy"] * 100, **style)
        for _, r in fixed.iterrows():
            k, cache = methods.fixed_k(r), methods.get(r, "cache.name")
            name = f"fixed k={k:g}, {cache}" if k is not None else f"fixed, {cache}"
            color = cache_color(cache)
            for ax, y in ((axes[0], r["metrics.accuracy"] * 100),
                          (axes[1], r["metrics.tokens_per_forward"])):
                ax.axhline(y, color=color, ls=":", lw=1)
                ax.annotate(name, xy=(1, y), xycoords=("axes fraction", "data"), ha="right",
                            va="bottom", fontsize=6, color=color)
            axes[2].scatter(r["metrics.tokens_per_forward"], r["metrics.accuracy"] * 100,
                            facecolors="none", edgecolors=color, marker="o", label=name)
        axes[0].set(xlabel=LABELS["decoding.threshold"], ylabel=LABELS["metrics.accuracy"],
                    title="(a) accuracy vs threshold")
        axes[1].set(xlabel=LABELS["decoding.threshold"],
                    ylabel=LABELS["metrics.tokens_per_forward"], title="(b) tokens per step")
        axes[2].set(xlabel=LABELS["metrics.tokens_per_forward"], ylabel=LABELS["metrics.accuracy"],
                    title="(c) threshold vs fixed k")
        axes[2].legend(loc="best")
        fig.suptitle(f"Threshold sweep — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("threshold_sweep", *key)),
             f"Threshold sweep (paper Fig. 5), {methods.group_title(key)}")
    return _or_skip(result, "no threshold axis (needs >= 2 values of decoding.threshold "
                            "with decoding=threshold for one cache and block length)")


@_figure
def block_size_sweep(df: pd.DataFrame, out_dir) -> FigureResult:
    """Paper Fig. 4: accuracy and tokens/s vs block length, one line per cache (and decoding).

    Needs: >= 2 values of block_length for one (cache, decoding) configuration;
    metrics.accuracy, metrics.tokens_per_s.
    """
    result = FigureResult("block_size_sweep")
    for key, sub in methods.groups(_with(df, "block_length")):
        sub = sub.assign(_line=[f"{methods.get(r, 'cache.name', 'none')}, "
                                f"{methods.decoding_label(r)}" for _, r in sub.iterrows()])
        lines = [(name, _mean_by(ln, "block_length"), ln.iloc[0])
                 for name, ln in sub.groupby("_line", sort=True)
                 if ln["block_length"].nunique() >= 2]
        if not lines:
            continue
        fig, axes = new_figure(ncols=2)
        for name, ln, r0 in lines:
            style = dict(color=cache_color(methods.get(r0, "cache.name")),
                         marker=decoding_marker(methods.get(r0, "decoding.name")), label=name)
            axes[0].plot(ln["block_length"], ln["metrics.accuracy"] * 100, **style)
            axes[1].plot(ln["block_length"], ln["metrics.tokens_per_s"], **style)
        ticks = sorted({float(b) for _, ln, _ in lines for b in ln["block_length"]})
        for ax, col in zip(axes, ("metrics.accuracy", "metrics.tokens_per_s")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set(xlabel=LABELS["block_length"], ylabel=LABELS[col])
        axes[0].set_title("(a) accuracy")
        axes[1].set_title("(b) throughput")
        axes[1].legend(loc="best")
        fig.suptitle(f"Block-size sweep — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("block_size_sweep", *key)),
             f"Block-size sweep (paper Fig. 4), {methods.group_title(key)}")
    return _or_skip(result, "no block-size axis (needs >= 2 values of block_length for one "
                            "cache and decoding configuration)")


@_figure
def kv_similarity(df: pd.DataFrame, out_dir) -> FigureResult:
    """Paper Fig. 3, one figure per job that recorded `kv_similarity`.

    Panels (each only when present): heatmap.prompt and heatmap.suffix (step x step cosine
    similarity, first sample, mean over layers); key and value similarity to the refresh step
    per layer, one line per region (prompt / finished / block / suffix).
    """
    result = FigureResult("kv_similarity")
    if "kv_similarity" not in df.columns:
        return FigureResult.skip("kv_similarity", "no KV metric (no job has kv_similarity)")
    for _, r in df[df["kv_similarity"].apply(lambda v: isinstance(v, dict))].iterrows():
        kv = r["kv_similarity"]
        heatmaps = {region: _matrix(m) for region, m in (kv.get("heatmap") or {}).items()}
        heatmaps = {k: m for k, m in heatmaps.items() if m is not None}
        curves = {kind: _layer_curves(kv.get("layers") or [], kind) for kind in ("key", "value")}
        curves = {k: c for k, c in curves.items() if c}
        n = len(heatmaps) + len(curves)
        if n == 0:
            continue
        fig, axes = new_figure(ncols=n, width=3.6, height=3.3)
        for ax, (region, m) in zip(axes, heatmaps.items()):
            im = ax.imshow(m, origin="lower", cmap="viridis", aspect="auto")
            fig.colorbar(im, ax=ax, label="Cosine similarity")
            ax.grid(False)
            ax.set(xlabel="Decoding step", ylabel="Decoding step",
                   title=f"{region} region, step × step")
        for ax, (kind, lines) in zip(axes[len(heatmaps):], curves.items()):
            for region, (layers, values) in lines.items():
                ax.plot(layers, values, marker=".", label=region)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(xlabel="Layer", ylabel="Cosine similarity to refresh step",
                   title=f"{kind}s vs refresh step")
            ax.legend(loc="best")
        title = methods.group_title(tuple(methods.get(r, k, "?") for k in methods.GROUP_KEYS))
        what = f"{methods.label(r, with_block=True)}, job {r.get('job_dir')}"
        fig.suptitle(f"KV similarity — {title}\n{what}")
        _add(result, save(fig, out_dir, slug("kv_similarity", r.get("sweep"), r.get("job_dir"))),
             f"KV cosine similarity (paper Fig. 3), {title}, {what}")
    return _or_skip(result, "no KV metric (no job has kv_similarity with a heatmap or layers)")


@_figure
def latency_breakdown(df: pd.DataFrame, out_dir) -> FigureResult:
    """Paper Fig. 1c: per configuration, steps per sample (NFE), time per step, latency per sample.

    Needs any of metrics.nfe_mean, metrics.ms_per_forward (else latency / NFE),
    metrics.latency_s_median (else latency_s_mean). A sample's latency_s is its batch's wall time
    (docs/results_schema.md), so with batch_size > 1 the last panel is labelled per batch.
    """
    result = FigureResult("latency_breakdown")
    for key, sub in methods.groups(df):
        panels = {
            "metrics.nfe_mean": _col(sub, "metrics.nfe_mean"),
            "metrics.ms_per_forward": _col(sub, "metrics.ms_per_forward").fillna(
                _col(sub, "metrics.latency_s_mean") / _col(sub, "metrics.nfe_mean") * 1000),
            "metrics.latency_s_median": _col(sub, "metrics.latency_s_median").fillna(
                _col(sub, "metrics.latency_s_mean")),
        }
        panels = {k: v for k, v in panels.items() if v.notna().any()}
        if not panels:
            continue
        labels_x = dict(LABELS)
        if _col(sub, "batch_size").max() > 1:
            labels_x["metrics.latency_s_median"] = (
                f"Latency per batch (s, median; batch ≤ {_col(sub, 'batch_size').max():g})")
        order = sorted(range(len(sub)), key=lambda i: methods.sort_key(sub.iloc[i]))
        with_block = methods.varies(sub, "block_length")
        labels = [methods.label(sub.iloc[i], with_block) for i in order]
        colors = [cache_color(methods.get(sub.iloc[i], "cache.name", "none")) for i in order]
        fig, axes = new_figure(ncols=len(panels), width=3.4, height=0.9 + 0.28 * len(sub))
        for j, (ax, (col, values)) in enumerate(zip(axes, panels.items())):
            ypos = np.arange(len(order))
            ax.barh(ypos, values.to_numpy()[order], color=colors)
            ax.set_yticks(ypos, labels if j == 0 else [""] * len(order))
            ax.invert_yaxis()
            ax.set_xlabel(labels_x[col])
            ax.grid(axis="y", visible=False)
        fig.suptitle(f"Latency breakdown — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("latency_breakdown", *key)),
             f"Latency breakdown (paper Fig. 1c), {methods.group_title(key)}")
    return _or_skip(result, "no NFE or latency metrics")


@_figure
def agreement(df: pd.DataFrame, out_dir) -> FigureResult:
    """Agreement with one-token-per-step decoding (`measure.agreement`, Fast-dLLM's Theorem 1
    measured), next to accuracy.

    Needs: metrics.agreement_tokens. With >= 2 thresholds for one cache and block length: (a) token
    and answer agreement vs threshold, one colour per cache (other rules of those caches dotted);
    (b) accuracy vs threshold, with the
    one-token-per-step decode's accuracy on the same samples dotted. Otherwise one bar group per
    configuration (rule, cache): token, exact and answer agreement and both accuracies.
    """
    result = FigureResult("agreement")
    for key, sub in methods.groups(_with(df, "metrics.agreement_tokens")):
        thr = sub[(sub["decoding.name"] == "threshold") & sub["decoding.threshold"].notna()]
        curves = [(ck, _mean_by(c, "decoding.threshold"))
                  for ck, c in thr.groupby(["cache.name", "block_length"], dropna=False)
                  if c["decoding.threshold"].nunique() >= 2]
        if curves:
            fig, axes = new_figure(ncols=2, width=3.9, height=3.2)
            many_blocks = len({ck[1] for ck, _ in curves}) > 1
            for i, ((cache, block), c) in enumerate(curves):
                name = f"{cache} cache" + (f", block {block:g}" if many_blocks else "")
                color, t = cache_color(cache), c["decoding.threshold"]
                size = dict(ms=max(8 - 2 * i, 3), lw=max(2.2 - 0.6 * i, 0.8))  # equal curves stay visible
                axes[0].plot(t, c["metrics.agreement_tokens"] * 100, marker="^", color=color,
                             label=f"tokens, {name}", **size)
                axes[0].plot(t, c["metrics.agreement_answer"] * 100, marker="o", ls="--", color=color,
                             mfc="none", label=f"answer, {name}", **size)
                axes[1].plot(t, c["metrics.accuracy"] * 100, marker="^", color=color, label=f"threshold, {name}",
                             **size)
                axes[1].axhline(c["metrics.agreement_sequential_accuracy"].mean() * 100, color=color, ls=":",
                                lw=1, label=f"one token per step, {name}")
            others = sub[(sub["decoding.name"] != "threshold") & sub["cache.name"].isin({ck[0] for ck, _ in curves})]
            for _, r in others.iterrows():  # other rules of the same caches: reference lines
                axes[0].axhline(r["metrics.agreement_tokens"] * 100, color=cache_color(r["cache.name"]), ls=":",
                                lw=1, label=f"tokens, {methods.label(r)}")
            axes[0].set(xlabel=LABELS["decoding.threshold"], ylabel="Agreement with 1 token/step (%)",
                        title="(a) agreement vs threshold")
            axes[1].set(xlabel=LABELS["decoding.threshold"], ylabel=LABELS["metrics.accuracy"],
                        title="(b) accuracy vs threshold")
            for ax in axes:
                ax.legend(loc="best", fontsize=6)
        else:
            sub = sub.iloc[sorted(range(len(sub)), key=lambda i: methods.sort_key(sub.iloc[i]))]
            bars = {"metrics.agreement_tokens": "token agreement", "metrics.agreement_exact": "exact match",
                    "metrics.agreement_answer": "answer agreement", "metrics.accuracy": "accuracy",
                    "metrics.agreement_sequential_accuracy": "accuracy, 1 token/step"}
            fig, (ax,) = new_figure(width=5.6, height=1.2 + 0.55 * len(sub))
            ypos, h = np.arange(len(sub)), 0.8 / len(bars)
            for j, (col, name) in enumerate(bars.items()):
                values = pd.to_numeric(sub[col], errors="coerce") * 100 if col in sub else np.nan * ypos
                ax.barh(ypos + (j - (len(bars) - 1) / 2) * h, values, height=h, label=name,
                        color=f"C{j}", hatch="//" if "accuracy" in col else None, alpha=0.9)
            ax.set_yticks(ypos, [methods.label(r, methods.varies(sub, "block_length")) for _, r in sub.iterrows()])
            ax.invert_yaxis()
            ax.set(xlabel="%", xlim=(0, 100), title="Agreement with one-token-per-step decoding, and accuracy")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 / (1 + 0.3 * len(sub))), ncol=3,
                      frameon=False, fontsize=7)
        n = int(pd.to_numeric(sub["metrics.agreement_n"], errors="coerce").min()) if "metrics.agreement_n" in sub else 0
        fig.suptitle(f"Parallel vs sequential decoding — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("agreement", *key)),
             f"Agreement with one-token-per-step decoding (same model, cache and block length; {n}+ samples per "
             f"job), {methods.group_title(key)}")
    return _or_skip(result, "no agreement metric (run with measure.agreement=true)")


ALL = (pareto, threshold_sweep, block_size_sweep, kv_similarity, latency_breakdown)
ALL += (agreement, replay_gallery)


def _with(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    if any(c not in df.columns for c in cols):
        return df.iloc[0:0]
    return df.dropna(subset=list(cols))


def _mean_by(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Metrics averaged over jobs that share `col` (seeds, repeated sweeps), sorted by `col`."""
    metrics = [c for c in df.columns if c.startswith("metrics.")]
    numeric = df[metrics].apply(pd.to_numeric, errors="coerce")
    return numeric.groupby(df[col]).mean().reset_index().sort_values(col)


def _col(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[col], errors="coerce").astype(float)


def _matrix(data) -> np.ndarray | None:
    try:
        m = np.array(data, dtype=float)
    except (TypeError, ValueError):
        return None
    return m if m.ndim == 2 and m.size and not np.isnan(m).all() else None


def _layer_curves(layers: list, kind: str) -> dict:
    """{region: (layers, similarity to the refresh step)} for "key" or "value"; all-NaN dropped."""
    regions: dict[str, tuple[list, list]] = {}
    for i, layer in enumerate(layers):
        to_refresh = ((layer.get(kind) or {}).get("to_refresh")) or {}
        for region, value in to_refresh.items():
            xs, ys = regions.setdefault(region, ([], []))
            xs.append(layer.get("layer", i))
            ys.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return {k: v for k, v in regions.items() if not all(math.isnan(y) for y in v[1])}


def _legend_cache_decoding(ax, sub: pd.DataFrame, extra=()):
    handles = [Line2D([], [], ls="", marker="o", color=cache_color(c), label=f"cache={c}")
               for c in sorted(sub["cache.name"].dropna().unique())]
    handles += [Line2D([], [], ls="", marker=decoding_marker(d), color="k", label=f"decoding={d}")
                for d in sorted(sub["decoding.name"].dropna().unique())]
    ax.legend(handles=handles + list(extra), loc="upper center", bbox_to_anchor=(0.5, -0.16),
              ncol=3, frameon=False)


def _add(result: FigureResult, paths: list, caption: str) -> None:
    result.paths += paths
    result.images.append((paths[0], caption))


def _or_skip(result: FigureResult, reason: str) -> FigureResult:
    if not result.paths:
        result.skipped = reason
    return result
