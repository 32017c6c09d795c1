"""dKV-Cache beyond the golden file (which tests/test_golden.py replays): the Greedy goldens from
their recorded decoding order, the delayed-cache input sets, batch invariance with left padding
and rows feeding different numbers of positions, GQA LLaDA, equality with no cache at a refresh
every step, composition with the threshold rule, the mask token never decoded, bad arguments."""
import itertools
import json
import random

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.config import build_plugins
from dllm_bench.decoding.caches.dkv_greedy import add_windows
from dllm_bench.decoding.rules.random_order import RandomOrder
from conftest import compose
from engine_helpers import gqa_model, random_prompts, rows_equal_single
from fixture_paths import DREAM_TINY, FIXTURES, LLADA_TINY

GOLDEN = FIXTURES / "methods" / "dkv_cache.json"


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


@pytest.fixture(scope="module")
def gqa_llada():
    return gqa_model()


def _cases(variant):
    return [c for c in json.loads(GOLDEN.read_text())["cases"] if c["variant"] == variant]


def _check_rows(model, prompts, **kw):
    """Every row equals its batch-size-1 run; the cost counters add up over the rows."""
    batch, singles = rows_equal_single(model, prompts, **kw)
    for single in singles:
        assert (single.tokens[0] != model.config.mask_token_id).all()
    for key in ("layer_tokens_computed", "layer_tokens_total"):
        assert batch.stats[key] == sum(s.stats[key] for s in singles), key
    return batch, singles


# ----------------------------------------------------------------------------- Greedy goldens
@pytest.mark.parametrize("case", _cases("greedy"), ids=lambda c: c["id"])
def test_greedy_golden_from_recorded_order(models, case):
    p, extra = case["params"], case["extra"]
    res = generate(models["llada"], torch.tensor([case["prompt_ids"]]), gen_length=p["gen_length"],
                   block_length=p["block_length"], steps=p["steps"], cache="dkv_greedy", decoding="random_order",
                   order=extra["denoising_order"], cache_reloading_step=p["cache_reloading_step"],
                   window_size=p["window_size"])
    assert res.tokens[0].tolist() == case["expected_tokens"]
    assert res.nfe == case["expected_nfe"]
    assert res.stats["forward_kinds"] == extra["forward_kinds"]
    assert res.stats["tokens_computed_per_row"] == extra["tokens_computed_per_row"]


