"""Jobs under both evaluation protocols (the adapter's code path), and one cell run in two shards:
the same samples and scores as the unsharded run, merged back into one cell by the analysis."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, compose, needs_fixtures, run_cli
from dllm_bench import generate, load_model
from dllm_bench.config import ConfigError
from dllm_bench.job import run_job
from dllm_bench.tasks.protocol import EvalProtocol
from dllm_bench.tasks.tokens import stop_token_ids
from dllm_bench.tokenizer import build_tokenizer
from fixture_paths import DREAM_TINY, ROOT

pytestmark = needs_fixtures


def _rows(job_dir):
    return [json.loads(line) for line in (job_dir / "samples.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("protocol", ["clean", "reference"])
def test_job_outputs_follow_the_protocol(tmp_path, protocol):
    """The job encodes and post-processes through EvalProtocol (Dream: the reference adds its BOS)."""
    cfg = compose(["model=fixture_dream_tiny", f"protocol={protocol}", "n_samples=3", "batch_size=3"])
    res = run_job(cfg, tmp_path / "s" / "j", ROOT)
    assert res["status"] == "ok" and res["config"]["protocol"] == protocol
    model, tok = load_model(DREAM_TINY), build_tokenizer()
    proto = EvalProtocol(protocol, "dream", instruct=False)
    rows = _rows(tmp_path / "s" / "j")
    for r in rows:
        ids = proto.encode(tok, r["prompt"], chat=False)
        assert (ids[0] == tok.bos_token_id) == (protocol == "reference")
        out = generate(model, [torch.tensor(ids)], gen_length=32, block_length=16, steps=32, cache="dual",
                       decoding="threshold", threshold=0.9).tokens[0]
        assert (r["output"], r["n_generated_tokens"]) == proto.postprocess(out, tok, stop_token_ids(tok, 2), ["\n"])


@pytest.mark.parametrize("overrides, message", [
    (["shard=2/2"], "shard='2/2' must be 'i/n' with 0 <= i < n"),
    (["shard=half"], "shard='half' must be 'i/n'"),
    (["shard=0/3", "n_samples=2"], "shard=0/3 splits n_samples=2 into more parts than samples"),
    (["protocol=paper"], "unknown protocol 'paper'"),
])
def test_bad_shard_or_protocol_stops_before_anything_is_written(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_job(compose(overrides), tmp_path / "s" / "j", ROOT)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_two_shards_give_the_unsharded_samples_and_scores(tmp_path):
    from analysis import load_sweep

    cell = [*TINY, "model=llada_tiny_arith", "gen_length=64", "n_samples=3", "batch_size=2", f"sweeps_dir={tmp_path}",
            "measure.agreement=true"]
    whole = run_cli([*cell, "sweep_name=whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    shards = run_cli(["-m", *cell, "sweep_name=sharded", "shard=0/2,1/2"], tmp_path)
    assert shards.returncode == 0, shards.stderr[-3000:]
    one = _rows(next((tmp_path / "whole").glob("*/results.json")).parent)
    parts = [_rows(next((tmp_path / "sharded").glob(f"*shard={i}_2"))) for i in (0, 1)]
    assert [len(p) for p in parts] == [1, 2]  # contiguous parts; batches differ from the unsharded run's
    keys = ("id", "prompt", "output", "extracted", "correct", "nfe", "n_generated_tokens")
    assert [{k: r[k] for k in keys} for r in parts[0] + parts[1]] == [{k: r[k] for k in keys} for r in one]
    a, b = load_sweep(tmp_path / "whole"), load_sweep(tmp_path / "sharded")
    assert len(b) == 1 and b.loc[0, "status"] == "ok" and b.loc[0, "shard"] is None
    assert [d.rsplit(",", 1)[-1] for d in b.loc[0, "job_dir"].split(" + ")] == ["shard=0_2", "shard=1_2"]
    for m in ("accuracy", "n_samples", "generated_tokens", "nfe_mean", "tokens_per_forward", "cache_refreshes_mean",
              "layer_tokens_computed", "compute_skipped", "agreement_n", "agreement_extra_forwards", "agreement_tokens"):
        assert b.loc[0, f"metrics.{m}"] == pytest.approx(a.loc[0, f"metrics.{m}"]), m
    assert a.loc[0, "metrics.accuracy"] > 0  # the trained tiny model: a score that can differ
    assert b.loc[0, "metrics.latency_s_median"] > 0 and b.loc[0, "metrics.tokens_per_s"] > 0
    # a cell with a shard missing stays one row, not an ok partial cell
    next((tmp_path / "sharded").glob("*shard=1_2/results.json")).unlink()
    partial = load_sweep(tmp_path / "sharded")
    assert len(partial) == 1 and partial.loc[0, "status"] == "missing" and "1/2" in partial.loc[0, "error"]
