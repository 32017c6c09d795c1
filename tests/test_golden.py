"""Token-exact parity with the Fast-dLLM reference on the shared golden files."""
import json

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.gpu_check import case_kwargs
from fixture_paths import DREAM_TINY, LLADA_TINY

CHECKPOINTS = {"llada_tiny": LLADA_TINY, "dream_tiny": DREAM_TINY}


def _golden(name):
    return json.loads((CHECKPOINTS[name] / "golden.json").read_text())


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def model_and_golden(request):
    return load_model(CHECKPOINTS[request.param], dtype=torch.float32), _golden(request.param)


def test_full_forward_matches_reference_logits(model_and_golden):
    model, golden = model_and_golden
    ids = torch.tensor(golden["forward"]["input_ids"])
    ref = torch.tensor(golden["forward"]["logits_fp64"], dtype=torch.float64)
    out = model(ids).double()
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def _cases():
    for name in CHECKPOINTS:
        for case in _golden(name)["cases"]:
            yield pytest.param(name, case, id=f"{name}:{case['id']}")


_MODELS = {}


@pytest.mark.parametrize("name,case", list(_cases()))
def test_golden_case(name, case):
    if name not in _MODELS:
        _MODELS[name] = load_model(CHECKPOINTS[name], dtype=torch.float32)
    result = generate(_MODELS[name], torch.tensor([case["prompt_ids"]]), **case_kwargs(case))
    assert result.tokens[0].tolist() == case["expected_tokens"]
    if "expected_nfe" in case:
        assert result.nfe == case["expected_nfe"]
    assert result.nfe_per_row == [result.nfe]
