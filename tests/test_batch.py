"""Batch invariance: every row of a left-padded batch equals that prompt's batch-size-1 result."""
import itertools

import pytest
import torch

from dllm_bench import build_model, generate, load_model
from fixture_paths import DREAM_TINY, LLADA_TINY

SETTINGS = {  # decoding -> extra kwargs (chosen so the tiny random models take several steps)
    "fixed": {},
    "threshold": {"threshold": 0.7},
    "factor": {"factor": 1.0},
}


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


def _prompts(vocab_hi: int, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_hi, (n,), generator=g) for n in lengths]


def _check_rows(model, prompts, **kw):
    batch = generate(model, prompts, **kw)
    for i, p in enumerate(prompts):
        single = generate(model, p[None], **kw)
        assert batch.tokens[i].tolist() == single.tokens[0].tolist(), f"row {i} differs ({kw})"
        assert batch.nfe_per_row[i] == single.nfe, f"row {i} nfe differs ({kw})"
    assert batch.nfe >= max(batch.nfe_per_row)  # blocks are synchronised across rows


@pytest.mark.parametrize("arch,cache,decoding", list(itertools.product(
    ["llada", "dream"], ["none", "prefix", "dual"], list(SETTINGS))))
def test_batch_rows_equal_batch_one(models, arch, cache, decoding):
    model = models[arch]
    prompts = _prompts(380, [5, 17, 11])
    _check_rows(model, prompts, gen_length=16, block_length=8, steps=8, cache=cache, decoding=decoding,
                **SETTINGS[decoding])


@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
def test_dream_nonblocked_batch(models, decoding):
    kw = {"threshold": 0.7} if decoding == "threshold" else {}
    _check_rows(models["dream"], _prompts(380, [9, 4, 13], seed=1), gen_length=16, block_length=None,
                steps=4, cache="none", decoding=decoding, **kw)


def test_padded_tensor_with_attention_mask_equals_list(models):
    model = models["llada"]
    prompts = _prompts(380, [3, 8], seed=2)
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
    raw = {"model_type": "llada", "d_model": 64, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2,
           "mlp_hidden_size": 96, "vocab_size": 200, "embedding_size": 200, "mask_token_id": 199,
           "eos_token_id": 198, "pad_token_id": 198, "rope_theta": 10000.0} if arch == "llada" else \
          {"model_type": "Dream", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
           "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 200, "mask_token_id": 199,
           "eos_token_id": 198, "pad_token_id": 198, "rope_theta": 10000.0}
    model = build_model(raw, seed=3)
    with torch.no_grad():  # sharpen the random model so confidences spread over 0..1
        model.lm_head.weight.mul_(40)
    for cache in ["none", "prefix", "dual"]:
        _check_rows(model, _prompts(198, [6, 2, 10], seed=4), gen_length=12, block_length=4, steps=12,
                    cache=cache, decoding="threshold", threshold=0.5)
