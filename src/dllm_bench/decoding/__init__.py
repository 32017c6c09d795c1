"""The decoding engine: one block loop; cache policies and decoding rules as registered plugins.

    from dllm_bench.decoding import CACHES, RULES, generate
    generate(model, ids, gen_length=256, block_length=32, cache="dual", decoding="threshold", threshold=0.9)

``CACHES`` / ``RULES`` map names to plugin classes (``decoding/caches/<name>.py``,
``decoding/rules/<name>.py``); see docs/ADDING.md for writing one.
"""
from .registry import CACHES, RULES, Plugin, Registry, from_spec
from .caches import Cache, WindowCache
from .rules import Rule
from .state import Decision, DecodeState, Extra, Plan, Prediction
from .generate import GenerationResult, build_plugins, generate, graphs_unsupported, pair_unsupported
from .loop import StepInfo, block_loop

__all__ = ["CACHES", "RULES", "Cache", "Decision", "DecodeState", "Extra", "GenerationResult", "Plan", "Plugin",
           "Prediction", "Registry", "Rule", "StepInfo", "from_spec", "WindowCache", "block_loop", "build_plugins", "generate",
           "graphs_unsupported", "pair_unsupported"]
