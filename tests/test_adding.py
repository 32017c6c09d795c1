"""docs/ADDING.md, executed: a new rule and a new window cache are one class + one yaml each.

The two plugins below are defined here, in the test (the same code as in docs/ADDING.md);
registering them is all it takes for the engine, the config groups, ``run.py`` and the contract
tests to use them.
"""
from dataclasses import dataclass

import pytest
import torch

from dllm_bench import generate, load_model
from dllm_bench.decoding import CACHES, RULES, Rule, WindowCache
from dllm_bench.decoding.registry import check_number
from dllm_bench.decoding.rules import first_plus
from conftest import count_forwards, run_cli
from fixture_paths import LLADA_TINY


@RULES.register("margin")
@dataclass(kw_only=True)
class Margin(Rule):
    """Unmask every candidate whose top-1 minus top-2 probability is at least ``margin`` (and always
    the best one)."""

    margin: float = 0.5
    example_args = {"margin": 0.3}
    bad_args = ({"margin": -0.1}, {"margin": 2.0})

    def check(self):
        super().check()
        check_number("margin", self.margin, lo=0, hi=1)

    def predict(self, logits, state):
        pred = super().predict(logits, state)  # x0 (never [MASK]) and the default confidence
        top2 = logits.float().softmax(-1).topk(2, dim=-1).values
        pred.conf = top2[..., 0] - top2[..., 1]
        return pred

    def select(self, pred, cand, state):
        return first_plus(pred.conf, torch.isfinite(pred.conf) & (pred.conf >= self.margin))


@CACHES.register("lookahead")
@dataclass(kw_only=True)
class Lookahead(WindowCache):
    """A dual cache whose steps also recompute the next ``lookahead`` positions after the block."""

    uses_kv = blockwise = early_exit = True
    lookahead: int = 8
    example_args = {"lookahead": 4}
    bad_args = ({"lookahead": -1}, {"lookahead": 1.5})

    def check(self):
        check_number("lookahead", self.lookahead, lo=0, integer=True)

    def window(self, state):
        return state.start, min(state.end + self.lookahead, state.length)


YAMLS = {
    "decoding/margin.yaml": "_target_: test_adding.Margin\nname: margin\nmargin: 0.3\n"
                            "temperature: 0.0\nremasking: low_confidence\n",
    "cache/lookahead.yaml": "_target_: test_adding.Lookahead\nname: lookahead\nlookahead: 8\n",
}


@pytest.fixture(scope="module")
def model():
    return load_model(LLADA_TINY)


def test_new_plugins_run_through_generate(model):
    prompts = [torch.tensor([5, 9, 2, 7, 1]), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])]
    kw = dict(gen_length=32, block_length=8)
    res = generate(model, prompts, cache="lookahead", decoding="margin", margin=0.3, lookahead=4, **kw)
    assert res.tokens.shape == (2, 32) and not (res.tokens == model.config.mask_token_id).any()
    # a lookahead of 0 is the dual cache; one past the end is the prefix cache (same windows)
    for look, same in ((0, "dual"), (32, "prefix")):
        a = generate(model, prompts, cache="lookahead", decoding="threshold", threshold=0.7, lookahead=look, **kw)
        b = generate(model, prompts, cache=same, decoding="threshold", threshold=0.7, **kw)
        assert torch.equal(a.tokens, b.tokens) and a.nfe == b.nfe
    with pytest.raises(ValueError, match="margin must be"):
        generate(model, prompts, decoding="margin", margin=1.5, **kw)


def test_new_plugins_pass_the_contract_tests(model):
    """The contract tests iterate the registries at collection time; run their checks on these two."""
    import test_contract as contract

    for registry, name in ((RULES, "margin"), (CACHES, "lookahead")):
        contract.test_bad_arguments_fail_at_construction_in_one_line(registry, name)
    models = {"llada": model}
    count_forwards(model)
    for cache, rule in (("lookahead", "margin"), ("lookahead", "threshold"), ("dual", "margin")):
        contract.test_pair_is_batch_invariant_or_refused(models, "llada", cache, rule)
        contract.test_static_path_equals_eager_or_is_refused(models, "llada", cache, rule)


def test_one_yaml_each_makes_them_config_options(tmp_path):
    """``run.py cache=lookahead decoding=margin`` with the two yamls on Hydra's search path."""
    conf = tmp_path / "conf"
    for rel, text in YAMLS.items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(text)
    proc = run_cli(["cache=lookahead", "decoding=margin", "decoding.margin=0.2", "model=fixture_llada_tiny",
                    "logger=none", "n_samples=2", "batch_size=2", "gen_length=32", "num_threads=1",
                    "progress=false", "timing.repeats=1", f"sweeps_dir={tmp_path / 'sweeps'}",
                    f"hydra.searchpath=[file://{conf}]"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    res = json.loads(next((tmp_path / "sweeps").glob("*/*/results.json")).read_text())
    assert res["status"] == "ok"
    assert res["config"]["cache"] == {"_target_": "test_adding.Lookahead", "name": "lookahead", "lookahead": 8}
    assert res["config"]["decoding"]["margin"] == 0.2 and res["metrics"]["nfe_mean"] > 0
