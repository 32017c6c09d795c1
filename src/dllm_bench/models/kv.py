"""The KV cache: one preallocated (layers, B, H_kv, L, D) buffer per K and V, written in place.

A forward that feeds positions ``start .. start+T`` writes their fresh (rotated) K/V there and
attends over all ``L`` positions. That single operation serves every cache mode:

- prefix: the refresh writes all positions; each further step feeds ``x[block_start:]`` and so
  rewrites everything from the block on, reading only the prefix from the refresh;
- dual: each further step feeds only the block and rewrites only the block, reading the cached
  prefix and the (stale) cached suffix.

Static shapes (the buffer never grows) are what make a step capturable as a CUDA graph.
"""
from __future__ import annotations

import torch


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

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2
