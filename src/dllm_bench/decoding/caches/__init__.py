"""Cache policies, one file each; importing this package registers the built-in ones."""
from .base import Cache, WindowCache
from . import dkv_decode, dkv_greedy, dllm_cache, dual, none, prefix  # noqa: F401  (registration)

__all__ = ["Cache", "WindowCache"]
