"""How stale a KV cache gets: cosine similarity of each token's K and V across decoding steps.

``KVSimilarity`` is a metric (``metrics.base``; switched on by ``measure.kv_similarity=true``) that
runs in the untimed extra pass, one prompt at a time (batch size 1). After
every forward of the engine it runs one full, cache-free forward over the current sequence into a
fresh ``model.new_cache(1, L)`` and reads each layer's K/V (layers, 1, H_kv, L, D): what an exact
recomputation would hold at that step. Per layer, for keys and values separately, it compares

- ``consecutive``: each step with the step before it (across block boundaries too);
- ``to_refresh``: each later step of a block with the block's refresh step (step 0), i.e. what a
  cache filled at the refresh would hold;

averaged over the tokens of each region, relative to the current block: ``prompt``, ``finished``
(earlier blocks), ``block`` (current block) and ``suffix`` (later blocks, still masks). With
``heatmap=True`` it also keeps, for a step × step matrix (paper Fig. 3), the prompt's last
``heatmap_prompt_tokens`` tokens and the last block's tokens, as float16 on the CPU.
Nothing runs unless the callback is passed, so the metric costs nothing when off.
"""
from __future__ import annotations

import torch

from .base import METRICS, Metric

REGIONS = ("prompt", "finished", "block", "suffix")
KINDS = ("key", "value")
PAIRS = ("consecutive", "to_refresh")


def _features(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm K and V per (layer, token): two (layers, L, H_kv*D) float32 tensors for x (1, L)."""
    kv = model.new_cache(1, x.shape[1])
    model(x, cache=kv, start=0, logits_slice=slice(0, 0))
    out = []
    for t in (kv.k, kv.v):
        f = t[:, 0].transpose(1, 2).flatten(2).float()  # (layers, Hkv, L, D) -> (layers, L, Hkv*D)
        out.append(torch.nn.functional.normalize(f, dim=-1))
    return out[0], out[1]


@METRICS.register("kv_similarity")
class KVSimilarity(Metric):
    """Accumulates region-mean cosine similarities over the prompts it is run on (see module doc).

    Also usable directly as an ``on_step`` callback: ``generate(..., on_step=sim.start(len(p)))``."""

    def __init__(self, model, samples: int = 2, heatmap_prompt_tokens: int = 64):
        super().__init__(model, samples)
        self.n_layers = model.config.n_layers
        self.heatmap_prompt_tokens = heatmap_prompt_tokens
        # sums[kind][pair][region]: (layers,) sum over step pairs of the region's mean cosine
        self.sums = {k: {p: {r: torch.zeros(self.n_layers) for r in REGIONS} for p in PAIRS} for k in KINDS}
        self.counts = {p: {r: 0 for r in REGIONS} for p in PAIRS}
        self.measured = 0
        self._heat: dict[str, list[torch.Tensor]] = {"prompt": [], "suffix": []}
        self._recording = False

    def start(self, prompt_len: int, heatmap: bool = False) -> "KVSimilarity":
        """Begin a new prompt of ``prompt_len`` tokens; returns self, the ``on_step`` callback."""
        self.prompt_len, self._prev, self._refresh = prompt_len, None, None
        self.measured += 1
        self._recording = heatmap
        if heatmap:
            self._heat = {"prompt": [], "suffix": []}
        return self

    def _add(self, pair: str, now, before, bounds: dict[str, tuple[int, int]]):
        for kind, a, b in zip(KINDS, now, before):
            cos = (a * b).sum(-1)  # (layers, L)
            for region, (lo, hi) in bounds.items():
                if hi > lo:
                    self.sums[kind][pair][region] += cos[:, lo:hi].mean(-1).cpu()
        for region, (lo, hi) in bounds.items():
            if hi > lo:
                self.counts[pair][region] += 1

    @classmethod
    def from_measure(cls, model, measure: dict) -> "KVSimilarity":
        return cls(model, measure.get("kv_similarity_samples", 2), measure.get("kv_heatmap_prompt_tokens", 64))

    def begin_sample(self, index: int, prompt) -> None:
        self.start(len(prompt), heatmap=index == 0)

    def on_step(self, info) -> None:
        self(info)

    def __call__(self, info) -> None:
        if info.x.shape[0] != 1:
            raise ValueError("KVSimilarity runs on one prompt at a time (batch size 1)")
        feats = _features(self.model, info.x)
        L, P = info.x.shape[1], self.prompt_len
        bounds = {"prompt": (0, P), "finished": (P, info.block_start),
                  "block": (info.block_start, info.block_end), "suffix": (info.block_end, L)}
        if self._prev is not None:
            self._add("consecutive", feats, self._prev, bounds)
        if info.step == 0:
            self._refresh = feats
        else:
            self._add("to_refresh", feats, self._refresh, bounds)
        self._prev = feats
        if self._recording:
            last_block = info.block_end - info.block_start
            lo = max(0, P - self.heatmap_prompt_tokens)
            for name, sl in (("prompt", slice(lo, P)), ("suffix", slice(L - last_block, L))):
                self._heat[name].append(torch.stack([f[:, sl] for f in feats]).half().cpu())

    @staticmethod
    def _matrix(steps: list[torch.Tensor]) -> list[list[float]]:
        """Step × step mean cosine over layers, tokens, K and V (features are unit-norm)."""
        f = torch.stack(steps).float()  # (S, 2, layers, n_tok, HD)
        per_vec = f.shape[1] * f.shape[2] * f.shape[3]
        f = f.flatten(1)
        m = (f @ f.T) / per_vec
        return [[round(float(v), 5) for v in row] for row in m]

    def result(self) -> dict:
        """The ``kv_similarity`` section of results.json (docs/results_schema.md)."""
        def mean(kind, pair, region, layer):
            n = self.counts[pair][region]
            return round(float(self.sums[kind][pair][region][layer]) / n, 6) if n else None

        layers = [{"layer": i, **{kind: {pair: {r: mean(kind, pair, r, i) for r in REGIONS} for pair in PAIRS}
                                  for kind in KINDS}} for i in range(self.n_layers)]
        heatmap = {name: self._matrix(steps) for name, steps in self._heat.items() if steps}
        return {"n_samples": self.measured, "layers": layers, "heatmap": heatmap}
