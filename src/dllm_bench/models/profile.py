"""What a model family asks of the decoding loop (kept out of the loop as data, not branches)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodingProfile:
    """Per-family decoding conventions of the reference implementations.

    shift_logits: position i is predicted from the hidden state at i-1 (Dream); the shift is
        applied within whatever window was fed.
    refresh_forces_first: the block-start full forward only unmasks the block's first position,
        with its argmax, whatever its confidence (Dream's cached path); otherwise the refresh
        forward serves as the block's first ordinary decoding step (LLaDA).
    confidence_fp64: confidences are softmax probabilities in float64 (LLaDA) rather than in
        the logits' dtype (Dream).
    fixed_schedule: what ``decoding="fixed"`` means: "even" (LLaDA: low-confidence remasking with
        steps split evenly) or "linear_entropy" (Dream: negative-entropy confidence, linear
        timestep schedule).
    nonblocked_without_blocks: with ``cache="none"`` and no block length, decode with the
        family's original whole-sequence schedule (Dream) instead of one big block.
    """

    shift_logits: bool
    refresh_forces_first: bool
    confidence_fp64: bool
    fixed_schedule: str
    nonblocked_without_blocks: bool = False


LLADA = DecodingProfile(shift_logits=False, refresh_forces_first=False, confidence_fp64=True,
                        fixed_schedule="even")
DREAM = DecodingProfile(shift_logits=True, refresh_forces_first=True, confidence_fp64=False,
                        fixed_schedule="linear_entropy", nonblocked_without_blocks=True)
