"""Fast-dLLM's DualCache: keep K/V of every position; feed only the block (the suffix stays stale)."""
from ..registry import CACHES
from .base import WindowCache


@CACHES.register("dual")
class DualCache(WindowCache):
    uses_kv = blockwise = early_exit = True

    def window(self, state):
        return state.start, state.end
