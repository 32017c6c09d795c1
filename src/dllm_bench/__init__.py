"""dllm-bench: benchmark and ablate training-free acceleration of diffusion LLMs.

The public face: ``load_model`` (a LLaDA or Dream checkpoint folder or hub id, our own PyTorch
code, no remote code) and ``generate`` (block-wise decoding with a none / prefix / dual KV cache
and fixed / threshold / factor parallel decoding, token-exact with the Fast-dLLM reference).
"""
from .decoding import GenerationResult, generate
from .models import build_model, load_model, load_tokenizer, save_model

__version__ = "0.1.0"
__all__ = ["GenerationResult", "build_model", "generate", "load_model", "load_tokenizer", "save_model",
           "__version__"]
