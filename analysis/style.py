"""One look for every figure: colours per cache, markers per decoding rule, labels with units,
and a saver that writes PNG + PDF.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas directly (never pyplot), so
drawing needs no display, leaks no global figure state and leaves the caller's backend alone.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

CACHE_COLORS = {"none": "#7f7f7f", "prefix": "#1f77b4", "dual": "#d62728", "dllm_cache": "#2ca02c",
                "dkv_decode": "#9467bd", "dkv_greedy": "#8c564b"}
_EXTRA_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DECODING_MARKERS = {"fixed": "o", "threshold": "^", "factor": "s", "wino": "D", "klass": "v",
                    "eb_sampler": "P", "random_order": "X"}
_EXTRA_MARKERS = ("D", "v", "P", "X", "*")

LABELS = {  # column -> axis label (units in brackets)
    "metrics.accuracy": "Accuracy (%)",
    "metrics.tokens_per_s": "Throughput (tokens/s)",
    "metrics.tokens_per_forward": "Answer tokens per step (to EOS, tokens/forward)",
    "tokens_per_step": "Tokens decoded per step (gen length / NFE)",
    "metrics.nfe_mean": "Steps per sample (NFE, forwards)",
    "metrics.ms_per_forward": "Time per step (ms/forward)",
    "metrics.latency_s_median": "Latency per sample (s, median)",
    "decoding.threshold": "Confidence threshold",
    "block_length": "Block length (tokens)",
}

RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "savefig.bbox": "tight",
}
DPI = 150


@dataclass
class FigureResult:
    """What one figure function did: the files it wrote, or why it drew nothing.

    `images` pairs each PNG with a caption (the report shows them); `paths` is every file
    written (PNG, PDF, Markdown, LaTeX). `skipped` is None when something was written.
    """

    name: str
    paths: list[Path] = field(default_factory=list)
    images: list[tuple[Path, str]] = field(default_factory=list)
    skipped: str | None = None

    @classmethod
    def skip(cls, name: str, reason: str) -> "FigureResult":
        return cls(name=name, skipped=reason)


def cache_color(name) -> str:
    name = str(name)
    if name in CACHE_COLORS:
        return CACHE_COLORS[name]
    return _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)]  # stable across runs


def decoding_marker(name) -> str:
    name = str(name)
    if name in DECODING_MARKERS:
        return DECODING_MARKERS[name]
    return _EXTRA_MARKERS[sum(map(ord, name)) % len(_EXTRA_MARKERS)]


@contextmanager
def styled():
    with mpl.rc_context(RC):
        yield


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2):
    """(figure, flat list of axes) with the house style; sizes are per panel, in inches."""
    with styled():
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


# Where a point's label may go, tried in order: (dx, dy) in points and the text's alignment.
_LABEL_SPOTS = [(dx * r, dy * r, ha, va) for r in (1, 2, 3)
                for dx, dy, ha, va in ((5, 3, "left", "bottom"), (5, -3, "left", "top"),
                                       (-5, 3, "right", "bottom"), (-5, -3, "right", "top"),
                                       (0, 6, "center", "bottom"), (0, -6, "center", "top"),
                                       (6, 0, "left", "center"), (-6, 0, "right", "center"))]


def place_labels(ax, xs, ys, texts, fontsize: float = 6.5) -> bool:
    """Label every point (xs[i], ys[i]) with texts[i], each at the first nearby spot where it
    overlaps no earlier label and no marker, stays inside the axes and is nearer its own point
    than any other (else the least-bad spot). Returns True when every label found a clean spot."""
    fig = ax.figure
    fig.canvas.draw()  # settles the layout, so display coordinates are final
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer).padded(1)  # a label may touch the spines
    points = ax.transData.transform(np.column_stack([xs, ys]))
    pad = 4 * fig.dpi / 72  # a marker's half-width, in pixels
    taken = [Bbox.from_extents(px - pad, py - pad, px + pad, py + pad) for px, py in points]
    clean = True
    order = sorted(range(len(texts)), key=lambda i: (-points[i][1], points[i][0]))
    for i in order:
        (x, y), text = (xs[i], ys[i]), texts[i]
        best, best_cost = None, None
        for dx, dy, ha, va in _LABEL_SPOTS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                              ha=ha, va=va, fontsize=fontsize)
            box = ann.get_window_extent(renderer).padded(-1)  # glyph boxes have slack
            own = _distance(box, points[i]) + pad  # another point this near reads as its owner
            closer = sum(own - d for j, d in enumerate(_distance(box, p) for p in points)
                         if j != i and d < own)
            cost = (sum(_overlap(box, b) for b in taken) + 4 * (box.width * box.height
                                                                - _overlap(box, frame))
                    + 50 * closer)
            if best is None or cost < best_cost:
                if best is not None:
                    best[0].remove()
                best, best_cost = (ann, box), cost
            else:
                ann.remove()
            if cost == 0:
                break
        best[0].set_in_layout(False)
        taken.append(best[1])
        clean = clean and best_cost == 0
    return clean


def _distance(box: Bbox, point) -> float:
    dx = max(box.x0 - point[0], 0, point[0] - box.x1)
    dy = max(box.y0 - point[1], 0, point[1] - box.y1)
    return float(np.hypot(dx, dy))


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.pdf into out_dir; returns [png, pdf]."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    with styled():
        fig.savefig(paths[0], dpi=DPI)
        fig.savefig(paths[1])
    return paths


def slug(*parts) -> str:
    """A file-name-safe stem from parts; 64.0 -> "64"."""
    parts = [f"{p:g}" if isinstance(p, float) else str(p) for p in parts if p is not None]
    text = "_".join(p for p in parts if p)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "figure"
