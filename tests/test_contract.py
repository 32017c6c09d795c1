"""Contract tests: every registered cache and decoding rule is tested by being registered.

For each plugin (and each cache x rule pair, on LLaDA and Dream): bad arguments fail at
construction in one line before any forward; a pair either runs or is refused in one line before
any forward; when it runs, every row of a left-padded batch equals its batch-size-1 run (tokens
and its own forward count), the batch's NFE covers every row's, no mask token survives a
finished generation, and the static (CUDA-graph) path equals the eager one or is refused with a
clear error. Plugins declare ``example_args`` (valid arguments that make the tiny models take
several steps) and ``bad_args``.
"""
import itertools

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.decoding import CACHES, RULES, build_plugins, graphs_unsupported, pair_unsupported
from dllm_bench.decoding.graphs import clear_static_buffers
from conftest import count_forwards
from fixture_paths import DREAM_TINY, LLADA_TINY

SHAPE = dict(gen_length=16, block_length=8, steps=8)


@pytest.fixture(scope="module")
def models():
    out = {"llada": load_model(LLADA_TINY), "dream": load_model(DREAM_TINY)}
    for m in out.values():
        count_forwards(m)
    return out


def _prompts(lengths=(5, 13, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 380, (n,), generator=g) for n in lengths]


def _kwargs(cache, rule):
    return dict(SHAPE, cache=cache, decoding=rule, **CACHES[cache].example_args, **RULES[rule].example_args)


@pytest.mark.parametrize("registry,name", [(CACHES, n) for n in CACHES] + [(RULES, n) for n in RULES])
def test_bad_arguments_fail_at_construction_in_one_line(registry, name):
    cls = registry[name]
    registry.build(name, **cls.example_args)  # the example is valid
    for bad in cls.bad_args:
        with pytest.raises(ValueError) as err:
            registry.build(name, **{**cls.example_args, **bad})
        msg = str(err.value)
        assert "\n" not in msg and any(k in msg for k in bad), msg
    with pytest.raises(ValueError, match="unknown argument"):
        registry.build(name, **cls.example_args, no_such_argument=1)


def _pairs():
    for arch, cache, rule in itertools.product(["llada", "dream"], list(CACHES), list(RULES)):
        yield pytest.param(arch, cache, rule, id=f"{arch}-{cache}-{rule}")


def _run_or_refusal(model, prompts, kw):
    """The result, or None when the pair is refused (one line, before any forward, and already by
    ``pair_unsupported``, which needs no model: a sweep's config check refuses the cell)."""
    before = len(model.forward_calls)
    plugin_kw = {k: v for k, v in kw.items() if k not in SHAPE and k not in ("cache", "decoding", "on_step")}
    why = pair_unsupported(*build_plugins(kw["cache"], kw["decoding"], **plugin_kw), model.config.arch)
    try:
        result = generate(model, prompts, **kw)
    except ValueError as e:
        assert "\n" not in str(e) and len(model.forward_calls) == before, f"refused late or in many lines: {e}"
        assert why == str(e), f"refused at run time but not by pair_unsupported: {e}"
        return None
    assert why is None, f"pair_unsupported refuses a pair that runs: {why}"
    return result


@pytest.mark.parametrize("arch,cache,rule", list(_pairs()))
def test_pair_is_batch_invariant_or_refused(models, arch, cache, rule):
    model, kw = models[arch], _kwargs(cache, rule)
    prompts = _prompts()
    batch = _run_or_refusal(model, prompts, kw)
    if batch is None:
        pytest.skip(f"{cache} x {rule} refused on {arch}")
    mask_id = model.config.mask_token_id
    for i, p in enumerate(prompts):
        single = generate(model, [p], **kw)
        assert batch.tokens[i].tolist() == single.tokens[0].tolist(), f"row {i} differs from batch size 1"
        assert batch.nfe_per_row[i] == single.nfe == single.nfe_per_row[0], f"row {i} forward count differs"
    assert batch.nfe >= max(batch.nfe_per_row)
    if not RULES[rule].uses_steps:  # budgeted rules may leave masks by design; the others finish
        assert not (batch.tokens == mask_id).any()


@pytest.mark.parametrize("arch,cache,rule", list(_pairs()))
def test_static_path_equals_eager_or_is_refused(models, arch, cache, rule):
    model, kw = models[arch], _kwargs(cache, rule)
    prompts = _prompts((6, 11), seed=1)
    eager = _run_or_refusal(model, prompts, kw)
    if eager is None:
        pytest.skip(f"{cache} x {rule} refused on {arch}")
    why = graphs_unsupported(*build_plugins(cache, rule, **CACHES[cache].example_args, **RULES[rule].example_args))
    if why:
        before = len(model.forward_calls)
        with pytest.raises(ValueError, match="graphs=True") as err:
            generate(model, prompts, graphs=True, **kw)
        assert "\n" not in str(err.value) and len(model.forward_calls) == before
        return
    static = generate(model, prompts, graphs=True, **kw)
    clear_static_buffers(model)
    assert torch.equal(static.tokens, eager.tokens)
    assert static.nfe == eager.nfe and static.nfe_per_row == eager.nfe_per_row


@pytest.mark.parametrize("name", list(RULES))
def test_rule_never_decodes_the_mask_token(models, name):
    """A model that ranks [MASK] first at most positions: no step may write it."""
    model = models["llada"]
    mask_id = model.config.mask_token_id
    head = model.lm_head.weight
    saved = head[mask_id].clone()
    written = []

    def check(info):
        ts, te = info.targets
        written.append(int((info.x[:, ts:te][info.accepted] == mask_id).sum()))

    try:
        with torch.no_grad():
            head[mask_id] = head.mean(0) + 5 * head.std(0)  # a large logit for [MASK] at most positions
        res = _run_or_refusal(model, _prompts((7,)), dict(_kwargs("none", name), on_step=check))
    finally:
        with torch.no_grad():
            head[mask_id] = saved
    if res is None:
        pytest.skip(f"none x {name} refused")
    assert written and sum(written) == 0
