"""The bidirectional transformer that LLaDA and Dream share.

Both architectures are Llama-style pre-norm transformers with RoPE, SwiGLU MLPs and RMSNorm; they
differ in parameter names (handled by ``llada.py`` / ``dream.py``), QKV bias, GQA and what the
decoding loop does with the logits (``DecodingProfile``). Attention is never causal.

Q, K and V are one ``qkv_proj`` and gate and up one ``gate_up_proj`` (``FusedLinear``): one matmul
each instead of three and two, which on a GPU means fewer, larger kernels (no split-K reductions of
narrow ones). Checkpoints keep the official separate tensors: ``unfused_tensors`` / ``fuse_tensors``
split and join them at save and load, and ``use_fused_projections(model, False)`` computes each
part as its own matmul again (the pre-fusion kernels, for A/B timing and bit-level comparisons).

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


class Part:
    """One projection of a ``FusedLinear``, usable as the separate Linear it replaces: ``part(x)``
    computes it alone; ``weight`` / ``bias`` are views into the fused parameters."""

    def __init__(self, owner: "FusedLinear", index: int):
        self.owner, self.index = owner, index

    @property
    def weight(self) -> torch.Tensor:
        return self.owner.weight.split(self.owner.widths)[self.index]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self.owner.bias
        return None if b is None else b.split(self.owner.widths)[self.index]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FusedLinear(nn.Linear):
    """Several projections of the same input as one Linear: the rows of ``weight`` (and ``bias``)
    are the parts' rows in order. ``parts`` maps each part's name, as a separate Linear would be
    named (``q_proj`` ...), to its width."""

    def __init__(self, d_in: int, parts: dict[str, int], bias: bool):
        super().__init__(d_in, sum(parts.values()), bias=bias)
        self.parts = dict(parts)
        self.widths = list(parts.values())
        self.fused = True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (..., d_in) -> one (..., width) tensor per part: views of one matmul's output, or
        (``fused`` off) one matmul per part on the contiguous row blocks of the weight."""
        if self.fused:
            return super().forward(x).split(self.widths, dim=-1)
        return tuple(self.part(name)(x) for name in self.parts)

    def part(self, name: str) -> Part:
        return Part(self, list(self.parts).index(name))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, h
        self.rope_fp32 = cfg.rope_full_precision
        self.qkv_proj = FusedLinear(d, {"q_proj": cfg.n_heads * h, "k_proj": cfg.n_kv_heads * h,
                                        "v_proj": cfg.n_kv_heads * h}, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * h, d, bias=False)
        self.ops = EAGER

    # the separate projections, each computed alone (for code that needs one of them only)
    q_proj = property(lambda self: self.qkv_proj.part("q_proj"))
    k_proj = property(lambda self: self.qkv_proj.part("k_proj"))
    v_proj = property(lambda self: self.qkv_proj.part("v_proj"))

    def project(self, x):
        """x (B, T, d) -> q (B, H, T, D), k and v (B, Hkv, T, D), before RoPE (strided views)."""
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
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
        self.gate_up_proj = FusedLinear(cfg.d_model, {"gate_proj": cfg.mlp_hidden, "up_proj": cfg.mlp_hidden},
                                        bias=False)
        self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)
        self.ops = EAGER

    gate_proj = property(lambda self: self.gate_up_proj.part("gate_proj"))
    up_proj = property(lambda self: self.gate_up_proj.part("up_proj"))

    def forward(self, x):
        return self.down_proj(self.ops.swiglu(*self.gate_up_proj(x)))


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


def unfused_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` (the model's state dict or named parameters) with each fused projection's tensor
    split into its parts' views, named as separate Linears would be (``blocks.0.attn.q_proj.weight``)."""
    fused = {name: m for name, m in model.named_modules() if isinstance(m, FusedLinear)}
    out = {}
    for name, t in tensors.items():
        owner, _, leaf = name.rpartition(".")
        if owner not in fused:
            out[name] = t
            continue
        parent = owner.rpartition(".")[0]
        for part, piece in zip(fused[owner].parts, t.split(fused[owner].widths)):
            out[f"{parent}.{part}.{leaf}" if parent else f"{part}.{leaf}"] = piece
    return out


def fuse_tensors(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of ``unfused_tensors``: each fused projection's parts (all present) concatenated
    into its tensor; other entries unchanged. A new dict; the input is not modified."""
    out = dict(tensors)
    for owner, m in model.named_modules():
        if not isinstance(m, FusedLinear):
            continue
        parent = owner.rpartition(".")[0]
        for leaf in ("weight", "bias"):
            names = [f"{parent}.{part}.{leaf}" if parent else f"{part}.{leaf}" for part in m.parts]
            if all(n in out for n in names):
                out[f"{owner}.{leaf}"] = torch.cat([out.pop(n) for n in names])
    return out


def use_fused_projections(model: nn.Module, on: bool = True) -> nn.Module:
    """Compute each fused projection as one matmul (``on``, the default) or one per part."""
    for m in model.modules():
        if isinstance(m, FusedLinear):
            m.fused = on
    return model


def fused_projections(model: nn.Module) -> bool:
    return next((m.fused for m in model.modules() if isinstance(m, FusedLinear)), True)


def init_weights(model: Transformer, std: float = 0.02, seed: int | None = None) -> Transformer:
    """Random initialisation (for ``--random-weights`` benchmarks and training from scratch).

    Drawn per separate projection, in the order separate Linears had, so a seed gives the same
    weights as before the projections were fused."""
    device = model.embed.weight.device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    n_layers = model.config.n_layers
    with torch.no_grad():
        for name, p in unfused_tensors(model, dict(model.named_parameters())).items():
            if p.dim() == 1:
                p.copy_(torch.ones_like(p) if name.endswith("norm.weight") else torch.zeros_like(p))
            else:
                s = std / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype).mul_(s))
    return model
