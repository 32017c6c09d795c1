"""WINO (decoding="wino") beyond its golden file (tests/test_golden.py replays all 48 cases with
tokens, NFE, counters and the per-forward [accepted, re-masked] trace).

An oracle written from the algorithm note (plain Python sets, the model called directly with the
shadow buffer, its position ids and its boolean attention mask) checks the engine's path without
a cache and, for the compositions the reference does not have, with the dual and prefix caches;
then batch invariance, the mask token, the loop's NFE and stop rule, and the refusals.
"""
import json

import pytest
import torch

from dllm_bench import build_model, generate, load_model
from dllm_bench.models.kv import Where
from conftest import count_forwards
from engine_helpers import gqa_model, random_prompts, rows_equal_single
from fixture_paths import DREAM_TINY, FIXTURES, LLADA_TINY

GOLDEN = json.loads((FIXTURES / "methods" / "wino.json").read_text())


@pytest.fixture(scope="module")
def llada(counted_llada):
    return counted_llada


@torch.no_grad()
def oracle(model, prompt, *, gen_length, block_length, threshold, threshold_back, cache="none"):
    """WINO as ../shared/methods/wino.md states it, batch 1: (tokens, nfe, [[accepted, re-masked]])."""
    mask = model.config.mask_token_id
    P, E = len(prompt), block_length
    L = P + gen_length
    x = torch.tensor([list(prompt) + [mask] * gen_length])
    kv = None if cache == "none" else model.new_cache(1, L)
    nfe, trace = 0, []
    for s in range(P, L, E):
        e, last, step = s + E, 30, 0
        while step == 0 or any(int(t) == mask for t in x[0, s:e]):
            lo, hi = (0, L) if cache == "none" or step == 0 else (s, e) if cache == "dual" else (s, L)
            T = hi - lo
            att = torch.zeros(T + E, L + E, dtype=torch.bool)  # keys: the L sequence positions, then the shadow
            att[:T, :L] = True
            att[T:, :] = True
            for j in range(E):
                att[T + j, s + j] = False
            ids = torch.cat([x[:, lo:hi], torch.full((1, E), mask)], 1)
            pos = torch.tensor([list(range(lo, hi)) + list(range(s, e))])
            logits = model(ids, position_ids=pos, attention_mask=att[None], cache=kv, where=Where(start=lo, n_extra=E))
            nfe += 1
            blk, shadow = logits[0, s - lo:e - lo], logits[0, T:]
            probs = torch.softmax(blk.double(), -1)
            pick = blk.clone()
            pick[:, mask] = -torch.inf
            pred = pick.argmax(-1).tolist()
            M = [i for i in range(E) if int(x[0, s + i]) == mask]
            D = [j for j in range(E) if int(x[0, s + j]) != mask]
            conf = {i: float(probs[i, pred[i]]) for i in M}
            cap = min(max(int(0.7 * len(M)), 5), 20)
            A = [i for i in M if conf[i] > threshold]
            if len(A) > cap:
                A = sorted(A, key=lambda i: -conf[i])[:cap]
            elif not A:
                A = [max(M, key=lambda i: conf[i])]
            sprobs = torch.softmax(shadow.double(), -1)
            sconf = {j: float(sprobs[j, int(x[0, s + j])]) for j in D}
            C = sorted((j for j in D if sconf[j] < threshold_back), key=lambda j: sconf[j])
            R = [] if len(A) <= 1 else C[:last - 1] if len(C) >= last else C
            for i in A:
                x[0, s + i] = pred[i]
            for j in R:
                x[0, s + j] = mask
            trace.append([len(A), len(R)])
            last, step = len(A), step + 1
    return x[0, P:].tolist(), nfe, trace


SETTINGS = [  # (gen_length, block_length, threshold, threshold_back): all re-mask on llada_tiny
    (32, 16, 0.3, 0.99),
    (32, 8, 0.5, 0.9),
    (48, 48, 0.6, 0.9),
]


