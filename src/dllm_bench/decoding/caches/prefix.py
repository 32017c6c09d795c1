"""Fast-dLLM's prefix cache: keep K/V before the block; feed the block and everything after it."""
from ..registry import CACHES
from .base import WindowCache


@CACHES.register("prefix")
class PrefixCache(WindowCache):
    uses_kv = blockwise = early_exit = True

    def window(self, state):
        return state.start, state.length
