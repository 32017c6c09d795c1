"""EB-Sampler beyond its reference (PC-Sampler's batch-1, LLaDA-only, cache-free loop): Dream (on its
shifted logits) against a direct transcription of the algorithm, batch invariance with left padding
for every cache and with classifier-free guidance, the static-buffer path, the mask token never
committed, bad arguments refused before any forward. Token parity with the reference on LLaDA is
tests/test_golden.py's (methods/eb_sampler.json)."""
import pytest
import torch
from torch.distributions import Categorical

from dllm_bench import generate, load_model
from dllm_bench.decoding.graphs import clear_static_buffers
from engine_helpers import gqa_model, put_mask_on_top, random_prompts, rows_equal_single, summed_stats
from fixture_paths import DREAM_TINY, LLADA_TINY


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


def eb_direct(model, prompt, gamma, gen_length):
    """The algorithm note's procedure on full forwards (Dream: position i read from output i-1)."""
    mask = model.config.mask_token_id
    x = torch.cat([prompt, torch.full((gen_length,), mask)])[None]
    nfe = 0
    while (x == mask).any() and nfe <= gen_length:
        logits = model(x)
        nfe += 1
        if model.profile.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        masked = (x == mask)[0]
        ent = Categorical(logits=logits[0, masked]).entropy()
        pos = masked.nonzero()[:, 0]
        order = torch.argsort(ent, stable=True)
        srt = ent[order]
        k = int(((srt.cumsum(0) - srt.cummax(0).values) <= gamma).sum().clamp(1, len(srt)))
        chosen = pos[order[:k]]
        x[0, chosen] = logits[0, chosen].argmax(-1)
    return x[0, len(prompt):], nfe


@pytest.mark.parametrize("gamma", [0.0, 0.01, 0.3, 3.0])
def test_dream_equals_direct_transcription(models, gamma):
    model = models["dream"]
    for p in random_prompts([6, 13], seed=7):
        want, nfe = eb_direct(model, p, gamma, 16)
        assert not (want == model.config.mask_token_id).any()  # the direct loop finished
        res = generate(model, p[None], gen_length=16, block_length=None, cache="none", decoding="eb_sampler",
                       gamma=gamma)
        assert res.tokens[0].tolist() == want.tolist() and res.nfe == nfe


def check_rows(model, prompts, **kw):
    """Rows of the left-padded batch equal their batch-size-1 runs (tokens, forwards, counters)."""
    batch, singles = rows_equal_single(model, prompts, decoding="eb_sampler", **kw)
    assert batch.stats == summed_stats(singles, maxed=("max_k",))
    return batch


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("cache,block_length", [("none", None), ("none", 8), ("prefix", 8), ("dual", 8)])
def test_batch_rows_equal_batch_one(models, arch, cache, block_length):
    res = check_rows(models[arch], random_prompts([5, 17, 11]), gen_length=16, block_length=block_length,
                     cache=cache, gamma=0.3)
    assert res.stats["steps_single"] > 0 and res.stats["steps_multi"] > 0


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_batch_with_guidance(models, cache):
    """cfg_scale > 0: one forward on the doubled batch per step, the prompt masked in the
    unconditional rows (LLaDA's convention; the golden cases check it at batch size 1)."""
    res = check_rows(models["llada"], random_prompts([4, 10], seed=3), gen_length=16, block_length=8, cache=cache,
                     gamma=0.3, cfg_scale=1.0, trace=True)
    assert res.nfe == len(res.trace)  # one model call per step


def test_batch_gqa_random_model():
    model = gqa_model("dream")
    for cache in ["none", "dual"]:
        check_rows(model, random_prompts([6, 2, 10], seed=4, hi=198), gen_length=12, block_length=4, cache=cache,
                   gamma=0.1)


def test_gamma_extremes(models):
    """gamma 0 admits one token per forward; a huge gamma commits a whole block in one forward."""
    p = random_prompts([8], seed=9)[0][None]
    one = generate(models["llada"], p, gen_length=16, block_length=None, decoding="eb_sampler", gamma=0.0)
    assert one.nfe == 16 and one.stats["steps_single"] == 16 and one.stats["max_k"] == 1
    allin = generate(models["llada"], p, gen_length=16, block_length=8, decoding="eb_sampler", gamma=1e6)
    assert allin.nfe == 2 and allin.stats["steps_all_remaining"] == 2 and allin.stats["max_k"] == 8


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_static_path_equals_eager(models, cache):
    kw = dict(gen_length=16, block_length=8, cache=cache, decoding="eb_sampler", gamma=0.3)
    prompts = random_prompts([7, 12], seed=5)
    for model in models.values():
        eager = generate(model, prompts, **kw)
        static = generate(model, prompts, graphs=True, **kw)
        clear_static_buffers(model)
        assert torch.equal(static.tokens, eager.tokens) and static.nfe_per_row == eager.nfe_per_row


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_mask_token_never_committed(arch):
    """A model whose top prediction is always [MASK]: the reference loops forever; the engine commits
    the best other token and finishes in at most one forward per token."""
    model = put_mask_on_top(load_model(LLADA_TINY if arch == "llada" else DREAM_TINY))
    mask = model.config.mask_token_id
    res = generate(model, random_prompts([5, 9], seed=6), gen_length=16, block_length=None, decoding="eb_sampler")
    assert not (res.tokens == mask).any() and res.nfe <= 16


@pytest.fixture(scope="module")
def counted(counted_llada):
    return counted_llada


@pytest.mark.parametrize("override,needle", [
    ({"gamma": -0.1}, "gamma must be a finite number in [0, inf), got -0.1"),
    ({"gamma": float("nan")}, "got nan"),
    ({"remasking": "random"}, "remasking='random'"),
    ({"gama": 0.1}, "gama=0.1"),
])
def test_bad_arguments_before_any_forward(counted, override, needle):
    kw = {**dict(gen_length=16, block_length=8, cache="dual", decoding="eb_sampler"), **override}
    before = len(counted.forward_calls)
    with pytest.raises(ValueError) as err:
        generate(counted, torch.tensor([[1, 2, 3, 4]]), **kw)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert len(counted.forward_calls) == before