@pytest.mark.parametrize("case", _cases("greedy")[:4], ids=lambda c: c["id"])
def test_seed_draws_the_recorded_order(models, case):
    """seed=s, and torch.manual_seed(s) with seed=None (torch's global generator, as the reference
    draws), both decode the recorded order step by step."""
    p, order = case["params"], case["extra"]["denoising_order"]
    P = len(case["prompt_ids"])
    kw = dict(gen_length=p["gen_length"], block_length=p["block_length"], steps=p["steps"], cache="none")
    spb = p["steps"] // (p["gen_length"] // p["block_length"])
    quota = [p["block_length"] // spb + (i < p["block_length"] % spb) for i in range(spb)]
    want = []
    for block in order:
        at = 0
        for q in quota:
            want.append(sorted(block[at:at + q]))
            at += q
    for rule in (RandomOrder(seed=p["input"]["torch_seed"]), RandomOrder(seed=None)):
        got = []

        def on_step(info):
            got.append(sorted(int(i) + info.targets[0] - P for i in info.accepted[0].nonzero()))
        torch.manual_seed(p["input"]["torch_seed"])
        generate(models["llada"], torch.tensor([case["prompt_ids"]]), on_step=on_step, decoding=rule, **kw)
        assert got == want, rule


def test_add_windows_matches_the_alternating_pointer_walk():
    """The window rule as the reference states it: from each scheduled position, look one further
    left, then one further right, alternately; take masked, not yet fed positions."""
    def walk(fed, sched, was_masked, size):
        fed, L = list(fed), len(fed)
        for p in sched:
            left, right, taken, go_left = p - 1, p + 1, 0, True
            while taken < size:
                if go_left:
                    if left >= 0 and not fed[left] and was_masked[left]:
                        fed[left], taken = True, taken + 1
                    left -= 1
                else:
                    if right < L and not fed[right] and was_masked[right]:
                        fed[right], taken = True, taken + 1
                    right += 1
                go_left = not go_left
                if left < 0 and right > L:
                    break
        return fed

    rng = random.Random(0)
    for _ in range(200):
        L, size = rng.randint(4, 24), rng.randint(1, 5)
        was_masked = [rng.random() < 0.6 for _ in range(L)]
        sched = rng.sample(range(L), rng.randint(1, 3))
        fed = [rng.random() < 0.2 for _ in range(L)]
        for s in sched:
            fed[s] = True
        got = torch.tensor([fed])
        add_windows(got, torch.tensor([sched]), torch.ones((1, len(sched)), dtype=torch.bool),
                    torch.tensor([was_masked]), size)
        assert got[0].tolist() == walk(fed, sched, was_masked, size)


# ----------------------------------------------------------------------------- the delayed cache
def test_decode_feeds_what_was_masked_two_states_ago(models):
    """LLaDA: steps 0 and 1 of a block and every cache_reloading_step-th are full forwards; any
    other step feeds exactly the positions masked two states earlier (masked ones, plus the tokens
    decoded at the previous step), in every row of a padded batch."""
    prompts, crs = random_prompts([5, 12], seed=5), 3
    mask_id = models["llada"].config.mask_token_id
    seen = []

    def on_step(info):
        seen.append((info.block, info.step, info.plan, info.x.clone()))
    res = generate(models["llada"], prompts, gen_length=24, block_length=8, steps=24, cache="dkv_decode",
                   decoding="fixed", cache_reloading_step=crs, on_step=on_step)
    kinds = ""
    for n, (block, step, plan, _) in enumerate(seen):
        full = plan.index is None
        kinds += "F" if full else "C"
        assert full == (step < 2 or step % crs == 0)
        if not full:
            masked_before = seen[n - 2][3] == mask_id
            for r in range(2):
                fed = plan.index[r][plan.valid[r]]
                assert fed.tolist() == masked_before[r].nonzero().squeeze(1).tolist()
    assert res.stats["forward_kinds"] == kinds == "FFCFCCFCFFCFCCFCFFCFCCFC"
    assert res.nfe == 24


@pytest.mark.parametrize("arch,decoding,extra", [
    ("llada", "fixed", {}), ("llada", "threshold", {"threshold": 0.7}),
    ("dream", "fixed", {"alg": "entropy"}), ("dream", "fixed", {"alg": "maskgit_plus"}),
])
def test_refresh_every_step_equals_no_cache(models, arch, decoding, extra):
    kw = dict(gen_length=16, block_length=None if arch == "dream" else 8, steps=8, decoding=decoding, **extra)
    prompts = random_prompts([5, 9], seed=6)
    ref = generate(models[arch], prompts, cache="none", **kw)
    got = generate(models[arch], prompts, cache="dkv_decode", cache_reloading_step=1, **kw)
    assert torch.equal(got.tokens, ref.tokens) and got.nfe == ref.nfe
    assert got.stats["forward_kinds"] == "F" * got.nfe
    assert got.stats["layer_tokens_computed"] == got.stats["layer_tokens_total"]


def test_classifier_free_guidance_runs_the_plan_on_both_halves(models):
    kw = dict(gen_length=16, block_length=8, steps=8, decoding="fixed", cfg_scale=1.0)
    prompts = random_prompts([5, 9], seed=7)
    ref = generate(models["llada"], prompts, cache="none", **kw)
    every = generate(models["llada"], prompts, cache="dkv_decode", cache_reloading_step=1, **kw)
    assert torch.equal(every.tokens, ref.tokens)
    cached, _ = _check_rows(models["llada"], prompts, cache="dkv_decode", cache_reloading_step=4, **kw)
    assert "C" in cached.stats["forward_kinds"]


def test_counters_of_a_cached_run(models):
    model = models["llada"]
    res = generate(model, random_prompts([7])[0][None], gen_length=16, block_length=16, steps=16,
                   cache="dkv_decode", cache_reloading_step=8, decoding="fixed")
    L, n_layers = 7 + 16, model.config.n_layers
    assert res.stats["forward_kinds"] == "FFCCCCCCFCCCCCCC"
    assert res.stats["layer_tokens_total"] == n_layers * L * 16
    assert res.stats["layer_tokens_computed"] == n_layers * res.stats["tokens_computed_per_row"]
    assert res.stats["tokens_computed_per_row"] < 0.7 * L * 16  # most of the prompt and the decoded part reused


# ----------------------------------------------------------------------------- batches, GQA, composition
@pytest.mark.parametrize("decoding,extra", [("fixed", {}), ("threshold", {"threshold": 0.7}),
                                            ("random_order", {"seed": 3})])
def test_llada_decode_batch_rows_equal_batch_one(models, decoding, extra):
    widths = []

    def on_step(info):
        if info.plan.index is not None:
            widths.append(info.plan.valid.sum(-1).tolist())
    kw = dict(gen_length=16, block_length=8, steps=16, cache="dkv_decode", cache_reloading_step=4,
              decoding=decoding, **extra)
    _check_rows(models["llada"], random_prompts([5, 17, 11]), **kw)
    generate(models["llada"], random_prompts([5, 17, 11]), on_step=on_step, **kw)
    assert widths
    if decoding == "threshold":  # rows decoding at their own pace feed different numbers of positions
        assert any(len(set(w)) > 1 for w in widths)


@pytest.mark.parametrize("alg,shift_type", list(itertools.product(["maskgit_plus", "topk_margin", "entropy"], ["un", "un_right"])))
def test_dream_decode_batch_rows_equal_batch_one(models, alg, shift_type):
    _check_rows(models["dream"], random_prompts([9, 4, 13], seed=1), gen_length=16, block_length=None, steps=8,
                cache="dkv_decode", cache_steps=3, shift_type=shift_type, decoding="fixed", alg=alg)


def test_dream_decode_in_blocks_batch_rows_equal_batch_one(models):
    batch, _ = _check_rows(models["dream"], random_prompts([9, 4, 13], seed=8), gen_length=16, block_length=8,
                           steps=8, cache="dkv_decode", cache_steps=2, decoding="fixed", alg="topk_margin")
    assert batch.stats["forward_kinds"] == "FCFC" * 2


def test_dream_decode_composes_with_threshold(models):
    batch, _ = _check_rows(models["dream"], random_prompts([9, 4], seed=2), gen_length=16, block_length=None,
                           steps=8, cache="dkv_decode", cache_steps=4, decoding="threshold", threshold=0.5)
    assert "C" in batch.stats["forward_kinds"]


def test_greedy_batch_rows_equal_batch_one(models):
    batch, _ = _check_rows(models["llada"], random_prompts([5, 17, 11], seed=3), gen_length=16, block_length=8,
                           steps=16, cache="dkv_greedy", decoding="random_order", seed=11, cache_reloading_step=4,
                           window_size=2)
    assert batch.stats["forward_kinds"] == "FCCCFCCC" * 2


@pytest.mark.parametrize("cache,extra", [("dkv_decode", {"cache_reloading_step": 4}),
                                         ("dkv_greedy", {"cache_reloading_step": 4, "window_size": 1})])
def test_gqa_llada(gqa_llada, cache, extra):
    """The authors' LLaDA code indexes cached K/V with a d_model-wide mask and fails when
    n_kv_heads < n_heads; here GQA runs, batch-invariant, and equals no cache at refresh 1."""
    decoding = "random_order" if cache == "dkv_greedy" else "fixed"
    prompts = random_prompts([6, 2, 10], seed=4, hi=198)
    kw = dict(gen_length=12, block_length=4, steps=12, decoding=decoding)
    batch, _ = _check_rows(gqa_llada, prompts, cache=cache, **extra, **kw)
    assert "C" in batch.stats["forward_kinds"]
    every = generate(gqa_llada, prompts, cache=cache, **{**extra, "cache_reloading_step": 1}, **kw)
    assert torch.equal(every.tokens, generate(gqa_llada, prompts, cache="none", **kw).tokens)


@pytest.mark.parametrize("arch,cache,decoding", [("llada", "dkv_decode", "fixed"), ("llada", "dkv_decode", "threshold"),
                                                 ("llada", "dkv_greedy", "random_order"), ("dream", "dkv_decode", "fixed")])
def test_mask_token_never_decoded(arch, cache, decoding):
    """A model that ranks [MASK] first everywhere still gets every position decoded with a real token."""
    model = load_model(LLADA_TINY if arch == "llada" else DREAM_TINY)
    mask_id = model.config.mask_token_id

    def favour_mask(module, args, out):
        out[..., mask_id] += 1e4
        return out
    model.register_forward_hook(favour_mask)
    extra = {"threshold": 0.5} if decoding == "threshold" else {}
    res = generate(model, random_prompts([6, 3]), gen_length=16, block_length=None if arch == "dream" else 8,
                   steps=8, cache=cache, decoding=decoding, cache_reloading_step=4, **extra)
    assert (res.tokens != mask_id).all()


def test_config_options_build_and_run(models):
    cfg = compose(["cache=dkv_greedy", "decoding=random_order", "cache.window_size=1"])
    cache, rule = build_plugins(cfg)
    assert (cache.name, cache.window_size, rule.name, rule.seed) == ("dkv_greedy", 1, "random_order", 42)
    res = generate(models["llada"], random_prompts([5])[0][None], gen_length=16, block_length=8, steps=8,
                   cache=cache, decoding=rule)
    assert res.stats["forward_kinds"] == "FCFCFCFC"
    cache, _ = build_plugins(compose(["model=fixture_dream_tiny", "cache=dkv_decode", "cache.cache_steps=4",
                                      "cache.shift_type=un_right"]))
    assert (cache.interval, cache.shift_type) == (4, "un_right")


# ----------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def counted(models):
    calls = []
    for m in models.values():
        m.register_forward_pre_hook(lambda *a: calls.append(1))  # a forward that raises counts too
    return models, calls


@pytest.mark.parametrize("arch,kw,needle", [
    ("llada", {"cache": "dkv_decode", "cache_reloading_step": 0}, "cache_reloading_step must be an integer"),
    ("llada", {"cache": "dkv_decode", "cache_steps": 1.5}, "1.5"),
    ("llada", {"cache": "dkv_decode", "cache_reloading_step": 2, "cache_steps": 4}, "give one"),
    ("dream", {"cache": "dkv_decode", "shift_type": "right"}, "unknown shift_type 'right'"),
    ("llada", {"cache": "dkv_decode", "shift_type": "un"}, "shift_type='un' applies to models with shifted logits"),
    ("llada", {"cache": "dkv_greedy"}, "needs a rule that exposes its schedule"),
    ("dream", {"cache": "dkv_greedy", "decoding": "random_order"}, "not dream"),
    ("llada", {"cache": "dkv_greedy", "decoding": "random_order", "window_size": -1}, "window_size"),
    ("llada", {"decoding": "random_order", "remasking": "low_confidence"}, "remasking='low_confidence'"),
    ("llada", {"decoding": "random_order", "seed": "a"}, "seed must be an integer"),
    ("llada", {"decoding": "random_order", "order": [[0, 1], [2, 3]]}, "order has shape (2, 2)"),
    ("llada", {"decoding": "random_order", "order": [list(range(8)), [8] * 8]}, "order: block b must list"),
    ("llada", {"decoding": "fixed", "alg": "margin"}, "unknown alg 'margin'"),
    ("llada", {"decoding": "fixed", "alg": "entropy", "remasking": "random"}, "give one"),
])
def test_bad_arguments_fail_before_any_forward(counted, arch, kw, needle):
    models, calls = counted
    before = len(calls)
    args = {"gen_length": 16, "block_length": 8, "steps": 8, "decoding": "fixed", **kw}
    with pytest.raises(ValueError) as err:
        generate(models[arch], torch.tensor([[1, 2, 3]]), **args)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert len(calls) == before
