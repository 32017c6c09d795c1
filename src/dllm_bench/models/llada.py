"""LLaDA (GSAI-ML/LLaDA-8B-Base/Instruct, LLaDA-1.5): config.json fields and parameter names.

The official checkpoints are OLMo-style: ``model.transformer.blocks.N.{q,k,v}_proj``,
``attn_out``, ``ff_proj`` (gate), ``up_proj``, ``ff_out`` (down), ``attn_norm``, ``ff_norm``,
``model.transformer.{wte,ln_f,ff_out}``.
"""
from __future__ import annotations

from .config_checks import check, require
from .layers import ModelConfig
from .profile import LLADA

PROFILE = LLADA

_UNSUPPORTED = {  # config flags whose non-default values this implementation does not cover
    "alibi": False, "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
    "input_emb_norm": False, "scale_logits": False, "attention_layer_norm": False, "rope": True,
    "clip_qkv": None,
}
REQUIRED = ("d_model", "n_layers", "n_heads", "mlp_hidden_size", ("embedding_size", "vocab_size"))


def parse_config(raw: dict) -> ModelConfig:
    for key, ok in _UNSUPPORTED.items():
        if key in raw and raw[key] != ok:
            raise ValueError(f"unsupported LLaDA config: {key}={raw[key]!r} (only {ok!r} is implemented)")
    require(raw, REQUIRED, "LLaDA")
    n_heads = raw["n_heads"]
    n_kv = raw.get("n_kv_heads") or (1 if raw.get("multi_query_attention") else n_heads)
    return check(ModelConfig(
        arch="llada",
        vocab_size=raw.get("embedding_size") or raw["vocab_size"],
        d_model=raw["d_model"],
        n_layers=raw["n_layers"],
        n_heads=n_heads,
        n_kv_heads=n_kv,
        mlp_hidden=raw["mlp_hidden_size"],
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        qkv_bias=bool(raw.get("include_bias") or raw.get("include_qkv_bias")),
        tie_embeddings=bool(raw.get("weight_tying", False)),
        max_length=int(raw.get("max_sequence_length", 4096)),
        mask_token_id=raw.get("mask_token_id", 126336),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        bos_token_id=raw.get("bos_token_id"),
        rope_full_precision=bool(raw.get("rope_full_precision", True)),
    ))


def to_config_json(cfg: ModelConfig) -> dict:
    """The official config.json fields for a checkpoint of this shape."""
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
        "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads, "mlp_hidden_size": cfg.mlp_hidden, "mlp_ratio": 4,
        "vocab_size": cfg.vocab_size, "embedding_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
        "include_bias": False, "include_qkv_bias": cfg.qkv_bias, "weight_tying": cfg.tie_embeddings,
        "max_sequence_length": cfg.max_length, "mask_token_id": cfg.mask_token_id,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
        "rope_full_precision": cfg.rope_full_precision, "scale_logits": False, "input_emb_norm": False,
        "attention_layer_norm": False, "torch_dtype": "float32", "use_cache": False,
    }


def param_names(cfg: ModelConfig) -> dict[str, str]:
    """checkpoint name -> our parameter name, with Q/K/V and gate/up as separate projections
    (``layers.unfused_tensors`` names; loading concatenates them into the fused ones)."""
    t = "model.transformer"
    names = {f"{t}.wte.weight": "embed.weight", f"{t}.ln_f.weight": "norm.weight"}
    if not cfg.tie_embeddings:
        names[f"{t}.ff_out.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        b, o = f"{t}.blocks.{i}", f"blocks.{i}"
        names.update({
            f"{b}.attn_norm.weight": f"{o}.attn_norm.weight",
            f"{b}.ff_norm.weight": f"{o}.mlp_norm.weight",
            f"{b}.attn_out.weight": f"{o}.attn.o_proj.weight",
            f"{b}.ff_proj.weight": f"{o}.mlp.gate_proj.weight",
            f"{b}.up_proj.weight": f"{o}.mlp.up_proj.weight",
            f"{b}.ff_out.weight": f"{o}.mlp.down_proj.weight",
        })
        for p in "qkv":
            names[f"{b}.{p}_proj.weight"] = f"{o}.attn.{p}_proj.weight"
            if cfg.qkv_bias:
                names[f"{b}.{p}_proj.bias"] = f"{o}.attn.{p}_proj.bias"
    return names
