"""An end-to-end GSM8K job on a fixture model: lm-eval prompts from the offline data, the engine,
the harness's answer extraction and scoring, and per-sample outputs on disk."""
from __future__ import annotations

import json

import pytest

from conftest import compose, needs_fixtures
from dllm_bench.job import run_job
from fixture_paths import DATA, ROOT

pytestmark = [needs_fixtures, pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="../shared/data missing")]


def test_gsm8k_job_writes_scored_samples(tmp_path):
    cfg = compose(["task=gsm8k", f"task.data_dir={DATA / 'gsm8k'}", "task.num_fewshot=1", "n_samples=2",
                   "batch_size=2", "gen_length=16", "block_length=8", "cache=prefix", "decoding=threshold",
                   "threshold=0.9"])
    job = tmp_path / "sweep" / "gsm8k"
    res = run_job(cfg, job, ROOT)
    assert res["status"] == "ok", res["error"]
    rows = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["gsm8k/0", "gsm8k/1"]
    # lm-eval's 1-shot format: the few-shot example, then the test question, then "Answer:"
    assert rows[0]["prompt"].count("Question:") == 2 and rows[0]["prompt"].rstrip().endswith("Answer:")
    assert rows[0]["target"].endswith("#### 18")
    assert all(isinstance(r["correct"], bool) for r in rows)  # random weights: scored, not right
    assert res["metrics"]["accuracy"] == sum(r["correct"] for r in rows) / 2
    assert all(r["nfe"] >= 2 for r in rows)  # two blocks, one refresh each at least
