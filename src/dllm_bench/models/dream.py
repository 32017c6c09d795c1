"""Dream (Dream-org/Dream-v0-Base-7B / -Instruct-7B): Qwen2 layout with QKV bias and GQA.

Parameter names: ``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``model.layers.N.mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``,
``model.norm``, ``lm_head``. Dream's logits are shifted by one position (see ``DREAM`` profile).
"""
from __future__ import annotations

from .config_checks import check, require
from .layers import ModelConfig
from .profile import DREAM

PROFILE = DREAM
REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def parse_config(raw: dict) -> ModelConfig:
    if raw.get("rope_scaling"):
        raise ValueError(f"unsupported Dream config: rope_scaling={raw['rope_scaling']!r} (only null is implemented)")
    if raw.get("use_sliding_window"):
        raise ValueError("unsupported Dream config: use_sliding_window=true")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"unsupported Dream config: hidden_act={act!r} (only 'silu' is implemented)")
    require(raw, REQUIRED, "Dream")
    n_heads = raw["num_attention_heads"]
    return check(ModelConfig(
        arch="dream",
        vocab_size=raw["vocab_size"],
        d_model=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        mlp_hidden=raw["intermediate_size"],
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        qkv_bias=True,
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        max_length=int(raw.get("max_position_embeddings", 32768)),
        mask_token_id=raw.get("mask_token_id", 151666),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
        bos_token_id=raw.get("bos_token_id"),
        rope_full_precision=False,
    ))


def to_config_json(cfg: ModelConfig) -> dict:
    return {
        "architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu",
        "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
        "intermediate_size": cfg.mlp_hidden, "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta, "rope_scaling": None, "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_length,
        "mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.bos_token_id,
        "use_sliding_window": False, "sliding_window": None, "attention_dropout": 0.0,
        "torch_dtype": "float32", "use_cache": False,
    }


def param_names(cfg: ModelConfig) -> dict[str, str]:
    """checkpoint name -> our parameter name, with Q/K/V and gate/up as separate projections
    (``layers.unfused_tensors`` names; loading concatenates them into the fused ones)."""
    names = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        b, o = f"model.layers.{i}", f"blocks.{i}"
        names.update({
            f"{b}.input_layernorm.weight": f"{o}.attn_norm.weight",
            f"{b}.post_attention_layernorm.weight": f"{o}.mlp_norm.weight",
            f"{b}.self_attn.o_proj.weight": f"{o}.attn.o_proj.weight",
        })
        for p in "qkv":
            names[f"{b}.self_attn.{p}_proj.weight"] = f"{o}.attn.{p}_proj.weight"
            names[f"{b}.self_attn.{p}_proj.bias"] = f"{o}.attn.{p}_proj.bias"
        for p in ("gate", "up", "down"):
            names[f"{b}.mlp.{p}_proj.weight"] = f"{o}.mlp.{p}_proj.weight"
    return names
