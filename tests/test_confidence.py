"""``predict`` without the logits copy keeps the references' values bit for bit; the compiled
float64 probability (fused ops) is checked in ``test_fused_ops.py``."""
import pytest
import torch
import torch.nn.functional as F

from dllm_bench.decoding.confidence import argmax_except, predict


def _reference(logits, mask_id, fp64):
    """What the references do: mask column to -inf on a copy, argmax, softmax probability."""
    pick = logits.clone()
    pick[..., mask_id] = -torch.inf
    x0 = pick.argmax(-1)
    probs = F.softmax(logits.to(torch.float64) if fp64 else logits, dim=-1)
    return x0, probs.gather(-1, x0[..., None]).squeeze(-1)


def _logits(V, mask_id, dtype):
    g = torch.Generator().manual_seed(V + mask_id)
    logits = torch.randn(3, 7, V, generator=g) * 4
    logits[0, 0, mask_id] = 100.0            # the mask token is the largest logit
    logits[0, 1, 5] = logits[0, 1, 9] = 50.0  # a tie: the first index wins
    logits[1] = logits[1].round()            # many ties
    logits[2, 3] = 0.0                       # all equal
    return logits.to(dtype)


@pytest.mark.parametrize("V,mask_id", [(384, 383), (384, 0), (384, 100), (126464, 126336)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fp64", [True, False])
def test_probability_and_argmax_equal_the_references_bitwise(V, mask_id, dtype, fp64):
    logits = _logits(V, mask_id, dtype)
    want = _reference(logits, mask_id, fp64)
    got = predict(logits, mask_id=mask_id, score="prob", fp64=fp64, temperature=0.0,
                  remasking="low_confidence", generator=None)
    assert torch.equal(got[0], want[0]) and not (got[0] == mask_id).any()
    assert got[1].dtype == want[1].dtype and torch.equal(got[1], want[1])
    assert got[0][0, 1] == 5 and got[0][2, 3] == (1 if mask_id == 0 else 0)


def test_argmax_except_on_a_mask_at_either_end():
    logits = torch.tensor([[3.0, 1.0, 3.0, 2.0], [1.0, 2.0, 2.0, 9.0]])
    assert argmax_except(logits, 0).tolist() == [2, 3]
    assert argmax_except(logits, 3).tolist() == [0, 1]
    assert argmax_except(logits, 1).tolist() == [0, 3]
