"""The paper's figures, redrawn from a sweep DataFrame (analysis.load_sweep).

Every function takes the frame and an output folder, draws one figure per (model, task, gen
length) group (or per job for KV similarity), writes PNG + PDF, and returns a FigureResult: the
written paths, or `skipped` with the reason when the data cannot support the figure (it never
draws an empty plot). Only rows with status "ok" are used. Figures that compare configurations
need at least two in a group, so a single-cell sweep gets only its tables (and Fig. 3). Timed
metrics are read through analysis.spread: the median when a job recorded repeats, with its
interquartile range drawn as error bars or bands.

- pareto:             accuracy vs tokens/s, Pareto front, colour = cache, marker = decoding,
                      every point labelled.
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
from matplotlib.ticker import MaxNLocator

from . import methods, spread
from .replays import gallery as replay_gallery
from .style import (LABELS, FigureResult, cache_color, decoding_marker, new_figure, place_labels,
                    save, slug, styled)


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

    Needs: metrics.accuracy, tokens/s, cache.name, decoding.name; >= 2 configurations a group.
    Every point is labelled (cache and the rule's parameter); colour = cache and marker =
    decoding, exactly as in the legend; the tokens/s interquartile range, when recorded, is drawn
    as horizontal error bars.
    """
    result = FigureResult("pareto")
    df = df.assign(_tps=spread.value(df, "tokens_per_s"))
    for key, sub in methods.groups(_with(df, "metrics.accuracy", "_tps")):
        if methods.n_configs(sub) < 2:
            continue
        sub = sub.iloc[sorted(range(len(sub)), key=lambda i: methods.sort_key(sub.iloc[i]))]
        fig, (ax,) = new_figure(width=5.6, height=4.2)
        x = sub["_tps"].to_numpy(dtype=float)
        y = sub["metrics.accuracy"].to_numpy(dtype=float) * 100
        xerr = spread.errorbars(sub, "tokens_per_s")
        kinds = [(methods.get(r, "cache.name", "none"), methods.get(r, "decoding.name", "?"))
                 for _, r in sub.iterrows()]
        for cache, dec in sorted(set(kinds), key=lambda k: (methods.CACHE_ORDER.get(k[0], 9), k)):
            idx = [i for i, k in enumerate(kinds) if k == (cache, dec)]
            ax.errorbar(x[idx], y[idx], xerr=None if xerr is None else xerr[:, idx],
                        fmt=decoding_marker(dec), color=cache_color(cache), ms=6, capsize=2,
                        elinewidth=0.8, ls="none", zorder=3, label=f"{cache} cache, {dec}")
        _percent_axis(ax)
        front = pareto_front(x, y)
        # the boundary of the region the front dominates, out to the axes (visible even for a
        # one-point front); "pre": between two front points it sits at the right point's accuracy
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        ax.step([xlim[0], *x[front], x[front][-1]], [y[front][0], *y[front], ylim[0]],
                where="pre", color="black", lw=1, alpha=0.5, zorder=2, label="Pareto front")
        ax.set(xlim=xlim, ylim=ylim)  # the boundary ends on the axes
        ax.set(xlabel=LABELS["metrics.tokens_per_s"], ylabel=LABELS["metrics.accuracy"],
               title=f"Accuracy vs throughput\n{methods.group_title(key)}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
        _label_points(ax, x, y, methods.point_labels(sub))
        _add(result, save(fig, out_dir, slug("pareto", *key)),
             f"Accuracy vs throughput, {methods.group_title(key)}"
             + (" (bars: tokens/s interquartile range over the timing repeats)"
                if xerr is not None else ""))
    return _or_skip(result, "needs at least 2 finished configurations with accuracy and "
                            "tokens/s in one model · task · gen length")


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
    """Paper Fig. 5: accuracy and tokens decoded per step vs confidence threshold, against fixed k.

    Needs: decoding.name == "threshold" with >= 2 values of decoding.threshold for one cache and
    block length; metrics.accuracy, metrics.nfe_mean. Tokens decoded per step is gen_length / NFE
    (every generated position, EOS padding included), which is exactly k for fixed decoding.
    Fixed-decoding jobs of the same caches/block lengths (k = gen_length / steps) are drawn as
    dotted reference lines, and a third panel, accuracy vs tokens per step, sets the threshold
    curve against them; without fixed-k jobs that panel is left out.
    """
    result = FigureResult("threshold_sweep")
    df = df.assign(_per_step=_decoded_per_step(df))
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
        fixed = fixed.assign(_k=[methods.fixed_k(r) for _, r in fixed.iterrows()])
        fixed = fixed.sort_values(["cache.name", "_k"])
        fig, axes = new_figure(ncols=3 if len(fixed) else 2, width=3.7, height=3.3)
        many_blocks = len({ck[1] for ck, _ in curves}) > 1
        for i, ((cache, block), c) in enumerate(curves):
            name = f"threshold, {cache} cache" + (f", block {block:g}" if many_blocks else "")
            style = dict(color=cache_color(cache), marker="^", label=name, **_line_style(i))
            axes[0].plot(c["decoding.threshold"], c["metrics.accuracy"] * 100, **style)
            axes[1].plot(c["decoding.threshold"], c["_per_step"], **style)
            if len(fixed):
                axes[2].plot(c["_per_step"], c["metrics.accuracy"] * 100, **style)
        for _, r in fixed.iterrows():
            k, cache = r["_k"], methods.get(r, "cache.name")
            color = cache_color(cache)
            for ax, y in ((axes[0], r["metrics.accuracy"] * 100), (axes[1], r["_per_step"])):
                # the label goes at the end of the line farther from the curves there
                ends = [np.array([ln.get_ydata()[i] for ln in ax.get_lines()], float)
                        for i in (0, -1)]
                right = min(abs(ends[1] - y), default=0) > min(abs(ends[0] - y), default=0)
                ax.axhline(y, color=color, ls=":", lw=1)
                ax.annotate(f"fixed k={k:g}" if pd.notna(k) else "fixed",
                            xy=(0.98 if right else 0.02, y), xycoords=("axes fraction", "data"),
                            ha="right" if right else "left", va="bottom", fontsize=7, color=color)
        for cache, f in fixed.groupby("cache.name", sort=False):
            axes[2].scatter(f["_per_step"], f["metrics.accuracy"] * 100, facecolors="none",
                            edgecolors=cache_color(cache), marker="o", s=36, zorder=3,
                            label=f"fixed k, {cache} cache")
        thresholds = sorted({float(t) for _, c in curves for t in c["decoding.threshold"]})
        for ax in axes[:2]:
            ax.set_xticks(thresholds, [f"{t:g}" for t in thresholds])
        axes[0].set(xlabel=LABELS["decoding.threshold"], ylabel=LABELS["metrics.accuracy"],
                    title="(a) accuracy vs threshold")
        _percent_axis(axes[0])
        axes[1].set(xlabel=LABELS["decoding.threshold"], ylabel=LABELS["tokens_per_step"],
                    title="(b) tokens per step vs threshold")
        if len(fixed):
            axes[2].set(xlabel=LABELS["tokens_per_step"], ylabel=LABELS["metrics.accuracy"],
                        title="(c) threshold vs fixed k")
            _percent_axis(axes[2])
            axes[2].legend(loc="best")
            shown = pd.concat([c for _, c in curves] + [fixed], ignore_index=True)
            texts = [f"{r['decoding.threshold']:g}" if pd.notna(r["decoding.threshold"])
                     else f"k={r['_k']:g}" if pd.notna(r["_k"]) else "fixed"
                     for _, r in shown.iterrows()]
            place_labels(axes[2], shown["_per_step"].to_numpy(float),
                         shown["metrics.accuracy"].to_numpy(float) * 100, texts)
        else:
            axes[1].legend(loc="best")
        fig.suptitle(f"Threshold sweep — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("threshold_sweep", *key)),
             f"Threshold sweep (paper Fig. 5), {methods.group_title(key)}; tokens per step = "
             "gen length / NFE" + ("; (c): points labelled with their threshold or k"
                                   if len(fixed) else
                                   "; no fixed-k job of the same cache, so no comparison panel"))
    return _or_skip(result, "no threshold axis (needs >= 2 values of decoding.threshold "
                            "with decoding=threshold for one cache and block length)")


@_figure
def block_size_sweep(df: pd.DataFrame, out_dir) -> FigureResult:
    """Paper Fig. 4: accuracy and tokens/s vs block length, one line per cache (and decoding).

    Needs: >= 2 values of block_length for one (cache, decoding) configuration;
    metrics.accuracy, tokens/s (with its interquartile range as a band when recorded).
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
        banded = False
        for i, (name, ln, r0) in enumerate(lines):
            style = dict(color=cache_color(methods.get(r0, "cache.name")),
                         marker=decoding_marker(methods.get(r0, "decoding.name")), label=name,
                         **_line_style(i))
            axes[0].plot(ln["block_length"], ln["metrics.accuracy"] * 100, **style)
            axes[1].plot(ln["block_length"], spread.value(ln, "tokens_per_s"), **style)
            q25, q75 = spread.quartiles(ln, "tokens_per_s")
            if (q25.notna() & q75.notna()).any():
                axes[1].fill_between(ln["block_length"], q25, q75, color=style["color"],
                                     alpha=0.2, lw=0)
                banded = True
        ticks = sorted({float(b) for _, ln, _ in lines for b in ln["block_length"]})
        for ax, col in zip(axes, ("metrics.accuracy", "metrics.tokens_per_s")):
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.set(xlabel=LABELS["block_length"], ylabel=LABELS[col])
        axes[0].set_title("(a) accuracy")
        _percent_axis(axes[0])
        axes[1].set_title("(b) throughput")
        axes[1].legend(loc="best")
        fig.suptitle(f"Block-size sweep — {methods.group_title(key)}")
        _add(result, save(fig, out_dir, slug("block_size_sweep", *key)),
             f"Block-size sweep (paper Fig. 4), {methods.group_title(key)}"
             + ("; bands: tokens/s interquartile range over the timing repeats" if banded else ""))
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
        fig.get_layout_engine().set(w_pad=0.12)  # a colorbar's label beside the next panel's
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
            ax.set(xlabel="Layer", ylabel="Cosine similarity",
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

    Needs >= 2 configurations in a group and any of metrics.nfe_mean, ms/forward (else latency /
    NFE), latency (latency_s_median, else latency_s_mean); timed values carry their interquartile
    range as error bars when recorded. A sample's latency_s is its batch's wall time
    (docs/results_schema.md), so with batch_size > 1 the last panel is labelled per batch.
    """
    result = FigureResult("latency_breakdown")
    for key, sub in methods.groups(df):
        if methods.n_configs(sub) < 2:
            continue
        ms = spread.value(sub, "ms_per_forward")
        fallback_ms = _col(sub, "metrics.latency_s_mean") / _col(sub, "metrics.nfe_mean") * 1000
        panels = {  # column -> (values, error bars or None)
            "metrics.nfe_mean": (_col(sub, "metrics.nfe_mean"), None),
            "metrics.ms_per_forward": (ms.fillna(fallback_ms),
                                       spread.errorbars(sub, "ms_per_forward")),
            "metrics.latency_s_median": (spread.value(sub, "latency_s"),
                                         spread.errorbars(sub, "latency_s")),
        }
        panels = {k: v for k, v in panels.items() if v[0].notna().any()}
        if not panels:
            continue
        labels_x = dict(LABELS)
        if _col(sub, "batch_size").max() > 1:
            labels_x["metrics.latency_s_median"] = (
                f"Latency per batch (s, median; batch ≤ {_col(sub, 'batch_size').max():g})")
        order = sorted(range(len(sub)), key=lambda i: methods.sort_key(sub.iloc[i]))
        all_labels = methods.job_labels(sub)
        labels = [all_labels[i] for i in order]
        colors = [cache_color(methods.get(sub.iloc[i], "cache.name", "none")) for i in order]
        fig, axes = new_figure(ncols=len(panels), width=3.4, height=0.9 + 0.28 * len(sub))
        for j, (ax, (col, (values, err))) in enumerate(zip(axes, panels.items())):
            ypos = np.arange(len(order))
            ax.barh(ypos, values.to_numpy()[order], color=colors,
                    xerr=None if err is None else err[:, order], capsize=2,
                    error_kw={"elinewidth": 0.8})
            ax.set_yticks(ypos, labels if j == 0 else [""] * len(order))
            ax.invert_yaxis()
            ax.set_xlabel(labels_x[col])
            ax.grid(axis="y", visible=False)
        fig.suptitle(f"Latency breakdown — {methods.group_title(key)}")
        bars = any(err is not None for _, err in panels.values())
        _add(result, save(fig, out_dir, slug("latency_breakdown", *key)),
             f"Latency breakdown (paper Fig. 1c), {methods.group_title(key)}"
             + ("; bars: interquartile range over the timing repeats" if bars else ""))
    return _or_skip(result, "needs at least 2 finished configurations with NFE or latency "
                            "metrics in one model · task · gen length")


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


@_figure
def methods_compare(df: pd.DataFrame, out_dir) -> FigureResult:
    """The methods of a sweep side by side (e.g. +experiment=caches_compare / rules_compare), one
    horizontal bar per configuration in each panel: accuracy, forwards per sample (NFE), tokens
    per forward, tokens/s (with the timing interquartile range), the share of layer x token work
    skipped against a full forward every step (hardware-independent), and re-masks per sample
    when a rule re-masks. Drawn where a group holds >= 2 configurations of which at least one is
    a cache or rule beyond Fast-dLLM's own (the paper figures cover those)."""
    result = FigureResult("methods_compare")
    fast = {"none", "prefix", "dual", "fixed", "threshold", "factor"}
    df = df.assign(_tps=spread.value(df, "tokens_per_s"))
    for key, sub in methods.groups(_with(df, "metrics.accuracy")):
        names = set(sub["cache.name"].dropna()) | set(sub["decoding.name"].dropna())
        if methods.n_configs(sub) < 2 or names <= fast:
            continue
        sub = sub.iloc[sorted(range(len(sub)), key=lambda i: methods.sort_key(sub.iloc[i]))]
        labels = methods.job_labels(sub)
        panels = [("Accuracy (%)", _col(sub, "metrics.accuracy") * 100, None),
                  ("Forwards per sample (NFE)", _col(sub, "metrics.nfe_mean"), None),
                  ("Tokens per forward", _col(sub, "metrics.tokens_per_forward"), None),
                  ("Tokens/s (median)", sub["_tps"].astype(float), spread.errorbars(sub, "tokens_per_s")),
                  ("Layer x token work skipped (%)", _col(sub, "metrics.compute_skipped") * 100, None)]
        remasks = _col(sub, "metrics.remasked_mean")
        if (remasks.fillna(0) > 0).any():
            panels.append(("Re-masked tokens per sample", remasks, None))
        fig, axes = new_figure(ncols=len(panels), width=2.6, height=0.45 * len(sub) + 1.4)
        ypos = np.arange(len(sub))
        colors = [cache_color(methods.get(r, "cache.name", "none")) for _, r in sub.iterrows()]
        for i, (ax, (title, values, err)) in enumerate(zip(axes, panels)):
            bars = values.fillna(0).to_numpy()
            ax.barh(ypos, bars, xerr=err, color=colors, capsize=2)
            ends = bars + (0 if err is None else np.nan_to_num(err[1]))
            for y, v, end in zip(ypos, values, ends):  # the value just past the bar (and its error bar)
                ax.text(max(end, 0), y, "  n/a" if pd.isna(v) else f"  {v:.4g}", va="center", ha="left",
                        fontsize=7)
            ax.set_xlim(min(0, np.nanmin(bars)), max(np.nanmax(ends), 1e-9) * 1.3)
            ax.set_yticks(ypos, labels if i == 0 else [""] * len(sub))
            ax.invert_yaxis()
            ax.set_title(title, fontsize=9)
        fig.suptitle(f"Methods side by side, {methods.group_title(key)} (bar colour: cache)")
        _add(result, save(fig, out_dir, slug("methods_compare", *key)),
             f"Methods side by side, {methods.group_title(key)}: accuracy, forwards, tokens per "
             f"forward, tokens/s (bars: interquartile range of the timing repeats), the layer x token "
             f"work each skipped against a full forward every step, re-masks per sample")
    return _or_skip(result, "needs >= 2 configurations in one model · task · gen length, one of them "
                            "a cache or rule other than Fast-dLLM's (e.g. +experiment=caches_compare)")


ALL = (pareto, threshold_sweep, block_size_sweep, kv_similarity, latency_breakdown, methods_compare)
ALL += (agreement, replay_gallery)


def _with(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    if any(c not in df.columns for c in cols):
        return df.iloc[0:0]
    return df.dropna(subset=list(cols))


def _mean_by(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Metrics (and derived `_` columns) averaged over jobs that share `col` (seeds, repeated
    sweeps), sorted by `col`."""
    metrics = [c for c in df.columns if c.startswith(("metrics.", "_"))]
    numeric = df[metrics].apply(pd.to_numeric, errors="coerce")
    return numeric.groupby(df[col]).mean().reset_index().sort_values(col)


def _percent_axis(ax) -> None:
    """An accuracy axis stops a little above 100% (autoscaling around points at 100% would
    show ticks up to 105%); markers on the edge are drawn whole."""
    low, high = ax.get_ylim()
    if high > 100:
        ax.set_ylim(low, 100 + 0.04 * (100 - low))
        for artist in ax.lines + ax.collections:
            artist.set_clip_on(False)


def _line_style(i: int) -> dict:
    """Style of the i-th line of a panel: solid with filled markers, then dashed with open
    markers drawn on top, so that lines with equal values (e.g. 100% accuracy with either cache)
    all stay visible."""
    dashes = ("-", (0, (5, 3)), (0, (2, 2)), (0, (6, 2, 1, 2)))[i % 4]
    return {"ls": dashes, "mfc": "none"} if i else {"ls": dashes}


def _label_points(ax, x, y, texts) -> None:
    """Every point gets its text beside it; where the points are too crowded for that, a number
    beside it instead and a key, number -> text, to the right of the axes."""
    n_texts = len(ax.texts)
    if place_labels(ax, x, y, texts):
        return
    for extra in ax.texts[n_texts:]:
        extra.remove()
    keys = sorted(set(texts), key=texts.index)  # callers pass rows in table order
    number = {text: i + 1 for i, text in enumerate(keys)}
    width, height = ax.figure.get_size_inches()  # room for the key, ~0.06 in a character
    ax.figure.set_size_inches(width + 0.4 + 0.06 * max(map(len, keys)), height)
    ax.text(1.03, 1.0, "\n".join(f"{number[t]:>2}  {t}" for t in keys), transform=ax.transAxes,
            va="top", ha="left", fontsize=7, family="monospace")
    place_labels(ax, x, y, [str(number[t]) for t in texts], fontsize=7)


def _decoded_per_step(df: pd.DataFrame) -> pd.Series:
    """gen_length / NFE: positions decoded per forward, EOS padding included (k for fixed k),
    unlike metrics.tokens_per_forward, which stops at the first EOS."""
    return _col(df, "gen_length") / _col(df, "metrics.nfe_mean")


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


def _add(result: FigureResult, paths: list, caption: str) -> None:
    result.paths += paths
    result.images.append((paths[0], caption))


def _or_skip(result: FigureResult, reason: str) -> FigureResult:
    if not result.paths:
        result.skipped = reason
    return result
