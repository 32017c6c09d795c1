"""dLLM-Cache beyond its golden file: lossless settings equal no cache, left-padded batches equal
batch size 1 (also when rows finish blocks at different steps, and under guidance), GQA and odd
widths, the skipped-computation counters, the mask token never decoded, bad arguments refused
before any forward. The golden cases themselves run in test_golden.py."""
import pytest
import torch

from dllm_bench import generate, load_model, replay
from dllm_bench.decoding import CACHES
from engine_helpers import gqa_model, random_prompts, rows_equal_single, summed_stats
from fixture_paths import DREAM_TINY, FIXTURES, LLADA_TINY, ROOT

GOLDEN = FIXTURES / "methods" / "dllm_cache.json"
ARGS = dict(prompt_interval_steps=3, gen_interval_steps=2, transfer_ratio=0.25)


@pytest.fixture(scope="module")
def models():
    return {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}


def _check_rows(model, prompts, **kw):
    """Each row of the batch equals its batch-size-1 run: tokens, forwards, and the cache's
    counters (per-row, so the batch's are the sum of the rows')."""
    batch, singles = rows_equal_single(model, prompts, cache="dllm_cache", **kw)
    assert batch.stats == summed_stats(singles)
    return batch


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("args", [
    dict(prompt_interval_steps=1, gen_interval_steps=1, transfer_ratio=0.0),   # every feature fresh
    dict(prompt_interval_steps=1, gen_interval_steps=5, transfer_ratio=1.0),   # every response row transferred
])
def test_lossless_settings_equal_no_cache(models, arch, args):
    model = models[arch]
    prompt = random_prompts([11], seed=5)[0][None]
    kw = dict(gen_length=16, block_length=8 if arch == "llada" else None, steps=16, decoding="fixed")
    ref = generate(model, prompt, cache="none", **kw)
    got = generate(model, prompt, cache="dllm_cache", **kw, **args)
    assert got.tokens.tolist() == ref.tokens.tolist() and got.nfe == ref.nfe
    assert got.stats["layer_tokens_computed"] == got.stats["layer_tokens_total"]


def test_caching_changes_tokens_and_skips_computation(models):
    """The default setting really reuses features (else every test above passes trivially)."""
    model = models["llada"]
    prompt = random_prompts([20], seed=6)[0][None]
    kw = dict(gen_length=32, block_length=8, steps=32, decoding="fixed")
    ref = generate(model, prompt, cache="none", **kw)
    got = generate(model, prompt, cache="dllm_cache", **kw)
    assert got.tokens.tolist() != ref.tokens.tolist()
    s = got.stats
    assert 0.3 < s["layer_tokens_computed"] / s["layer_tokens_total"] < 0.7


def test_token_counters_follow_branch_counts():
    """layer_tokens_* from the golden's own branch counts: layer 0 and full calls compute all
    L rows, a response refresh G, a prompt refresh P + k, a reuse k (k = int(G * rho))."""
    data = replay.load(GOLDEN)
    adapter = replay.adapter_for(data, GOLDEN)
    model = load_model(LLADA_TINY)
    for case in data["cases"][:3]:
        kw = adapter(case)
        kw.pop("expect_stats")
        res = generate(model, replay.case_prompt(case), **kw)
        P, G = len(case["prompt_ids"]), kw["gen_length"]
        L, k, e = P + G, case["extra"]["num_replace"], case["extra"]
        n_layers = model.config.n_layers
        assert res.stats["layer_tokens_total"] == res.nfe * n_layers * L
        assert res.stats["layer_tokens_computed"] == (e["full"] * L + e["gen_refresh_only"] * G
                                                      + e["prompt_refresh_only"] * (P + k) + e["reuse"] * k)


@pytest.mark.parametrize("arch", ["llada", "dream"])
@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
def test_batch_rows_equal_batch_one(models, arch, decoding):
    kw = dict(gen_length=16, block_length=8, steps=16, decoding=decoding, **ARGS)
    if decoding == "threshold":  # the trained fixtures are confident: lower thresholds decode whole blocks
        kw["threshold"] = {"llada": 0.9, "dream": 0.7}[arch]
    batch = _check_rows(models[arch], random_prompts([5, 17, 11]), **kw)
    if decoding == "threshold":  # rows finish blocks at different steps: their schedules drift apart
        assert len(set(batch.nfe_per_row)) > 1


