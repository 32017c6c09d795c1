"""Cache strategies: what each further step of a block feeds the model.

Every block starts with one full forward (the refresh), which fills the cache when there is one
and whose logits serve the block's first decoding step. A strategy then says which window
``[start, end)`` of the sequence each further step feeds; the model writes that window's K/V into
the cache in place and attends over the whole length (see ``models/kv.py``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CacheStrategy:
    name: str
    uses_cache: bool

    def window(self, block_start: int, block_end: int, length: int) -> tuple[int, int]:
        raise NotImplementedError


class NoCache(CacheStrategy):
    """Every step is a full forward over the whole sequence."""

    def window(self, block_start, block_end, length):
        return 0, length


class PrefixCache(CacheStrategy):
    """Keep K/V before the block; feed the block and everything after it."""

    def window(self, block_start, block_end, length):
        return block_start, length


class DualCache(CacheStrategy):
    """Keep K/V of all positions; feed only the block (the suffix's K/V stay stale)."""

    def window(self, block_start, block_end, length):
        return block_start, block_end


CACHES = {
    "none": NoCache("none", uses_cache=False),
    "prefix": PrefixCache("prefix", uses_cache=True),
    "dual": DualCache("dual", uses_cache=True),
}
