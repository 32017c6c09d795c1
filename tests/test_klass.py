"""KLASS beyond its authors' batch-1, cache-free code: batch invariance with left padding (LLaDA and
Dream, every cache, every unmask strategy), what a cached step does to the KL histories, the mask
token never committed, bad arguments refused before any forward. Token parity with the authors'
code is tests/test_golden.py's (methods/klass.json)."""
import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.decoding.rules.klass import Klass
from engine_helpers import gqa_model, put_mask_on_top, random_prompts, rows_equal_single, summed_stats
from fixture_paths import DREAM_TINY, LLADA_TINY

SETTING = dict(conf_threshold=0.1, kl_threshold=0.5)  # the tiny random models reach both branches


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


def check_rows(model, prompts, **kw):
    """Each row of the left-padded batch equals its batch-size-1 run: tokens, forwards, and the
    batch's counters are the sums of the rows' counters."""
    batch, singles = rows_equal_single(model, prompts, decoding="klass", **kw)
    assert batch.stats == summed_stats(singles)
    return batch


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_rows_equal_batch_one(models, arch, cache):
    res = check_rows(models[arch], random_prompts([5, 17, 11]), gen_length=16, block_length=8, steps=16,
                     cache=cache, **SETTING)
    assert res.stats["steps_rule"] > 0 and res.stats["steps_fallback"] > 0  # both branches ran


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("strategy", ["max_conf", "min_kl"])
def test_batch_one_token_strategies(models, arch, strategy):
    res = check_rows(models[arch], random_prompts([9, 3, 14], seed=1), gen_length=16, block_length=8, steps=16,
                     cache="none", conf_threshold=0.0, kl_threshold=1.0, kl_history_length=1,
                     unmask_strategy=strategy)
    assert res.stats["steps_rule_select_one"] > 0
    assert res.stats["tokens_by_rule"] == res.stats["steps_rule"]  # one token per rule step


def test_batch_with_guidance(models):
    """cfg_scale > 0 (not in the authors' code): the guided logits feed the histories."""
    check_rows(models["llada"], random_prompts([4, 10], seed=6), gen_length=16, block_length=8, steps=16,
               cache="dual", cfg_scale=1.0, **SETTING)


def test_batch_dream_whole_sequence_with_top_p(models):
    """Dream's own schedule (no block length, no cache): one-token fallback on top-p confidences."""
    check_rows(models["dream"], random_prompts([4, 12, 7], seed=2), gen_length=16, block_length=None, steps=16,
               cache="none", top_p=0.95, **SETTING)


def test_batch_llada_quota_with_leftover_masks(models):
    """steps < gen_length: quota 2 per step; a rule step that commits fewer leaves masks behind."""
    res = check_rows(models["llada"], random_prompts([6, 2, 10], seed=3), gen_length=16, block_length=8, steps=8,
                     cache="dual", conf_threshold=0.05, kl_threshold=2.0)
    assert res.stats["steps_rule"] > 0


def test_batch_gqa_random_model():
    model = gqa_model()
    for cache in ["none", "dual"]:
        check_rows(model, random_prompts([6, 2, 10], seed=4, hi=198), gen_length=12, block_length=4, steps=12,
                   cache=cache, conf_threshold=0.5, kl_threshold=0.05)


@pytest.mark.parametrize("cache,frozen", [("dual", True), ("prefix", False), ("none", False)])
def test_history_of_positions_a_cached_step_does_not_feed(models, cache, frozen):
    """The dual cache feeds only the block after its refresh: later blocks' KL histories stay as they
    were until the next refresh feeds them. Prefix and no cache feed them every step."""
    rule = Klass(**SETTING)
    snaps = []
    generate(models["llada"], random_prompts([7])[0][None], gen_length=16, block_length=8, steps=16, cache=cache,
             decoding=rule, on_step=lambda info: snaps.append((info.block, info.step, rule.hist.clone())))
    block0 = [h for b, _, h in snaps if b == 0]
    assert len(block0) > 2
    later = slice(8, 16)  # generation positions of block 1
    for prev, cur in zip(block0, block0[1:]):
        assert torch.equal(prev[:, later], cur[:, later]) == frozen
        assert not torch.equal(prev[:, :8], cur[:, :8])  # the block's own positions advance
    refresh = next(h for b, s, h in snaps if b == 1 and s == 0)
    assert not torch.equal(block0[-1][:, later], refresh[:, later])


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_mask_token_never_committed(arch):
    """A model whose top prediction is always [MASK]: the reference would commit it (LLaDA leaves the
    position masked, Dream loops on); the engine commits the best other token."""
    model = put_mask_on_top(load_model(LLADA_TINY if arch == "llada" else DREAM_TINY))
    mask = model.config.mask_token_id
    res = generate(model, random_prompts([5, 9], seed=5), gen_length=16, block_length=8, steps=16, cache="none",
                   decoding="klass", **SETTING)
    assert not (res.tokens == mask).any()


@pytest.fixture(scope="module")
def counted(counted_llada):
    return counted_llada


@pytest.mark.parametrize("override,needle", [
    ({"conf_threshold": 1.5}, "conf_threshold must be a finite number in [0, 1], got 1.5"),
    ({"kl_threshold": 0.0}, "kl_threshold must be a finite number in (0, inf), got 0.0"),
    ({"kl_history_length": 0}, "kl_history_length must be an integer in [1, inf), got 0"),
    ({"kl_history_length": 1.5}, "got 1.5"),
    ({"unmask_strategy": "maxconf"}, "Did you mean: max_conf"),
    ({"top_p": 0.9}, "top_p=0.9 filters Dream's one-token fallback"),
    ({"top_p": 0.0}, "top_p must be"),
    ({"remasking": "random"}, "remasking='random'"),
    ({"steps": None}, "steps is required for decoding='klass'"),
    ({"gama": 0.1}, "gama=0.1"),
])
def test_bad_arguments_before_any_forward(counted, override, needle):
    kw = {**dict(gen_length=16, block_length=8, steps=16, cache="dual", decoding="klass"), **override}
    before = len(counted.forward_calls)
    with pytest.raises(ValueError) as err:
        generate(counted, torch.tensor([[1, 2, 3, 4]]), **kw)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert len(counted.forward_calls) == before
