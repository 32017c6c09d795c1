"""Agreement with one-token-per-step decoding (against the golden fixtures and the degenerate
threshold), decoding replays (files, records, a re-masking rule defined here) and the report's
figures from them (docs/visualising.md)."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import pytest
import torch

from conftest import compose, needs_fixtures
from dllm_bench import generate, load_model
from dllm_bench.decoding import CACHES, RULES, Decision, Plan, Rule, StepInfo
from dllm_bench.decoding.rules import top_k
from dllm_bench.job import run_job
from dllm_bench.metrics import JobView, run_extra_pass
from dllm_bench.metrics.agreement import Agreement, compare
from dllm_bench.metrics.replays import Replays
from dllm_bench.tasks import Score
from dllm_bench.tokenizer import build_tokenizer
from fixture_paths import DREAM_TINY, LLADA_TINY, ROOT

pytestmark = [needs_fixtures, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def llada():
    return load_model(LLADA_TINY)


def _tokens_scorer(indices, token_rows):
    """A scorer for token-level tests: the text is the ids, the 'answer' the last id."""
    return [(" ".join(map(str, ids)), Score(extracted=ids[-1], correct=False)) for ids in token_rows]


def test_compare():
    assert compare([1, 2, 3, 4], [1, 2, 3, 4]) == {"agreement_tokens": 1.0, "agreement_exact": True,
                                                    "agreement_first_diff": None}
    assert compare([1, 2, 3, 4], [1, 9, 3, 8]) == {"agreement_tokens": 0.5, "agreement_exact": False,
                                                    "agreement_first_diff": 1}
    with pytest.raises(ValueError, match="different lengths"):
        compare([1], [1, 2])


def test_agreement_is_one_when_threshold_takes_one_token_per_step(tmp_path, llada):
    """threshold=1.0 on a model that never reaches confidence 1 unmasks only the top-1 each step:
    the same decode as fixed at one token per step, so every sample agrees exactly."""
    res = run_job(compose(["decoding=threshold", "threshold=1.0", "measure.agreement=true", "timing.repeats=1"]),
                  tmp_path / "s" / "j", ROOT)
    m = res["metrics"]
    assert m["agreement_n"] == 2 and m["agreement_tokens"] == 1.0 and m["agreement_exact"] == 1.0
    assert m["agreement_answer"] == 1.0 and m["agreement_first_diff_mean"] is None
    assert m["agreement_extra_forwards"] == 2 * 32 and m["agreement_extra_s"] > 0  # 32 tokens, one per forward
    rows = [json.loads(line) for line in (tmp_path / "s" / "j" / "samples.jsonl").read_text().splitlines()]
    assert all(r["sequential_output"] == r["output"] and r["sequential_nfe"] == 32 for r in rows)
    # ... and it really is one token per step: check the engine's own per-step view
    from dllm_bench.tokenizer import build_tokenizer as tk
    from dllm_bench.tasks.arithmetic import ArithmeticTask

    steps, top = [], []
    for s in ArithmeticTask().samples(2):
        out = generate(llada, [tk()(s.prompt)["input_ids"]], gen_length=32, block_length=16, cache="dual",
                       decoding="threshold", threshold=1.0,
                       on_step=lambda i: (steps.append(int(i.accepted.sum())), top.append(float(i.confidence.max()))))
        assert out.nfe == 32
    assert set(steps) == {1} and max(top) < 1.0


def _golden_llada_threshold_cases():
    golden = json.loads((LLADA_TINY / "golden.json").read_text())
    return [c for c in golden["cases"] if c.get("threshold") is not None]


def test_agreement_below_one_where_golden_threshold_tokens_differ_from_sequential(llada):
    """On the golden cases decoded with a threshold, the metric's parallel tokens are the golden
    ones; its token agreement is their agreement with an independent one-token-per-step decode,
    and below 1 wherever the golden tokens differ from it."""
    below = 0
    for case in _golden_llada_threshold_cases():
        engine = dict(gen_length=case["gen_length"], block_length=case["block_length"], steps=case["steps"],
                      cache=CACHES.build(case["cache"]), decoding=RULES.build("threshold", threshold=case["threshold"]))
        prompt = torch.tensor(case["prompt_ids"])
        main = generate(llada, [prompt], **engine)
        assert main.tokens[0].tolist() == case["expected_tokens"], case["id"]
        metric = Agreement(llada)
        rows = [{"id": case["id"], "extracted": case["expected_tokens"][-1]}]
        metric.on_batch(main, rows)
        run_extra_pass([metric], llada, [prompt], engine, generate)
        metric.finish(JobView(rows, None, "t", _tokens_scorer))
        seq = generate(llada, [prompt], gen_length=case["gen_length"], block_length=case["block_length"],
                       steps=case["gen_length"], cache=case["cache"], decoding="fixed").tokens[0].tolist()
        same = [a == b for a, b in zip(case["expected_tokens"], seq)]
        assert rows[0]["agreement_tokens"] == pytest.approx(sum(same) / len(same)), case["id"]
        assert rows[0]["agreement_exact"] == all(same)
        assert rows[0]["agreement_first_diff"] == (None if all(same) else same.index(False))
        assert rows[0]["agreement_answer"] == (seq[-1] == case["expected_tokens"][-1])
        assert metric.forwards == metric.summary()["agreement_extra_forwards"] == case["gen_length"]
        below += not all(same)
    assert below >= 1  # some golden threshold decodes differ from sequential decoding


@RULES.register("remask_every_other")
@dataclass(kw_only=True)
class RemaskEveryOther(Rule):
    """A test rule that re-masks: each step unmasks the two most confident candidates, and on odd
    steps (up to ``budget`` times per block) turns the block's first decoded position back to mask."""

    budget: int = 2
    supports_graphs = False
    example_args = {"budget": 2}

    def begin_block(self, state):
        self.left = torch.full((state.batch,), self.budget, device=state.device)

    def select(self, pred, cand, state):
        unmask = top_k(pred.conf, torch.full_like(self.left, 2))
        decoded = state.x[:, state.start:state.end] != state.mask_id  # (B, W): targets are the block
        first = decoded & (decoded.long().cumsum(-1) == 1)
        go = (self.left > 0) & decoded.any(-1) & torch.tensor(state.step % 2 == 1, device=state.device)
        self.left = self.left - go.long()
        return Decision(unmask, first & go[:, None])


