"""Static-shape decoding steps, captured once as CUDA graphs and replayed.

On a GPU the reference implementation is bound by kernel-launch and Python overhead: a dual-cache
step of LLaDA-8B reads 16 GB of weights (about 4 ms on an H200) but takes about 40 ms. Every step
of our loop has a static shape — the sequence ``x``, the KV cache, positions and padding mask are
preallocated per (batch, length) and updated in place, and the fed window of a step depends only
on the block — so each distinct step (the refresh, and the prefix or dual step of each block) can
be captured once and replayed with a single launch.

``StaticBuffers`` holds those tensors for one shape and is kept on the model, so graphs captured in
one ``generate`` call are replayed by the next. On a CPU there is nothing to capture: ``run`` keeps the
first step function of each key and calls it again, which is what a replay does — so this code
path (static buffers, in-place updates, the keys) is tested on CPU.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..models.layers import fused_projections
from ..models.ops import ops_name


class StaticBuffers:
    """Preallocated x / KV cache / positions / mask for one (batch, length) shape, plus its graphs."""

    def __init__(self, model, batch: int, length: int, uses_cache: bool, masked: bool,
                 capture: bool | None = None):
        device = model.device
        self.x = torch.empty((batch, length), dtype=torch.long, device=device)
        self.kv = model.new_cache(batch, length) if uses_cache else None
        self.position_ids = torch.empty((batch, length), dtype=torch.long, device=device) if masked else None
        self.attention_mask = torch.empty((batch, length), dtype=torch.bool, device=device) if masked else None
        self.graphs: dict = {}
        self.capture = device.type == "cuda" if capture is None else capture
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    def load(self, x: torch.Tensor, position_ids, attention_mask) -> None:
        self.x.copy_(x)
        if self.position_ids is not None:
            self.position_ids.copy_(position_ids)
            self.attention_mask.copy_(attention_mask)

    def run(self, key, fn: Callable[[], tuple]):
        """``fn()`` — on CUDA replayed from a graph captured on first use of ``key``.

        ``fn`` must read only these buffers (and the model's weights) and write only the KV cache and
        its own outputs; its outputs are static tensors, valid until the next ``run``.
        """
        if not self.capture:  # replay semantics without a GPU: the first ``fn`` of a key is what runs
            return self.graphs.setdefault(key, fn)()
        entry = self.graphs.get(key)
        if entry is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy cuBLAS/SDPA initialisation happens here
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = fn()
            entry = self.graphs[key] = (graph, out)
        graph, out = entry
        graph.replay()
        return out


def static_buffers(model, batch: int, length: int, uses_cache: bool, masked: bool) -> StaticBuffers:
    """The model's buffers for this shape and kernel choice (created on first use, then reused):
    graphs captured with the eager ops or separate projections are not replayed after a switch."""
    store = model.__dict__.setdefault("_static_buffers", {})
    key = (batch, length, uses_cache, masked, model.dtype, str(model.device), ops_name(model), fused_projections(model))
    if key not in store:
        store[key] = StaticBuffers(model, batch, length, uses_cache, masked)
    return store[key]


def clear_static_buffers(model) -> None:
    """Free every captured graph and static buffer held by the model."""
    model.__dict__.pop("_static_buffers", None)
