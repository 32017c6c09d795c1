"""Decoding replays: how a cell's rule and cache decoded a few samples, step by step, as pictures.

``Replays`` (``measure.replays=N``) records, in the untimed extra pass, the first N samples of the
cell from the engine's per-step view (``StepInfo``): after each forward, the positions it fed the
model (the cache window, or an index set), the positions it unmasked (with their token and
confidence) and those it re-masked. Per sample it writes into the job folder

- ``replays/sample-<i>.json``: the record (``record`` below), enough to redraw everything;
- ``replays/sample-<i>.png``: the step x position picture (``replay_draw.picture``);
- ``replays/sample-<i>.gif``: the animation, one frame per forward (``replay_draw.animation``);
- ``replays/sample-<i>.html``: a self-contained page with a step slider (``replay_draw.page``),

and lists them in the results.json section ``replays``. Nothing here depends on the cache or rule:
any plugin that reports through ``StepInfo`` (LLaDA or Dream) is replayed the same way.

A record: ``{"index", "id", "title", "prompt_len", "gen_length", "blocks": [[lo, hi], ...],
"nfe", "labels": {token id: text shown}, "special": [ids shown as special tokens], "final": [ids],
"steps": [{"block", "step", "fed": [[lo, hi], ...], "prompt_fed", "unmasked": [[pos, id, conf], ...],
"remasked": [pos, ...]}, ...]}``, positions counted from the first generated token.
"""
from __future__ import annotations

import json
import logging
import time

from .base import METRICS, JobView, Metric

log = logging.getLogger(__name__)
FOLDER = "replays"
KINDS = ("json", "png", "gif", "html")


def _ranges(positions: list[int]) -> list[list[int]]:
    """Sorted positions -> [[lo, hi), ...] runs."""
    out: list[list[int]] = []
    for p in positions:
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


def token_labels(tokenizer, ids, special_ids) -> dict[int, str]:
    """The text shown for each token id: its decoded text with line breaks and tabs made visible;
    special tokens by their short name (``<|eos|>`` -> ``eos``)."""
    out = {}
    for t in sorted(set(ids)):
        if t in special_ids:
            name = str(tokenizer.convert_ids_to_tokens(t))
            out[t] = name.strip("<>|").strip()[:6] or "?"
            continue
        text = tokenizer.decode([t]).replace("\r", "").replace("\n", "↵").replace("\t", "→")
        out[t] = text or str(tokenizer.convert_ids_to_tokens(t) or t)
    return out


@METRICS.register("replays")
class Replays(Metric):
    """Records the first ``samples`` prompts step by step and draws them (see module doc)."""

    def __init__(self, model, samples: int = 1):
        super().__init__(model, samples)
        self.records: dict[int, dict] = {}
        self.seconds = 0.0
        self._files: dict[str, bytes] = {}
        self._section: dict | None = None

    @classmethod
    def from_measure(cls, model, measure: dict) -> "Replays":
        return cls(model, int(measure.get("replays") or 0))

    def begin_sample(self, index: int, prompt) -> None:
        self._t0 = time.perf_counter()
        self._cur = {"prompt_len": len(prompt), "blocks": [], "steps": []}

    def on_step(self, info) -> None:
        if info.x.shape[0] != 1:
            raise ValueError("Replays records one prompt at a time (batch size 1)")
        P, rec = self._cur["prompt_len"], self._cur
        L = info.x.shape[1]
        block = [info.block_start - P, info.block_end - P]
        if block not in rec["blocks"]:
            rec["blocks"].append(block)
        if info.window is not None:
            lo, hi = info.window
            fed = list(range(lo, hi))
        else:
            plan = info.plan
            idx = plan.index[0] if plan.valid is None else plan.index[0][plan.valid[0]]
            fed = sorted(set(int(p) for p in idx.tolist() if 0 <= p < L))
        ts = info.targets[0]
        x = info.x[0]
        unmasked = [[ts + j - P, int(x[ts + j]), round(float(info.confidence[0, j]), 4)]
                    for j in info.accepted[0].nonzero().flatten().tolist()]
        remasked = [] if info.remasked is None else [ts + j - P for j in info.remasked[0].nonzero().flatten().tolist()]
        rec["steps"].append({"block": info.block, "step": info.step, "fed": _ranges([p - P for p in fed if p >= P]),
                             "prompt_fed": sum(1 for p in fed if p < P), "unmasked": unmasked, "remasked": remasked})

    def end_sample(self, index: int, result) -> None:
        self._cur.update(index=index, gen_length=int(result.tokens.shape[1]), nfe=int(result.nfe),
                         final=result.tokens[0].tolist())
        self.records[index] = self._cur
        self.seconds += time.perf_counter() - self._t0

    def finish(self, job: JobView) -> None:
        from . import replay_draw

        t0 = time.perf_counter()
        cfg = self.model.config
        special = set(getattr(job.tokenizer, "all_special_ids", []) or []) | {
            t for t in (cfg.eos_token_id, cfg.mask_token_id, cfg.pad_token_id) if t is not None}
        entries = []
        for i, rec in sorted(self.records.items()):
            ids = rec["final"] + [t for s in rec["steps"] for _, t, _ in s["unmasked"]]
            labels = token_labels(job.tokenizer, ids, special)
            rec.update(id=job.rows[i].get("id", str(i)), title=job.title, labels={str(k): v for k, v in labels.items()},
                       special=sorted(t for t in labels if t in special))
            stem = f"{FOLDER}/sample-{i}"
            self._files[f"{stem}.json"] = json.dumps(rec).encode()
            self._files[f"{stem}.png"] = replay_draw.picture(rec)
            self._files[f"{stem}.gif"] = replay_draw.animation(rec)
            self._files[f"{stem}.html"] = replay_draw.page(rec).encode()
            entries.append({"index": i, "id": rec["id"], "nfe": rec["nfe"],
                            "remasked": sum(len(s["remasked"]) for s in rec["steps"]),
                            "files": {k: f"{stem}.{k}" for k in KINDS}})
        draw_s = time.perf_counter() - t0
        self._section = {"n_samples": len(entries), "decode_s": round(self.seconds, 3), "draw_s": round(draw_s, 3),
                         "samples": entries}
        log.info(f"[replays] {len(entries)} samples replayed into {FOLDER}/: {self.seconds:.1f} s decoding, "
                 f"{draw_s:.1f} s drawing (untimed)")

    def result(self) -> dict | None:
        return self._section

    def files(self) -> dict[str, bytes]:
        return dict(self._files)
