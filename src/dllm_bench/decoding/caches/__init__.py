"""Cache policies, one file each; importing this package registers the built-in ones."""
from .base import Cache, WindowCache
from . import dllm_cache, dual, none, prefix  # noqa: F401  (registration)

__all__ = ["Cache", "WindowCache"]
