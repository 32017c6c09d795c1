"""Drawing a decoding replay record (``metrics.replays``): a step x position picture (PNG), an
animation (GIF) and a self-contained HTML page with a step slider.

The three share one reading of the record: ``frames(record)`` gives, before the first forward and
after each one, the token at every generated position (None while masked) and the forward that
decoded it; a token's colour is that forward, on one colour scale (``colors``). Positions fed to the
model by a forward (the cache window) are marked, block boundaries are drawn, and re-masked positions
are marked in red. Matplotlib (PNG, colour scale) and Pillow (GIF) are imported when drawing.
"""
from __future__ import annotations

import html
import io
import json
from pathlib import Path

MASKED, FED, REMASK, CURRENT = "#dcdcdc", "#1f77b4", "#d62728", "#ffe066"
CMAP = "viridis"


def frames(record: dict) -> tuple[list[list[int | None]], list[list[int]]]:
    """(tokens, decoded_at): one list per frame (frame 0 before any forward, frame k after forward
    k-1); tokens[k][p] is None while p is masked, decoded_at[k][p] the forward that decoded it (-1)."""
    G = record["gen_length"]
    tok: list[int | None] = [None] * G
    at = [-1] * G
    toks, ats = [tok[:]], [at[:]]
    for k, st in enumerate(record["steps"]):
        for p in st["remasked"]:
            tok[p], at[p] = None, -1
        for p, t, _ in st["unmasked"]:
            tok[p], at[p] = t, k
        toks.append(tok[:])
        ats.append(at[:])
    return toks, ats


