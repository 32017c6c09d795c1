"""KV cosine similarity (paper Fig. 3) against an independent computation from forward hooks on
the K / V projections, plus the heatmap's shape and the job's opt-in section."""
from __future__ import annotations

import pytest
import torch

from conftest import compose, needs_fixtures
from dllm_bench import generate, load_model
from dllm_bench.job import run_job
from dllm_bench.metrics.kv_similarity import KINDS, PAIRS, REGIONS, KVSimilarity
from fixture_paths import DREAM_TINY, LLADA_TINY, ROOT

pytestmark = [needs_fixtures, pytest.mark.usefixtures("one_thread")]

GEN = dict(gen_length=16, block_length=8, steps=16, decoding="fixed")


def _reference(model, prompt, cache):
    """The same averages from the K / V parts of the QKV projection's output (before RoPE: the same
    rotation at the same position leaves a token's cosine across steps unchanged) of a plain full
    forward per step."""
    feats, steps = [], []
    got = {}  # layer -> (q, k, v) outputs of its qkv_proj
    handles = [b.attn.qkv_proj.register_forward_hook(lambda m, i, o, j=j: got.__setitem__(j, o))
               for j, b in enumerate(model.blocks)]

    def on_step(info):
        model(info.x.clone())
        n = model.config.n_layers
        f = [torch.nn.functional.normalize(torch.stack([got[j][part][0] for j in range(n)]).float(), dim=-1)
             for part in (1, 2)]  # key, value: (layers, L, Hkv*D)
        feats.append(f)
        steps.append((info.step, info.block_start, info.block_end))

    try:
        generate(model, [prompt], cache=cache, on_step=on_step, **GEN)
    finally:
        for h in handles:
            h.remove()
    P, L = len(prompt), len(prompt) + GEN["gen_length"]
    sums = {(k, p, r): [] for k in KINDS for p in PAIRS for r in REGIONS}
    refresh = None
    for i, ((step, bs, be), f) in enumerate(zip(steps, feats)):
        regions = {"prompt": (0, P), "finished": (P, bs), "block": (bs, be), "suffix": (be, L)}
        pairs = {}
        if i > 0:
            pairs["consecutive"] = feats[i - 1]
        if step == 0:
            refresh = f
        else:
            pairs["to_refresh"] = refresh
        for pair, other in pairs.items():
            for kind, a, b in zip(KINDS, f, other):
                for r, (lo, hi) in regions.items():
                    if hi > lo:
                        sums[(kind, pair, r)].append((a[:, lo:hi] * b[:, lo:hi]).sum(-1).mean(-1))
    return {key: torch.stack(v).mean(0) if v else None for key, v in sums.items()}, len(steps)


@pytest.mark.parametrize("path,cache", [(LLADA_TINY, "none"), (DREAM_TINY, "dual")])
def test_matches_hook_reference(path, cache):
    model = load_model(path)
    prompt = torch.arange(5, 17)
    sim = KVSimilarity(model, heatmap_prompt_tokens=6)
    generate(model, [prompt], cache=cache, on_step=sim.start(len(prompt), heatmap=True), **GEN)
    out = sim.result()
    ref, n_steps = _reference(model, prompt, cache)
    assert len(out["layers"]) == model.config.n_layers and out["n_samples"] == 1
    for (kind, pair, region), want in ref.items():
        got = [layer[kind][pair][region] for layer in out["layers"]]
        if want is None:
            assert got == [None] * model.config.n_layers
        else:
            assert got == pytest.approx(want.tolist(), abs=1e-4), (kind, pair, region)
    # the refresh step's consecutive similarity in the block region is < 1: tokens got unmasked
    assert min(layer["key"]["consecutive"]["block"] for layer in out["layers"]) < 0.9999
    for name in ("prompt", "suffix"):
        m = torch.tensor(out["heatmap"][name])
        assert m.shape == (n_steps, n_steps)
        assert torch.allclose(m, m.T, atol=1e-4) and torch.allclose(m.diagonal(), torch.ones(n_steps), atol=2e-3)
        assert float(m.min()) >= -1 and float(m.max()) <= 1 + 2e-3


def test_job_section_is_opt_in(tmp_path):
    off = run_job(compose(["n_samples=2"]), tmp_path / "off" / "j", ROOT)
    assert "kv_similarity" not in off
    res = run_job(compose(["n_samples=2", "measure.kv_similarity=true", "measure.kv_similarity_samples=2"]),
                  tmp_path / "s" / "j", ROOT)
    kv = res["kv_similarity"]
    assert kv["n_samples"] == 2 and len(kv["layers"]) == 3
    assert set(kv["layers"][0]["value"]["to_refresh"]) == set(REGIONS)
    assert len(kv["heatmap"]["prompt"]) >= 2  # at least one step per block (2 blocks)
    # the timed metrics exclude the measurement's extra forwards
    assert res["metrics"]["nfe_mean"] == off["metrics"]["nfe_mean"]