@pytest.mark.parametrize("cache", ["none", "dual", "prefix"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_engine_equals_oracle(llada, cache, setting):
    g, b, t, tb = setting
    remasked = 0
    for prompt in random_prompts([7, 19], seed=g + b):
        tokens, nfe, trace = oracle(llada, prompt.tolist(), gen_length=g, block_length=b, threshold=t,
                                    threshold_back=tb, cache=cache)
        res = generate(llada, prompt[None], gen_length=g, block_length=b, cache=cache, decoding="wino",
                       threshold=t, threshold_back=tb)
        assert res.tokens[0].tolist() == tokens
        assert res.nfe == nfe and res.stats["accept_remask_trace"] == trace
        remasked += sum(res.remasked_per_row)
    assert remasked > 0  # the setting exercises re-masking


def test_trace_nfe_and_counters_agree_with_the_loop(llada):
    """The rule's counters, the loop's own per-step records and the model's call count agree."""
    case = next(c for c in GOLDEN["cases"] if c["extra"]["block_end_deferred_steps"] > 0
                and c["params"]["gen_length"] <= 64)
    p = case["params"]
    before = len(llada.forward_calls)
    res = generate(llada, torch.tensor([case["prompt_ids"]]), gen_length=p["gen_length"],
                   block_length=p["block_length"], decoding="wino", threshold=p["threshold"],
                   threshold_back=p["threshold_back"], trace=True)
    assert res.tokens[0].tolist() == case["expected_tokens"]
    assert res.nfe == len(llada.forward_calls) - before == case["expected_nfe"] == sum(res.stats["block_steps"])
    assert res.stats["accept_remask_trace"] == case["extra"]["trace"]
    assert [[r["accepted"][0], r["remasked"][0]] for r in res.trace] == case["extra"]["trace"]
    assert sum(res.remasked_per_row) == res.stats["remask_events"]
    # a step that filled the block's last masks but re-masked some: the block went on
    per_block = {}
    for r in res.trace:
        per_block.setdefault(r["block"], []).append(r)
    deferred = 0
    for steps in per_block.values():
        masks = p["block_length"]
        for i, r in enumerate(steps):
            masks += r["remasked"][0] - r["accepted"][0]
            assert masks >= 0 and (masks == 0) == (i == len(steps) - 1)
            deferred += r["accepted"][0] > 0 and masks == r["remasked"][0] > 0
    assert deferred == case["extra"]["block_end_deferred_steps"] > 0


def test_golden_cases_finish_within_gen_length_forwards():
    """A step re-masks at most the previous step's accept count minus one, so a block of B positions
    needs at most B forwards: WINO terminates, NFE <= gen_length (docs/methods/wino.md)."""
    for c in GOLDEN["cases"]:
        assert all(n <= c["params"]["block_length"] for n in c["extra"]["block_steps"])
        assert c["expected_nfe"] <= c["params"]["gen_length"]


def _check_rows(model, prompts, **kw):
    batch, singles = rows_equal_single(model, prompts, decoding="wino", **kw)
    for i, single in enumerate(singles):
        assert single.nfe <= kw["gen_length"], f"row {i} nfe above gen_length ({kw})"
        assert batch.remasked_per_row[i] == single.remasked_per_row[0], f"row {i} re-masks differ ({kw})"
    assert sum(batch.remasked_per_row) == batch.stats["remask_events"]
    return batch


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_rows_equal_batch_one(llada, cache):
    b = _check_rows(llada, random_prompts([5, 17, 11]), gen_length=32, block_length=8, cache=cache, threshold=0.3,
                    threshold_back=0.99)
    assert sum(b.remasked_per_row) > 0


def test_batch_rows_equal_batch_one_guided(llada):
    """Classifier-free guidance applies to the shadow's logits too (LLaDA's doubled batch)."""
    _check_rows(llada, random_prompts([4, 9], seed=5), gen_length=16, block_length=8, cache="dual", threshold=0.4,
                threshold_back=0.95, cfg_scale=1.0)


def test_gqa_random_model_batch_invariance():
    model = gqa_model()
    for cache in ["none", "dual"]:
        _check_rows(model, random_prompts([6, 2, 10], seed=4, hi=198), gen_length=12, block_length=4, cache=cache,
                    threshold=0.5, threshold_back=0.9)


@pytest.mark.parametrize("bias", [3.0, 50.0])
def test_mask_token_never_decoded(bias):
    """A model that prefers [MASK] everywhere: it is never accepted, and the block still ends."""
    raw = {"model_type": "llada", "d_model": 32, "n_layers": 2, "n_heads": 4, "mlp_hidden_size": 64,
           "vocab_size": 100, "embedding_size": 100, "mask_token_id": 99, "eos_token_id": 98,
           "pad_token_id": 98, "rope_theta": 10000.0}
    model = build_model(raw, seed=1)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    push = torch.zeros(100)
    push[99] = bias
    model.register_forward_hook(lambda m, a, out: out + push)
    res = generate(model, random_prompts([6, 3], hi=98), gen_length=24, block_length=8, decoding="wino",
                   threshold=0.3, threshold_back=0.9)
    assert not (res.tokens == 99).any() and max(res.nfe_per_row) <= 24


@torch.no_grad()
def test_extra_tokens_are_attended_but_never_stored():
    """A window forward with the shadow appended writes the same K/V and gives the same block
    logits as without it (sequence positions never see the shadow); the shadow reads the cache."""
    model = load_model(LLADA_TINY, dtype=torch.float64)
    mask, E, s = model.config.mask_token_id, 8, 10
    x = torch.cat([random_prompts([10])[0], torch.full((16,), mask)])[None]
    L = x.shape[1]
    caches = [model.new_cache(1, L), model.new_cache(1, L)]
    for kv in caches:
        model(x, cache=kv)
    x[0, s:s + 3] = torch.tensor([5, 6, 7])  # the block changed since the refresh
    plain = model(x[:, s:s + E], cache=caches[0], where=Where(start=s))
    att = torch.ones(2 * E, L + E, dtype=torch.bool)
    att[:E, L:] = False
    att[E + torch.arange(E), s + torch.arange(E)] = False
    pos = torch.cat([torch.arange(s, s + E), torch.arange(s, s + E)])[None]
    both = model(torch.cat([x[:, s:s + E], torch.full((1, E), mask)], 1), position_ids=pos,
                 attention_mask=att[None], cache=caches[1], where=Where(start=s, n_extra=E))
    torch.testing.assert_close(both[:, :E], plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(caches[1].k, caches[0].k, rtol=0, atol=1e-12)
    torch.testing.assert_close(caches[1].v, caches[0].v, rtol=0, atol=1e-12)
    assert not torch.allclose(both[:, E:], plain)  # the shadow's view differs from the block's


def test_dream_is_refused_before_any_forward():
    model = load_model(DREAM_TINY)
    count_forwards(model)
    with pytest.raises(ValueError, match="defined for llada models, not dream") as err:
        generate(model, torch.tensor([[1, 2, 3]]), gen_length=8, block_length=4, decoding="wino")
    assert "\n" not in str(err.value) and not model.forward_calls


@pytest.mark.parametrize("override,needle", [
    ({"threshold": 1.5}, "1.5"),
    ({"threshold": -0.1}, "-0.1"),
    ({"threshold_back": 2}, "threshold_back must be"),
    ({"threshold": "high"}, "'high'"),
    ({"remasking": "random"}, "'random'"),
    ({"temperature": -1.0}, "-1.0"),
    ({"graphs": True}, "decoding 'wino'"),
    ({"tresh": 0.5}, "tresh=0.5"),
])
def test_bad_arguments_before_any_forward(llada, override, needle):
    before = len(llada.forward_calls)
    with pytest.raises(ValueError) as err:
        generate(llada, torch.tensor([[1, 2, 3, 4]]), gen_length=16, block_length=8, decoding="wino", **override)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert len(llada.forward_calls) == before