@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
def test_dream_whole_sequence_batch(models, decoding):
    kw = {"threshold": 0.7} if decoding == "threshold" else {}
    batch = _check_rows(models["dream"], random_prompts([5, 17, 11]), gen_length=16, block_length=None,
                steps=8, decoding=decoding, **ARGS, **kw)
    if decoding == "threshold":
        assert len(set(batch.nfe_per_row)) > 1


@pytest.mark.parametrize("decoding", ["fixed", "threshold"])
def test_guidance_batch(models, decoding):
    kw = {"threshold": 0.9} if decoding == "threshold" else {}
    batch = _check_rows(models["llada"], random_prompts([7, 15], seed=2), gen_length=16, block_length=8,
                        steps=16, decoding=decoding, cfg_scale=1.0, cfg_interval_steps=3, trace=True, **ARGS, **kw)
    assert batch.nfe > len(batch.trace)  # the unconditional stream ran on some steps
    if decoding == "threshold":  # rows refresh their guidance at different calls
        assert len(set(batch.nfe_per_row)) > 1


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_gqa_model(arch):
    """The authors' LLaDA hooks crash on GQA and their Dream K update assumes a 7B width."""
    model = gqa_model(arch, d_model=48, n_layers=3)  # d_model not a multiple of 7 KV widths
    prompts = random_prompts([6, 2, 10], seed=4, hi=198)
    kw = dict(gen_length=12, block_length=4, steps=12)
    _check_rows(model, prompts, decoding="threshold", threshold=0.5, **kw, **ARGS)
    _check_rows(model, prompts, decoding="fixed", **kw, **ARGS)
    ref = generate(model, prompts, cache="none", decoding="fixed", **kw)
    got = generate(model, prompts, cache="dllm_cache", decoding="fixed", **kw,
                   prompt_interval_steps=1, gen_interval_steps=4, transfer_ratio=1.0)
    assert torch.equal(got.tokens, ref.tokens)


def test_mask_token_never_decoded():
    """A model whose every position ranks the mask token first still decodes ordinary tokens."""
    model = load_model(LLADA_TINY)
    mask = model.config.mask_token_id
    with torch.no_grad():  # residual dimension 0 held at a constant; the mask row reads it
        model.embed.weight[:, 0] = 5.0
        for b in model.blocks:
            b.attn.o_proj.weight[0] = 0
            b.mlp.down_proj.weight[0] = 0
        model.norm.weight[0] = 1.0
        model.lm_head.weight[mask] = 0
        model.lm_head.weight[mask, 0] = 1e3
    prompt = random_prompts([9], seed=7)[0][None]
    assert int(model(prompt).argmax(-1).eq(mask).sum()) == 9
    for decoding, kw in [("fixed", {}), ("threshold", {"threshold": 0.9})]:
        res = generate(model, prompt, gen_length=16, block_length=8, steps=16, cache="dllm_cache",
                       decoding=decoding, **kw)
        assert mask not in res.tokens.tolist()[0]


@pytest.fixture(scope="module")
def counted(counted_llada):
    return counted_llada


@pytest.mark.parametrize("override,needle", [
    ({"prompt_interval_steps": 0}, "prompt_interval_steps"),
    ({"gen_interval_steps": 2.5}, "2.5"),
    ({"cfg_interval_steps": -1}, "cfg_interval_steps"),
    ({"transfer_ratio": 1.5}, "1.5"),
    ({"transfer_ratio": -0.1}, "-0.1"),
    ({"transfer_ratio": "0.2"}, "'0.2'"),
    ({"graphs": True}, "dllm_cache"),
    ({"gen_interval": 3}, "gen_interval_steps"),
])
def test_bad_arguments_refused_before_any_forward(counted, override, needle):
    before = len(counted.forward_calls)
    with pytest.raises(ValueError) as err:
        generate(counted, torch.tensor([[1, 2, 3, 4]]), gen_length=16, block_length=8, steps=16,
                 cache="dllm_cache", decoding="fixed", **override)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert len(counted.forward_calls) == before


def test_registered_defaults_and_config_file():
    """The authors' LLaDA GSM8K setting, and the yaml lists every argument with its default."""
    import yaml

    cls = CACHES["dllm_cache"]
    obj = cls()
    assert (obj.prompt_interval_steps, obj.gen_interval_steps, obj.transfer_ratio, obj.cfg_interval_steps) == (50, 7, 0.25, 1)
    assert not cls.blockwise and not cls.early_exit and not cls.uses_kv
    conf = yaml.safe_load((ROOT / "conf" / "cache" / "dllm_cache.yaml").read_text())
    assert conf.pop("name") == "dllm_cache" and conf.pop("_target_").endswith("DLLMCache")
    assert conf == obj.args()
