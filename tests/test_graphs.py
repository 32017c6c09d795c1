"""The static-buffer / CUDA-graph step path gives the same tokens as the eager path."""
import itertools

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.decoding.graphs import clear_static_buffers
from fixture_paths import DREAM_TINY, LLADA_TINY

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=["llada", "dream"])
def model(request):
    return load_model(LLADA_TINY if request.param == "llada" else DREAM_TINY)


@pytest.mark.parametrize("device,cache,decoding", list(itertools.product(
    DEVICES, ["none", "prefix", "dual"], ["fixed", "threshold"])))
def test_static_path_equals_eager(model, device, cache, decoding):
    model = model.to(device)
    kw = dict(gen_length=16, block_length=4, steps=8, cache=cache, decoding=decoding)
    if decoding == "threshold":
        kw["threshold"] = 0.7
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 380, (n,), generator=g) for n in (7, 12)]
    eager = generate(model, prompts, **kw)
    # twice: the second call replays what the first captured, on buffers left from the first
    for _ in range(2):
        static = generate(model, prompts, graphs=True, **kw)
        assert torch.equal(static.tokens.cpu(), eager.tokens.cpu())
        assert static.nfe == eager.nfe and static.nfe_per_row == eager.nfe_per_row
    clear_static_buffers(model)


def test_graphs_refuse_sampling(model):
    with pytest.raises(ValueError, match="graphs=True"):
        generate(model, torch.tensor([[1, 2, 3]]), gen_length=8, block_length=4, steps=8,
                 temperature=0.5, graphs=True)


def test_static_buffers_shared_across_decodings(model):
    """Graphs kept on the model from one decoding (e.g. Dream's entropy confidence) must not be
    replayed for another on the same shapes."""
    prompt = torch.tensor([[5, 9, 2, 7, 1]])
    kw = dict(gen_length=8, block_length=4, steps=8, cache="dual")
    runs = [dict(decoding="fixed"), dict(decoding="threshold", threshold=0.7), dict(decoding="fixed")]
    eager = [generate(model, prompt, **kw, **r).tokens for r in runs]
    static = [generate(model, prompt, graphs=True, **kw, **r).tokens for r in runs]
    clear_static_buffers(model)
    assert all(torch.equal(a, b) for a, b in zip(eager, static))