def _replay(model, prompt, engine, n=1):
    metric = Replays(model, samples=n)
    run_extra_pass([metric], model, [prompt], engine, generate)
    metric.finish(JobView([{"id": "p0"}], build_tokenizer(), "test cell", _tokens_scorer))
    return metric


def _check_files(files: dict, record: dict) -> None:
    from PIL import Image

    stem = "replays/sample-0"
    assert files[f"{stem}.png"][:8] == b"\x89PNG\r\n\x1a\n" and len(files[f"{stem}.png"]) > 5000
    gif = Image.open(io.BytesIO(files[f"{stem}.gif"]))
    assert gif.format == "GIF" and gif.n_frames == record["nfe"] + 1  # before the first forward, then each
    page = files[f"{stem}.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.split("<script", 1)[0].split("<style", 1)[1]
    assert json.loads(files[f"{stem}.json"]) == record


@pytest.mark.parametrize("path,cache,rule,args", [
    (LLADA_TINY, "dual", "remask_every_other", {}),
    (LLADA_TINY, "prefix", "threshold", {"threshold": 0.6}),
    (DREAM_TINY, "none", "fixed", {"steps": 16}),
])
def test_replay_records_every_forward_and_draws_files(path, cache, rule, args):
    model = load_model(path)
    engine = dict(gen_length=16, block_length=8, cache=CACHES.build(cache), decoding=rule, **args)
    prompt = torch.arange(5, 17)
    metric = _replay(model, prompt, engine)
    rec = json.loads(metric.files()["replays/sample-0.json"])
    ref = generate(model, [prompt], **engine)
    assert rec["final"] == ref.tokens[0].tolist() and rec["nfe"] == ref.nfe == len(rec["steps"])
    assert rec["blocks"] == [[0, 8], [8, 16]]
    n_remasked = sum(len(s["remasked"]) for s in rec["steps"])
    assert n_remasked == ref.remasked_per_row[0] and (n_remasked > 0) == (rule == "remask_every_other")
    # replaying the events gives the final tokens; every position decoded once more than re-masked
    tokens = [None] * 16
    for s in rec["steps"]:
        for p in s["remasked"]:
            tokens[p] = None
        for p, t, c in s["unmasked"]:
            assert tokens[p] is None and math.isfinite(c)  # the rule's score (Dream's fixed: -entropy)
            tokens[p] = t
    assert tokens == rec["final"]
    # fed positions: the refresh feeds everything, the prompt included; later steps what the cache says
    for s in rec["steps"]:
        lo = 8 * s["block"]
        if s["step"] == 0 or cache == "none":
            assert s["fed"] == [[0, 16]] and s["prompt_fed"] == 12
        else:
            assert s["fed"] == [[lo, lo + 8 if cache == "dual" else 16]] and s["prompt_fed"] == 0
    _check_files(metric.files(), rec)
    assert metric.result()["samples"][0]["remasked"] == n_remasked


@pytest.mark.parametrize("cache", list(CACHES))
def test_replay_works_for_every_cache(llada, cache):
    """Every registered cache, with a re-masking rule (WINO where registered, else the test's) or,
    where the cache refuses it, the first rule it takes: the record replays to the engine's tokens,
    its re-masks are the engine's, and the files exist."""
    prompt, ref = torch.arange(5, 17), None
    for name in ("wino", "remask_every_other", "random_order", "threshold"):
        if name not in RULES:
            continue
        engine = dict(gen_length=16, block_length=8, steps=16, decoding=RULES.build(name, **RULES[name].example_args),
                      cache=CACHES.build(cache, **CACHES[cache].example_args))
        try:
            ref = generate(llada, [prompt], **engine)
            break
        except ValueError:  # a pairing the engine refuses
            continue
    assert ref is not None
    metric = _replay(llada, prompt, engine)
    rec = json.loads(metric.files()["replays/sample-0.json"])
    assert rec["final"] == ref.tokens[0].tolist() and rec["nfe"] == ref.nfe
    assert sum(len(s["remasked"]) for s in rec["steps"]) == ref.remasked_per_row[0]
    assert all(s["fed"] or s["prompt_fed"] for s in rec["steps"])  # every forward fed something
    _check_files(metric.files(), rec)


def test_replay_of_an_index_plan_records_the_fed_positions(llada):
    """A cache whose plan is an index set (window None): the fed positions are that set."""
    metric = Replays(llada, samples=1)
    metric.begin_sample(0, [1, 2, 3])
    x = torch.full((1, 11), 383)
    idx = torch.tensor([[0, 4, 5, 9, 10]])
    valid = torch.tensor([[True, True, True, True, False]])
    info = StepInfo(block=0, step=1, block_start=3, block_end=7, window=None, x=x,
                    accepted=torch.zeros(1, 4, dtype=torch.bool), confidence=torch.zeros(1, 4), targets=(3, 7),
                    plan=Plan(index=idx, valid=valid))
    metric.on_step(info)
    assert metric._cur["steps"][0]["fed"] == [[1, 3], [6, 7]] and metric._cur["steps"][0]["prompt_fed"] == 1


def test_job_writes_replays_and_the_report_shows_agreement_and_replays(tmp_path):
    from analysis.report import build_report

    sweep = tmp_path / "s"
    for thr in (0.5, 0.9):
        run_job(compose([f"threshold={thr}", "measure.agreement=true", "measure.replays=2", "timing.repeats=1"]),
                sweep / f"t{thr}", ROOT)
    job = sweep / "t0.5"
    res = json.loads((job / "results.json").read_text())
    entries = res["replays"]["samples"]
    assert [e["index"] for e in entries] == [0, 1] and res["replays"]["n_samples"] == 2
    for e in entries:
        for kind, rel in e["files"].items():
            assert (job / rel).is_file() and (job / rel).stat().st_size > 500, rel
    rows = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    m = res["metrics"]
    assert m["agreement_tokens"] == pytest.approx(sum(r["agreement_tokens"] for r in rows) / len(rows))
    assert m["agreement_answer"] == sum(r["agreement_answer"] for r in rows) / len(rows)
    assert m["nfe_mean"] == sum(r["nfe"] for r in rows) / len(rows)  # the extra passes are not counted
    report = build_report([sweep])
    figs = {r.name: r for r in report.figures}
    assert figs["agreement"].skipped is None and figs["replay_gallery"].skipped is None
    assert len(figs["replay_gallery"].images) == 4  # 2 jobs x 2 samples
    page = report.html.read_text()
    assert "agreement_" in page and page.count("step-by-step page</a>") == 4 and "animation</a>" in page
    for png, _ in figs["replay_gallery"].images:
        assert png.with_suffix(".html").is_file() and png.with_suffix(".gif").is_file()


@pytest.mark.parametrize("bad,msg", [
    (["measure.replays=-1"], "measure.replays=-1 must be >= 0"),
    (["measure.agreement=true", "measure.agreement_samples=0"], "measure.agreement_samples=0 must be >= 1"),
])
def test_bad_measure_values_fail_before_anything_runs(tmp_path, bad, msg):
    from dllm_bench.config import ConfigError

    with pytest.raises(ConfigError, match=msg):
        run_job(compose(bad), tmp_path / "s" / "j", ROOT)
    assert not (tmp_path / "s" / "j").exists()


def test_replays_are_logged_to_wandb_as_media(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    job = tmp_path / "s" / "j"
    run_job(compose(["logger=wandb", "measure.replays=1", "timing.repeats=1", "n_samples=1", "batch_size=1"]), job, ROOT)
    from test_wandb import wait_for_run_file

    run_dir = wait_for_run_file(job).parent
    media = {p.relative_to(run_dir / "files" / "media").parts[0] + p.suffix
             for p in (run_dir / "files" / "media").rglob("replays/sample-0/*.*")}
    assert media == {"images.png", "videos.gif", "html.html"}, media
