"""The fused QKV and gate-up projections: official checkpoints load into them and save back
unchanged, each part is still reachable alone, and one matmul gives the separate ones' tokens."""
import pytest
import torch
from safetensors.torch import load_file

from dllm_bench import generate, load_model
from dllm_bench.models import build_model, save_model
from dllm_bench.models.layers import FusedLinear, fused_projections, unfused_tensors, use_fused_projections
from fixture_paths import DREAM_TINY, LLADA_TINY

FOLDERS = pytest.mark.parametrize("folder", [LLADA_TINY, DREAM_TINY], ids=["llada", "dream"])


@FOLDERS
def test_one_projection_each_with_the_checkpoint_rows_in_order(folder):
    model = load_model(folder)
    c = model.config
    names = set(model.state_dict())
    assert not any(f".{p}_proj." in n for n in names for p in ("q", "k", "v", "gate", "up"))
    ckpt = load_file(str(folder / "model.safetensors"))
    attn, mlp = model.blocks[1].attn, model.blocks[1].mlp
    assert attn.qkv_proj.weight.shape == ((c.n_heads + 2 * c.n_kv_heads) * c.head_dim, c.d_model)
    assert mlp.gate_up_proj.weight.shape == (2 * c.mlp_hidden, c.d_model)
    if c.arch == "llada":
        pre, parts = "model.transformer.blocks.1.", ["q_proj", "k_proj", "v_proj"]
        gate_up = [ckpt[pre + "ff_proj.weight"], ckpt[pre + "up_proj.weight"]]
        assert attn.qkv_proj.bias is None
    else:
        pre, parts = "model.layers.1.self_attn.", ["q_proj", "k_proj", "v_proj"]
        gate_up = [ckpt[f"model.layers.1.mlp.{p}_proj.weight"] for p in ("gate", "up")]
        assert torch.equal(attn.qkv_proj.bias, torch.cat([ckpt[pre + p + ".bias"] for p in parts]))
    assert torch.equal(attn.qkv_proj.weight, torch.cat([ckpt[pre + p + ".weight"] for p in parts]))
    assert torch.equal(mlp.gate_up_proj.weight, torch.cat(gate_up))


@FOLDERS
def test_save_splits_back_to_the_official_tensors(tmp_path, folder):
    save_model(load_model(folder), tmp_path)
    before, after = load_file(str(folder / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert set(after) == set(before)
    for name, t in before.items():
        assert torch.equal(after[name], t), name


@FOLDERS
def test_parts_alone_equal_the_fused_projection(folder):
    model = load_model(folder)
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    x = torch.randn(2, 7, model.config.d_model, generator=torch.Generator().manual_seed(0))
    q, k, v = attn.project(x)
    B, T, _ = x.shape
    for name, want in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
        part = getattr(attn, name)
        assert part.weight.data_ptr() >= attn.qkv_proj.weight.data_ptr()  # a view, not a copy
        torch.testing.assert_close(part(x), want.transpose(1, 2).reshape(B, T, -1), rtol=0, atol=1e-6)
    gate, up = mlp.gate_up_proj(x)
    torch.testing.assert_close(mlp.gate_proj(x), gate, rtol=0, atol=1e-6)
    torch.testing.assert_close(mlp.up_proj(x), up, rtol=0, atol=1e-6)


@FOLDERS
def test_one_matmul_gives_the_separate_matmuls_tokens(folder):
    model = load_model(folder)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 380, (n,), generator=g) for n in (9, 5)]
    ids = torch.randint(0, 380, (2, 24), generator=g)
    kw = dict(gen_length=16, block_length=8, steps=8, decoding="fixed")
    runs = {}
    for fused in (True, False):
        use_fused_projections(model, fused)
        assert fused_projections(model) == fused
        runs[fused] = (model(ids), {c: generate(model, prompts, cache=c, **kw).tokens for c in ("none", "prefix", "dual")})
    use_fused_projections(model, True)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-5, atol=1e-5)
    for cache, tokens in runs[True][1].items():
        assert torch.equal(tokens, runs[False][1][cache]), cache


def test_random_init_draws_each_projection_in_the_separate_layers_order():
    """``init_weights`` draws per unfused parameter: the order below is the one separate Linears
    registered, so a seed keeps giving the weights it gave before the fusion."""
    model = build_model({"model_type": "Dream", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
                         "num_key_value_heads": 2, "intermediate_size": 48, "vocab_size": 64, "mask_token_id": 63},
                        seed=0)
    names = list(unfused_tensors(model, dict(model.named_parameters())))
    assert [n for n in names if n.startswith("blocks.0.") and "weight" in n] == \
        [f"blocks.0.{n}" for n in ("attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
                                   "attn.o_proj.weight", "mlp_norm.weight", "mlp.gate_proj.weight",
                                   "mlp.up_proj.weight", "mlp.down_proj.weight")]
    assert sum(isinstance(m, FusedLinear) for m in model.modules()) == 2
    qkv = model.blocks[0].attn.qkv_proj
    assert torch.count_nonzero(qkv.bias) == 0 and qkv.weight.std() > 0.01