def colors(n: int) -> list[str]:
    """Hex colour of forward 0..n-1 on the shared scale."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cmap = colormaps[CMAP]
    return [to_hex(cmap(0.92 * k / max(n - 1, 1))) for k in range(n)]


def _luminance(hex_color: str) -> float:
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b


def _fed(step: dict, G: int) -> list[bool]:
    out = [False] * G
    for lo, hi in step["fed"]:
        for p in range(max(lo, 0), min(hi, G)):
            out[p] = True
    return out


def _label(record: dict, t: int | None) -> str:
    return "" if t is None else record["labels"].get(str(t), str(t))


def _span(lo_hi: list[list[int]]) -> str:
    return ", ".join(f"{lo}" if hi - lo == 1 else f"{lo}–{hi - 1}" for lo, hi in lo_hi) or "none"


def step_caption(record: dict, k: int) -> str:
    """What frame k shows, in words (frame 0: before the first forward)."""
    n, P = record["nfe"], record["prompt_len"]
    if k == 0:
        return f"before the first forward: {record['gen_length']} masked positions"
    st = record["steps"][k - 1]
    parts = [f"forward {k}/{n}", f"block {st['block'] + 1}/{len(record['blocks'])} step {st['step'] + 1}",
             f"+{len(st['unmasked'])} unmasked"]
    if st["remasked"]:
        parts.append(f"{len(st['remasked'])} re-masked")
    parts.append(f"fed: {_span(st['fed'])}" + (f" + prompt {st['prompt_fed']}/{P}" if st["prompt_fed"] else
                                                 " (prompt from the cache)"))
    return " · ".join(parts)


# ---------------------------------------------------------------- step x position picture (PNG)
def picture(record: dict) -> bytes:
    """PNG: rows = forwards (top first), columns = generated positions. A coloured cell: the forward
    that decoded the position (colour = that forward; the final tokens on the top axis when there is
    room); grey: the positions that forward fed the model (the cache window); red x: re-masked.
    Vertical lines: block boundaries; dotted rows: a block's first forward (the cache refresh)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap, Normalize, to_rgb
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    G, n = record["gen_length"], max(record["nfe"], 1)
    palette = colors(n)
    img = np.ones((n, G, 3))
    for k, st in enumerate(record["steps"]):
        img[k][np.array(_fed(st, G))] = 0.86
        for p, _, _ in st["unmasked"]:
            img[k, p] = to_rgb(palette[k])
    width = min(max(2.5 + G * 0.11, 6.0), 14.0)
    height = min(max(1.8 + n * 0.1, 3.2), 9.0)
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.imshow(img, aspect="auto", interpolation="nearest", extent=(-0.5, G - 0.5, n - 0.5, -0.5))
    for lo, _ in record["blocks"][1:]:
        ax.axvline(lo - 0.5, color="black", lw=1.2)
    starts = [k for k, st in enumerate(record["steps"]) if st["step"] == 0]
    for k in starts[1:]:
        ax.axhline(k - 0.5, color="black", lw=0.6, ls=":")
    rem = [(p, k) for k, st in enumerate(record["steps"]) for p in st["remasked"]]
    if rem:
        ax.scatter(*zip(*rem), marker="x", color=REMASK, s=18, lw=1.2, zorder=3)
    ax.set_xlabel("generated position")
    ax.set_ylabel("forward (model call)")
    ax.set_xlim(-0.5, G - 0.5)
    ax.set_ylim(n - 0.5, -0.5)
    if n <= 40:
        ax.set_yticks(range(n), [str(k + 1) for k in range(n)], fontsize=6)
    else:
        ax.set_yticks([k for k in range(0, n, max(n // 16, 1))], [str(k + 1) for k in range(0, n, max(n // 16, 1))])
    labels = [_label(record, t) for t in record["final"]]
    if G <= 128 and max(map(len, labels), default=0) <= 6:
        top = ax.secondary_xaxis("top")
        top.set_xticks(range(G), labels, fontsize=6 if G <= 64 else 4, family="monospace")
        top.tick_params(length=0)
        special = {str(t) for t in record["special"]}
        for tick, t, text in zip(top.get_xticklabels(), record["final"], labels):
            tick.set_rotation(90 if len(text) > 1 else 0)
            if str(t) in special:
                tick.set_color("#888888")
    sm = ax.scatter([], [], c=[], cmap=ListedColormap(palette), norm=Normalize(1, n))
    fig.colorbar(sm, ax=ax, label="decoded at forward", fraction=0.04, pad=0.01)
    handles = [Patch(facecolor="#dbdbdb", edgecolor="none", label="fed to the model (cache window)"),
               Patch(facecolor=palette[n // 2], edgecolor="none", label="decoded by this forward"),
               Line2D([], [], color="black", lw=1.2, label="block boundary"),
               Line2D([], [], color="black", lw=0.6, ls=":", label="block's first forward")]
    if rem:
        handles.append(Line2D([], [], ls="", marker="x", color=REMASK, label="re-masked"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), max(2, int(width // 2.3))),
               frameon=False, fontsize=7)
    ax.set_title(f"{record['title']}\nsample {record['id']}: {G} positions, {record['nfe']} forwards"
                 + (f", {len(rem)} re-masked" if rem else ""), fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    return buf.getvalue()


# ---------------------------------------------------------------- animation (GIF)
_W, _ROW, _PAD, _GAP, _MARGIN = 960, 30, 4, 3, 14


def _font(size: int):
    from PIL import ImageFont
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def _layout(record: dict, toks, char_w: int) -> tuple[list[tuple[int, int, int]], int]:
    """Box (x, y, width) of every position, laid out once for all frames: each box as wide as the
    longest token it ever shows; a block that fits on a row is not split across two; a new row after
    a line break token and when the row is full."""
    G = record["gen_length"]
    chars = [1] * G
    for tok in toks:
        for p, t in enumerate(tok):
            chars[p] = max(chars[p], len(_label(record, t)))
    widths = [c * char_w + 2 * _PAD for c in chars]
    block_w = {lo: sum(w + _GAP for w in widths[lo:hi]) + 6 for lo, hi in record["blocks"]}
    row = _W - 2 * _MARGIN
    boxes, x, y = [], _MARGIN, 0
    for p in range(G):
        w, extra = widths[p], (6 if p in block_w and p > 0 else 0)
        if x > _MARGIN and (x + extra + w > _W - _MARGIN or (p in block_w and x + block_w[p] > _W - _MARGIN
                                                              and block_w[p] <= row)):
            x, y = _MARGIN, y + _ROW
        x += extra
        boxes.append((x, y, w))
        x += w + _GAP
        if "↵" in _label(record, record["final"][p]):
            x, y = _MARGIN, y + _ROW
    return boxes, y + _ROW


def animation(record: dict) -> bytes:
    """GIF, one frame before the first forward and one after each: the generation as it appears,
    masked positions grey, tokens coloured by the forward that decoded them (outlined in black on
    that forward), the current block on a yellow ground, the positions each forward fed the model
    underlined in blue, block boundaries as vertical bars, re-masked positions outlined in red.
    Frames are drawn incrementally (only the positions whose look changed) on a fixed palette."""
    from PIL import Image, ImageDraw

    toks, ats = frames(record)
    G, n = record["gen_length"], max(record["nfe"], 1)
    palette = colors(n)
    font, small, head = _font(15), _font(10), _font(13)
    char_w = int(round(font.getlength("M")))
    boxes, text_h = _layout(record, toks, char_w)
    top, legend_h = 58, 40
    H = top + text_h + legend_h
    block_of = [next((b for b, (lo, hi) in enumerate(record["blocks"]) if lo <= p < hi), 0) for p in range(G)]
    special = {str(t) for t in record["special"]}
    im = Image.new("RGB", (_W, H), "white")
    d = ImageDraw.Draw(im)
    d.text((_MARGIN, 8), f"{record['title']} · sample {record['id']}", fill="black", font=head)
    for lo, _ in record["blocks"][1:]:
        x, y, _w = boxes[lo]
        d.rectangle((x - 5, top + y - 3, x - 4, top + y + _ROW - 4), fill="black")
    _legend(d, H - legend_h + 8, palette, small)
    fixed = _gif_palette(palette)
    drawn: list[tuple | None] = [None] * G
    images = []
    for k in range(len(toks)):
        st = record["steps"][k - 1] if k else None
        d.rectangle((0, 28, _W, 50), fill="white")
        d.text((_MARGIN, 30), step_caption(record, k), fill="#333333", font=head)
        fed = _fed(st, G) if st else [False] * G
        new = {p for p, _, _ in st["unmasked"]} if st else set()
        rem = set(st["remasked"]) if st else set()
        for p, (x, y, w) in enumerate(boxes):
            t = toks[k][p]
            look = (t, ats[k][p], st is not None and block_of[p] == st["block"], p in new, p in rem, fed[p])
            if look == drawn[p]:
                continue
            drawn[p] = look
            y0 = top + y
            d.rectangle((x - 1, y0 - 2, x + w, y0 + _ROW - 5), fill=CURRENT if look[2] else "white")
            fill = MASKED if t is None else palette[ats[k][p]]
            d.rectangle((x, y0, x + w - 1, y0 + _ROW - 9), fill=fill)
            if t is not None:
                label = _label(record, t)
                ink = "white" if _luminance(fill) < 0.5 else "black"
                f = small if str(t) in special else font
                d.text((x + (w - f.getlength(label)) / 2, y0 + (4 if f is font else 6)), label, fill=ink, font=f)
            if look[3] or look[4]:  # a white inner line keeps the outline visible on dark colours too
                d.rectangle((x, y0, x + w - 1, y0 + _ROW - 9), outline=REMASK if look[4] else "black", width=2)
                d.rectangle((x + 2, y0 + 2, x + w - 3, y0 + _ROW - 11), outline="white", width=1)
            if look[5]:
                d.rectangle((x, y0 + _ROW - 7, x + w - 1, y0 + _ROW - 5), fill=FED)
        images.append(im.quantize(palette=fixed, dither=Image.Dither.NONE))
    step_ms = int(min(max(6000 / n, 80), 400))
    durations = [700] + [step_ms] * (len(images) - 2) + [2500] if len(images) > 1 else [2500]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buf.getvalue()


def _gif_palette(scale: list[str]):
    """A fixed 256-colour palette: the drawing's own colours, up to 200 of the forward scale, and
    greys for anti-aliased text (quantizing to it is far faster than an adaptive palette per frame)."""
    from PIL import Image
    from matplotlib.colors import to_rgb

    ui = ["#ffffff", "#000000", MASKED, CURRENT, FED, REMASK, "#333333"]
    step = max(1, -(-len(scale) // 200))
    rgb = [tuple(round(255 * c) for c in to_rgb(h)) for h in ui + scale[::step]]
    rgb += [(v, v, v) for v in range(0, 256, 5)]
    flat = [c for t in rgb[:256] for c in t]
    pal = Image.new("P", (1, 1))
    pal.putpalette(flat + [0] * (768 - len(flat)))
    return pal


def _legend(d, y: int, palette: list[str], font) -> None:
    x = _MARGIN
    items = [("box", MASKED, "masked"), ("box", CURRENT, "current block"), ("bar", FED, "fed to the model"),
             ("outline", "black", "unmasked now"), ("outline", REMASK, "re-masked now"), ("sep", "black", "block boundary")]
    for kind, color, text in items:
        if kind == "box":
            d.rectangle((x, y, x + 14, y + 12), fill=color)
        elif kind == "bar":
            d.rectangle((x, y + 9, x + 14, y + 12), fill=color)
        elif kind == "outline":
            d.rectangle((x, y, x + 14, y + 12), fill=MASKED if color == REMASK else palette[0], outline=color, width=2)
            d.rectangle((x + 2, y + 2, x + 12, y + 10), outline="white", width=1)
        else:
            d.rectangle((x + 6, y - 1, x + 7, y + 13), fill=color)
        d.text((x + 19, y), text, fill="#333333", font=font)
        x += 27 + int(font.getlength(text))
    x += 6
    d.text((x, y), "decoded at forward 1", fill="#333333", font=font)
    x += int(font.getlength("decoded at forward 1")) + 4
    bar = 120
    for i in range(bar):
        d.line((x + i, y, x + i, y + 12), fill=palette[int(i * len(palette) / bar)])
    d.text((x + bar + 4, y), f"{len(palette)}", fill="#333333", font=font)


# ---------------------------------------------------------------- HTML page with a slider
def page(record: dict) -> str:
    """A self-contained HTML page (inline CSS and JavaScript, no network): the generation at any
    forward chosen with a slider (or played), in the colours and marks of the animation, a
    caption of what the forward did, and each token's position, decoding forward and the rule's score
    (its confidence) on hover."""
    data = {"record": record, "colors": colors(max(record["nfe"], 1)),
            "captions": [step_caption(record, k) for k in range(len(record["steps"]) + 1)]}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(f"{record['title']} · sample {record['id']}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", payload)


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:17px;margin:0 0 .3em}#cap{font-size:14px;color:#333;min-height:1.4em;margin:.4em 0 .8em}
#controls{display:flex;gap:.5em;align-items:center}#slider{flex:1}button{font-size:14px;min-width:2.4em}
#text{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:15px;line-height:30px;margin:1em 0}
.t{display:inline-block;min-height:20px;line-height:20px;padding:0 3px;margin:0 3px 0 0;white-space:pre;
   text-align:center;background:#dcdcdc;border-radius:2px;vertical-align:top;position:relative;box-sizing:border-box}
.cur{box-shadow:0 0 0 2px #ffe066}.new,.rem{box-shadow:inset 0 0 0 3px #fff}
.cur.new,.cur.rem{box-shadow:0 0 0 2px #ffe066,inset 0 0 0 3px #fff}
.new{outline:2px solid #000;outline-offset:-2px}.rem{outline:2px solid #d62728;outline-offset:-2px}.fed{border-bottom:3px solid #1f77b4}
.sp{font-size:10px}.blk{display:inline-block;max-width:100%;vertical-align:top;padding-left:4px;margin-right:2px}
.blk.bs{border-left:2px solid #000}
#legend{font-size:12px;color:#444;display:flex;flex-wrap:wrap;gap:1em;align-items:center}
#legend span.k{display:inline-block;width:14px;height:12px;vertical-align:middle;margin-right:4px}
#scale{display:inline-block;width:120px;height:12px;vertical-align:middle}
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls"><button id="prev" title="previous forward (left arrow)">&#9664;</button>
<button id="play" title="play / pause (space)">&#9654;</button>
<button id="next" title="next forward (right arrow)">&#9654;|</button>
<input id="slider" type="range" min="0" value="0"><span id="pos"></span></div>
<div id="cap"></div><div id="text"></div>
<div id="legend"><span><span class="k" style="background:#dcdcdc"></span>masked</span>
<span><span class="k" style="background:#ffe066"></span>current block</span>
<span><span class="k" style="border-bottom:3px solid #1f77b4;height:9px"></span>fed to the model</span>
<span><span class="k" style="outline:2px solid #000;outline-offset:-2px"></span>unmasked at this forward</span>
<span><span class="k" style="outline:2px solid #d62728;outline-offset:-2px"></span>re-masked at this forward</span>
<span><span class="k" style="border-left:2px solid #000;width:2px"></span>block boundary</span>
<span>decoded at forward 1 <canvas id="scale" width="120" height="12"></canvas> <span id="last"></span></span></div>
<script id="data" type="application/json">__DATA__</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent), R = D.record, G = R.gen_length;
const N = R.steps.length, special = new Set(R.special.map(String));
const label = t => t === null ? "" : (R.labels[String(t)] ?? String(t));
let tok = Array(G).fill(null), at = Array(G).fill(-1), conf = Array(G).fill(null);
const frames = [{tok: tok.slice(), at: at.slice(), conf: conf.slice()}];
R.steps.forEach((st, k) => {
  st.remasked.forEach(p => { tok[p] = null; at[p] = -1; conf[p] = null; });
  st.unmasked.forEach(([p, t, c]) => { tok[p] = t; at[p] = k; conf[p] = c; });
  frames.push({tok: tok.slice(), at: at.slice(), conf: conf.slice()});
});
const blockOf = p => R.blocks.findIndex(([lo, hi]) => lo <= p && p < hi);
const starts = new Set(R.blocks.slice(1).map(b => b[0]));
const text = document.getElementById("text"), spans = [];
let group = null;
for (let p = 0; p < G; p++) {
  if (group === null || starts.has(p)) {  // a block wraps as a unit when it fits on a line
    group = document.createElement("span");
    group.className = "blk" + (starts.has(p) ? " bs" : "");
    text.appendChild(group);
  }
  const s = document.createElement("span");
  s.className = "t";
  group.appendChild(s); spans.push(s);
  if (label(R.final[p]).includes("\\u21b5")) group.appendChild(document.createElement("br"));
}
const lum = h => { const v = [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16) / 255);
  return 0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2]; };
const width = Array(G).fill(1);
frames.forEach(f => f.tok.forEach((t, p) => { width[p] = Math.max(width[p], label(t).length); }));
spans.forEach((s, p) => { s.style.minWidth = (width[p] + 0.9) + "ch"; });
const slider = document.getElementById("slider");
slider.max = N;
function show(k) {
  k = Math.max(0, Math.min(N, k)); slider.value = k;
  const f = frames[k], st = k ? R.steps[k - 1] : null;
  const fed = new Set(), news = new Set(), rem = new Set(st ? st.remasked : []);
  if (st) { st.fed.forEach(([lo, hi]) => { for (let p = lo; p < hi; p++) fed.add(p); });
            st.unmasked.forEach(([p]) => news.add(p)); }
  spans.forEach((s, p) => {
    const t = f.tok[p], c = t === null ? "#dcdcdc" : D.colors[f.at[p]];
    s.textContent = t === null ? "\\u00a0" : label(t);
    s.style.background = c; s.style.color = lum(c) < 0.5 ? "#fff" : "#000";
    s.classList.toggle("sp", t !== null && special.has(String(t)));
    s.classList.toggle("cur", !!st && blockOf(p) === st.block);
    s.classList.toggle("fed", fed.has(p)); s.classList.toggle("new", news.has(p));
    s.classList.toggle("rem", rem.has(p));
    s.title = "position " + p + (t === null ? " · masked" : " · " + JSON.stringify(label(t)) +
      " · decoded at forward " + (f.at[p] + 1) + " (block " + (R.steps[f.at[p]].block + 1) + ", step " +
      (R.steps[f.at[p]].step + 1) + ")" + (f.conf[p] === null ? "" : " · score " + f.conf[p]));
  });
  document.getElementById("cap").textContent = D.captions[k];
  document.getElementById("pos").textContent = k + " / " + N;
}
let timer = null;
function play() {
  if (timer) { clearInterval(timer); timer = null; document.getElementById("play").innerHTML = "&#9654;"; return; }
  if (+slider.value >= N) show(0);
  document.getElementById("play").innerHTML = "&#10074;&#10074;";
  timer = setInterval(() => { if (+slider.value >= N) play(); else show(+slider.value + 1); },
                      Math.min(Math.max(6000 / Math.max(N, 1), 80), 400));
}
slider.oninput = () => show(+slider.value);
document.getElementById("prev").onclick = () => show(+slider.value - 1);
document.getElementById("next").onclick = () => show(+slider.value + 1);
document.getElementById("play").onclick = play;
document.addEventListener("keydown", e => {
  if (e.key === "ArrowLeft") show(+slider.value - 1); else if (e.key === "ArrowRight") show(+slider.value + 1);
  else if (e.key === " ") { e.preventDefault(); play(); } });
const ctx = document.getElementById("scale").getContext("2d");
for (let i = 0; i < 120; i++) { ctx.fillStyle = D.colors[Math.floor(i * D.colors.length / 120)]; ctx.fillRect(i, 0, 1, 12); }
document.getElementById("last").textContent = String(D.colors.length);
show(+(new URLSearchParams(location.search).get("step") ?? N));
</script></body></html>
"""
