"""The fused (torch.compile) ops: same math as the eager ones, and the same tokens on the fixtures.

Compiled on the CPU here (Inductor's C++ backend; the first call of each piece compiles), so only a
few golden cases run; ``gpu_check`` runs every case with the fused ops on a GPU.
"""
import json

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.replay import fast_dllm_case as case_kwargs
from dllm_bench.models.ops import EAGER, fused, ops_name, use_fused

from fixture_paths import DREAM_TINY, LLADA_TINY


@pytest.mark.parametrize("batch", [1, 3])
def test_fused_ops_compute_what_the_eager_ones_do(batch):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 9, 64, generator=g)
    w = torch.randn(64, generator=g)
    F_ = fused()
    sliced = torch.randn(batch, 12, 64, generator=g)[:, 2:7]  # a view, as the final norm of a logits_slice sees
    for inp in (x, sliced):
        torch.testing.assert_close(F_.rms_norm(inp, w, 1e-5), EAGER.rms_norm(inp, w, 1e-5), rtol=1e-5, atol=1e-5)
    q = torch.randn(batch, 9, 4, 16, generator=g).transpose(1, 2)  # (B, H, T, D) view, as Attention makes
    k = torch.randn(batch, 9, 4, 16, generator=g).transpose(1, 2)
    pos = torch.arange(9).expand(batch, 9).float()[..., None] * torch.rand(8, generator=g)
    emb = torch.cat((pos, pos), -1)[:, None]
    for fp32 in (True, False):
        for a, b in zip(F_.rotary_qk(q, k, emb.cos(), emb.sin(), fp32), EAGER.rotary_qk(q, k, emb.cos(), emb.sin(), fp32)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F_.swiglu(x, x.flip(-1)), EAGER.swiglu(x, x.flip(-1)))


@pytest.mark.parametrize("folder", [LLADA_TINY, DREAM_TINY], ids=["llada", "dream"])
def test_fused_model_gives_the_golden_tokens(folder):
    model = use_fused(load_model(folder))
    assert ops_name(model) == "fused"
    cases = json.loads((folder / "golden.json").read_text())["cases"]
    for case in cases[:: max(1, len(cases) // 4)]:  # a few cases across caches / rules
        res = generate(model, torch.tensor([case["prompt_ids"]]), graphs=True, **case_kwargs(case))
        assert res.tokens[0].tolist() == case["expected_tokens"]
    assert ops_name(use_fused(model, False)) == "eager"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_confidence_is_the_float64_probability_to_the_last_bits(dtype):
    from dllm_bench.decoding.confidence import predict

    g = torch.Generator().manual_seed(0)
    V, mask_id = 126464, 126336  # LLaDA's vocabulary
    logits = (torch.randn(2, 16, V, generator=g) * 4).to(dtype)
    logits[0, 0, mask_id] = 100.0
    kw = dict(mask_id=mask_id, score="prob", temperature=0.0, remasking="low_confidence", generator=None)
    x0, conf = predict(logits, fp64=True, **kw)
    fx0, fconf = predict(logits, fp64=True, fused=True, **kw)
    assert torch.equal(fx0, x0) and fconf.dtype == torch.float64
    assert ((fconf - conf).abs() / conf).max() < 1e-13
    # Dream's probability (in the logits' dtype) is the eager softmax's with or without fused ops
    assert torch.equal(predict(logits, fp64=False, fused=True, **kw)[1], predict(logits, fp64=False, **kw)[1])
