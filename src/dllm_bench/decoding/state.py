"""What the block loop and its plugins share: the decoding state, a step's plan, its predictions.

``DecodeState`` is the one object every plugin hook receives: the sequence ``x`` (B, L) being
decoded in place, the call's fixed shape (prompt length, blocks, step budget), the current block
and step. A cache answers each step with a ``Plan`` (which positions the model is fed); a rule may
ask for ``Extra`` query tokens; the rule's ``predict`` turns the target positions' logits into a
``Prediction`` and its ``select`` returns a ``Decision`` (what to unmask, what to re-mask).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class DecodeState:
    model: Any
    x: torch.Tensor                      # (B, L) prompt ++ generation, decoded in place
    prompt_len: int                      # P (left-padded length)
    gen_length: int
    block_length: int
    steps: int | None                    # fixed decoding's total budget (None: rule has none)
    blocked: bool                        # False: Dream's original whole-sequence schedule
    key_mask: torch.Tensor | None        # (B, L) False on left padding; None when nothing is padded
    position_ids: torch.Tensor | None    # (B, L) RoPE positions (from each row's first real token)
    generator: torch.Generator | None = None
    cfg_scale: float = 0.0
    block: int = 0
    start: int = 0                       # current block [start, end)
    end: int = 0
    step: int = 0                        # step within the block; 0 = the block's first forward
    calls: int = 0                       # model forward calls so far in this generate()
    fused_ops: bool = False              # the model runs the compiled ops (models.ops.use_fused)
    fresh: torch.Tensor | None = None    # (B, W) targets this step's forward predicted (None: all of them)
    targets: tuple[int, int] = (0, 0)    # [start, end) of the positions the rule predicts this block
    live: torch.Tensor | None = None     # (B,) bool: rows this step's forward counts for (a row decoded
                                         # alone would run it; rows whose block is done would not)
    rule: Any = None                     # the call's decoding rule (caches that follow its schedule)
    extras: dict = field(default_factory=dict)  # plugins' counters for GenerationResult.stats

    @property
    def config(self):
        return self.model.config

    @property
    def profile(self):
        return self.model.profile

    @property
    def mask_id(self) -> int:
        return self.model.config.mask_token_id

    @property
    def batch(self) -> int:
        return self.x.shape[0]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    @property
    def n_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int | None:
        return None if self.steps is None else self.steps // self.n_blocks

    @property
    def device(self) -> torch.device:
        return self.x.device

    def count(self, key: str, n: int = 1) -> None:
        """Add to a plugin counter reported in ``GenerationResult.stats``."""
        self.extras[key] = self.extras.get(key, 0) + n


@dataclass(frozen=True)
class Plan:
    """The tokens one forward feeds: the window ``[start, end)`` (end None = the sequence's end), or
    per-row positions ``index`` (B, T) sorted ascending with ``valid`` (B, T) marking real entries.
    ``refresh``: this forward recomputes everything a cache holds (counted as a cache refresh)."""

    start: int = 0
    end: int | None = None
    index: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    refresh: bool = False
    hooks: Any = None                    # per-layer hooks object for this forward (see models.layers)

    @property
    def key(self):
        """What identifies this forward's shape for a replayed CUDA graph (windows only)."""
        return (self.start, self.end) if self.index is None else None

    def window(self, length: int) -> tuple[int, int] | None:
        """[start, end) fed in a sequence of ``length`` positions (None for an index plan)."""
        return None if self.index is not None else (self.start, length if self.end is None else self.end)


@dataclass(frozen=True)
class Extra:
    """Query tokens appended to a forward that are not sequence positions (WINO's shadow block).

    ids, positions: (B, E); sees_main: (B, E, L) which sequence positions each extra token may
    attend to; sees_extra: (E, E) or (B, E, E) which extra tokens it may attend to. Sequence
    positions never attend to extra tokens, and extra tokens are never stored in a KV cache."""

    ids: torch.Tensor
    positions: torch.Tensor
    sees_main: torch.Tensor
    sees_extra: torch.Tensor


@dataclass
class Prediction:
    """A rule's reading of one forward, over its target positions (B, W).

    x0: the token each position would take (never the mask token); conf: the rule's score;
    extra_logits: (B, E, V) logits of the rule's extra query tokens, if it asked for any;
    data: anything else the rule computed (probabilities, entropies...)."""

    x0: torch.Tensor
    conf: torch.Tensor
    extra_logits: torch.Tensor | None = None
    data: dict = field(default_factory=dict)


@dataclass
class Decision:
    """unmask: (B, W) positions that take x0; remask: (B, W) decoded positions turned back to mask."""

    unmask: torch.Tensor
    remask: torch.Tensor | None = None
