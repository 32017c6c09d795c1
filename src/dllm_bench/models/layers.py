"""The bidirectional transformer that LLaDA and Dream share.

Both architectures are Llama-style pre-norm transformers with RoPE, SwiGLU MLPs and RMSNorm; they
differ in parameter names (handled by ``llada.py`` / ``dream.py``), QKV bias, GQA and what the
decoding loop does with the logits (``DecodingProfile``). Attention is never causal.

Keys are cached *after* rotation (the reference rotates cached keys again at each call with the
same absolute positions; the result is the same function). Every forward may read and write a
``KVCache``: fresh K/V of the fed window are written at their absolute positions and attention
runs over the whole cached length, which is what both the prefix and the dual cache need.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .kv import KVCache, Where
from .ops import EAGER


@dataclass(frozen=True)
class ModelConfig:
    """Architecture-neutral shape of a checkpoint (filled from its config.json)."""

    arch: str  # "llada" | "dream"
    vocab_size: int  # rows of the embedding / columns of the logits
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool
    tie_embeddings: bool
    max_length: int
    mask_token_id: int
    eos_token_id: int | None
    pad_token_id: int | None
    bos_token_id: int | None = None
    rope_full_precision: bool = True  # rotate q/k in float32 (LLaDA) or in the model dtype (Dream)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def n_params(self) -> int:
        d, h, f, v = self.d_model, self.head_dim, self.mlp_hidden, self.vocab_size
        attn = d * d * 2 + 2 * d * self.n_kv_heads * h
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_embeddings else v * d
        return self.n_layers * per_layer + v * d + head + d


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back before the weight (as both references do)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.ops = EAGER

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)


class Rotary(nn.Module):
    """RoPE tables for arbitrary absolute positions, computed in float32."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: (B, T) long -> cos, sin: (B, 1, T, head_dim) float32
        freqs = positions.float()[..., None] * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, h
        self.rope_fp32 = cfg.rope_full_precision
        self.q_proj = nn.Linear(d, cfg.n_heads * h, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * h, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * h, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * h, d, bias=False)
        self.ops = EAGER

    def project(self, x):
        """x (B, T, d) -> q (B, H, T, D), k and v (B, Hkv, T, D), before RoPE."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def rotate(self, q, k, cos, sin):
        return self.ops.rotary_qk(q, k, cos, sin, self.rope_fp32)

    def attend(self, q, k, v, mask):
        """Bidirectional attention of q (B, H, T, D) over k, v (B, Hkv, S, D); output projected (B, T, d)."""
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        B, _, T, _ = q.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, inp: "LayerInput", layer: int):
        q, k, v = self.project(x)
        q, k = self.rotate(q, k, inp.cos, inp.sin)
        if inp.cache is not None:
            k, v = inp.cache.update(layer, k, v, inp.where)  # stored length (+ extra), (B, Hkv, S, D)
        return self.attend(q, k, v, inp.mask)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)
        self.ops = EAGER

    def forward(self, x):
        return self.down_proj(self.ops.swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, inp: "LayerInput", layer: int):
        x = x + self.attn(self.attn_norm(x), inp, layer)
        return x + self.mlp(self.mlp_norm(x))


@dataclass
class LayerInput:
    """What every layer of one forward shares besides its hidden states.

    cos, sin: (B, 1, T, D) RoPE tables of the fed tokens (``positions`` (B, T)); mask: bool
    attention mask broadcastable to (B, 1, T, S) over the attended keys, or None; cache / where:
    the KV storage and where the fed tokens sit (``kv.Where``); rotary: tables for any other
    positions (layer hooks that recompute a subset of rows need them).
    """

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    cache: KVCache | None
    where: Where
    positions: torch.Tensor
    rotary: "Rotary"


class Transformer(nn.Module):
    """Embedding -> blocks -> norm -> LM head. ``forward`` returns raw logits (B, T, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def new_cache(self, batch: int, length: int) -> KVCache:
        c = self.config
        return KVCache(c.n_layers, batch, c.n_kv_heads, length, c.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        where: Where | None = None,
        logits_slice: slice | torch.Tensor | None = None,
        hooks=None,
    ) -> torch.Tensor:
        """Logits for ``input_ids`` (B, T) that sit at positions ``start .. start+T`` of the sequence.

        position_ids: (B, T) RoPE positions (default ``start + arange(T)``, or ``where.index``).
        attention_mask: bool/0-1 over the attended keys: (B, S) (False marks padding no query may
            attend to) or (B, T, S) per query; S = T without cache, the cache length (+ extra
            tokens) with one.
        cache: when given, the fed tokens' K/V are stored (see ``kv.KVCache.update``) and attention
            covers the whole cache. where: where the fed tokens sit (default: contiguous at
            ``start``); any per-row index set, and trailing extra queries that are not stored.
        logits_slice: project only these fed rows to logits — a slice, or a (B, W) index — since
            the decoding loop needs few positions and the LM head is the largest matmul.
        hooks: an object whose ``layer(i, block, h, inp)`` replaces block ``i``'s forward (cache
            policies that reuse a layer's attention or MLP output for some positions).
        """
        B, T = input_ids.shape
        where = where if where is not None else Where(start=start)
        if position_ids is None:
            position_ids = (where.index if where.index is not None and not where.n_extra else
                            torch.arange(where.start, where.start + T, device=input_ids.device).expand(B, T))
        cos, sin = self.rotary(position_ids)
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()
            mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]  # (B, 1, 1|T, S)
        inp = LayerInput(cos, sin, mask, cache, where, position_ids, self.rotary)
        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            x = hooks.layer(i, block, x, inp) if hooks is not None else block(x, inp, i)
        if isinstance(logits_slice, torch.Tensor):
            x = x.gather(1, logits_slice[..., None].expand(-1, -1, x.shape[-1]))
        elif logits_slice is not None:
            x = x[:, logits_slice]
        x = self.norm(x)
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, weight)


def init_weights(model: Transformer, std: float = 0.02, seed: int | None = None) -> Transformer:
    """Random initialisation (for ``--random-weights`` benchmarks and training from scratch)."""
    device = model.embed.weight.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    n_layers = model.config.n_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.zeros_like(p))
            else:
                s = std / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype).mul_(s))
    return model
