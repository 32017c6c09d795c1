"""Batch invariance: every row of a left-padded batch equals that prompt's batch-size-1 result."""
import itertools

import pytest
import torch

from dllm_bench import generate, load_model
from engine_helpers import gqa_model, random_prompts, rows_equal_single
from fixture_paths import DREAM_TINY, LLADA_TINY

SETTINGS = {  # decoding -> extra kwargs (chosen so the tiny random models take several steps)
    "fixed": {},
    "threshold": {"threshold": 0.7},
    "factor": {"factor": 1.0},
}


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


def _check_rows(model, prompts, **kw):
    batch, _ = rows_equal_single(model, prompts, **kw)
    assert batch.nfe >= max(batch.nfe_per_row)  # blocks are synchronised across rows


@pytest.mark.parametrize("arch,cache,decoding", list(itertools.product(
    ["llada", "dream"], ["none", "prefix", "dual"], list(SETTINGS))))
def test_batch_rows_equal_batch_one(models, arch, cache, decoding):
    model = models[arch]
    prompts = random_prompts([5, 17, 11])
    _check_rows(model, prompts, gen_length=16, block_length=8, steps=8, cache=cache, decoding=decoding,
                **SETTINGS[decoding])


@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
def test_dream_nonblocked_batch(models, decoding):
    kw = {"threshold": 0.7} if decoding == "threshold" else {}
    _check_rows(models["dream"], random_prompts([9, 4, 13], seed=1), gen_length=16, block_length=None,
                steps=4, cache="none", decoding=decoding, **kw)


def test_padded_tensor_with_attention_mask_equals_list(models):
    model = models["llada"]
    prompts = random_prompts([3, 8], seed=2)
    ids = torch.full((2, 8), 0, dtype=torch.long)
    mask = torch.zeros((2, 8), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, 8 - len(p):], mask[i, 8 - len(p):] = p, 1
    kw = dict(gen_length=16, block_length=4, steps=8, cache="dual", decoding="threshold", threshold=0.8)
    a = generate(model, ids, attention_mask=mask, **kw)
    b = generate(model, prompts, **kw)
    assert torch.equal(a.tokens, b.tokens)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_gqa_random_model_batch_invariance(arch):
    """A shape the fixtures do not cover: GQA with 8 query heads on 2 KV heads."""
    model = gqa_model(arch)
    for cache in ["none", "prefix", "dual"]:
        _check_rows(model, random_prompts([6, 2, 10], seed=4, hi=198), gen_length=12, block_length=4, steps=12,
                    cache=cache, decoding="threshold", threshold=0.5)
