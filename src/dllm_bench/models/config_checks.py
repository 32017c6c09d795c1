"""Checks of a parsed checkpoint config that would otherwise fail late and vaguely.

The family parsers (``llada.py``, ``dream.py``) call ``require`` before reading their keys and
``check`` on the ``ModelConfig`` they build, so a missing key, a shape that cannot be built or a
special token id outside the vocabulary is a one-line ``ValueError`` naming the field, raised
before any weight is read.
"""
from __future__ import annotations

from .layers import ModelConfig

TOKEN_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def require(raw: dict, keys, family: str) -> None:
    """Raise naming every key of ``keys`` that ``raw`` lacks (a tuple entry: any one of them)."""
    missing = []
    for key in keys:
        options = key if isinstance(key, tuple) else (key,)
        if all(raw.get(k) is None for k in options):
            missing.append(" or ".join(repr(k) for k in options))
    if missing:
        raise ValueError(f"{family} config lacks required key(s) {', '.join(missing)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check(c: ModelConfig) -> ModelConfig:
    """Shapes are positive integers that fit together; special token ids lie in [0, vocab_size)."""
    bad = []
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "max_length"):
        v = getattr(c, name)
        if not _is_int(v) or v <= 0:
            bad.append(f"{name}={v!r} must be a positive integer")
    if not bad:
        if c.d_model % c.n_heads:
            bad.append(f"d_model={c.d_model} must be a multiple of n_heads={c.n_heads}")
        if c.n_heads % c.n_kv_heads:
            bad.append(f"n_heads={c.n_heads} must be a multiple of n_kv_heads={c.n_kv_heads}")
    for name in TOKEN_FIELDS:
        v = getattr(c, name)
        if v is None and name != "mask_token_id":
            continue
        if not _is_int(v):
            bad.append(f"{name}={v!r} must be an integer token id")
        elif _is_int(c.vocab_size) and not 0 <= v < c.vocab_size:
            bad.append(f"{name}={v} is outside the vocabulary [0, {c.vocab_size})")
    if bad:
        raise ValueError(f"invalid {c.arch} config: " + "; ".join(bad))
    return c
