"""KV storage: one preallocated (layers, B, H_kv, L, D) buffer per K and V, written in place.

The model never knows which cache policy drives it: each attention layer hands its fresh K/V to
``update(layer, k, v, where)`` and attends over what comes back. ``where`` says where the fed
tokens sit in the sequence (a ``Where``): one contiguous window starting at ``start`` (the fast
path, used by the prefix and dual caches and by CUDA graphs) or any per-row index set (delayed
and partial caches such as dKV-Cache), optionally followed by ``n_extra`` query tokens that are
not sequence positions (WINO's shadow block): those are attended but never stored.

Fresh K/V of the fed positions replace the stored ones; attention then covers all ``L`` stored
positions (fresh where written, as last written elsewhere) plus the extra tokens. That single
operation serves every cache mode:

- prefix: the refresh writes all positions; each further step feeds ``x[block_start:]``;
- dual: each further step feeds only the block, reading the cached prefix and (stale) suffix;
- delayed caches: each step feeds an index set and reads everything else as cached.

Static shapes (the buffer never grows) are what make a window step capturable as a CUDA graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class Where:
    """Positions of the fed tokens: ``start`` (contiguous) or ``index`` (B, T) long with ``valid``
    (B, T) bool marking the real entries (rows of a batch may feed different counts; padding
    entries are computed but never written). ``n_extra`` trailing tokens are extra queries."""

    start: int = 0
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    n_extra: int = 0


class KVCache:
    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, batch, n_kv_heads, length, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = length

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, H_kv, T, D) at positions ``start..start+T``; return the full (B, H_kv, L, D)."""
        end = start + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer], self.v[layer]

    def scatter(self, layer: int, index: torch.Tensor, valid: torch.Tensor | None, k: torch.Tensor,
                v: torch.Tensor):
        """Store k, v (B, H_kv, T, D) at per-row positions ``index`` (B, T) where ``valid``."""
        idx = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
        for store, new in ((self.k[layer], k), (self.v[layer], v)):
            if valid is not None:
                new = torch.where(valid[:, None, :, None], new, store.gather(2, idx))
            store.scatter_(2, idx, new)
        return self.k[layer], self.v[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, where: Where):
        """Store the fed positions' K/V and return what attention covers: (B, H_kv, L [+ extra], D)."""
        T = k.shape[2] - where.n_extra
        main_k, main_v = (k, v) if not where.n_extra else (k[:, :, :T], v[:, :, :T])
        if where.index is None:
            keys, values = self.write(layer, where.start, main_k, main_v)
        else:
            keys, values = self.scatter(layer, where.index, where.valid, main_k, main_v)
        if where.n_extra:
            keys = torch.cat([keys, k[:, :, T:]], dim=2)
            values = torch.cat([values, v[:, :, T:]], dim=2)
        return keys, values

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
