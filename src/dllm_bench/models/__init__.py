"""Own PyTorch implementations of the LLaDA and Dream architectures (no remote code)."""
from .kv import KVCache
from .layers import ModelConfig, Transformer, use_fused_projections
from .loading import build_model, load_model, load_tokenizer, save_model
from .profile import DecodingProfile

__all__ = ["KVCache", "ModelConfig", "Transformer", "DecodingProfile", "build_model", "load_model",
           "load_tokenizer", "save_model", "use_fused_projections"]
