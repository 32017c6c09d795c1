"""The decoding engine: one block loop, pluggable cache strategies and decoding rules."""
from .caches import CACHES, CacheStrategy
from .generate import DECODINGS, GenerationResult, generate
from .loop import StepInfo, block_loop

__all__ = ["CACHES", "CacheStrategy", "DECODINGS", "GenerationResult", "StepInfo", "block_loop", "generate"]
