"""The GPU check script's code path, shrunk to tiny models on the CPU (the real run needs a GPU)."""
import json

import pytest
import torch

from dllm_bench import gpu_check
from dllm_bench.decoding import CACHES, RULES
from fixture_paths import FIXTURES

TINY = ["--device", "cpu", "--presets", "llada-tiny,dream-tiny", "--batches", "1,2", "--prompt-length", "16",
        "--gen-length", "16", "--block-length", "8", "--repeats", "2", "--methods-prompt-length", "12",
        "--methods-gen-length", "8"]


def _few_goldens(tmp_path, n=4):
    """The fixtures with ``n`` cases per golden file (one method file too), checkpoints linked."""
    root = tmp_path / "fixtures"
    for path in sorted(FIXTURES.glob("*/golden.json")) + sorted(FIXTURES.glob("methods/*.json"))[:1]:
        data = json.loads(path.read_text())
        data["cases"] = data["cases"][:: max(1, len(data["cases"]) // n)][:n]
        (root / path.parent.name).mkdir(parents=True, exist_ok=True)
        (root / path.parent.name / path.name).write_text(json.dumps(data))
        if path.parent.name != "methods":
            for f in path.parent.iterdir():
                if f.name != path.name:
                    (root / path.parent.name / f.name).symlink_to(f)
    return root


def test_gpu_check_runs_on_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main([*TINY, "--profile", "--variants", "graphs+split,graphs", "--fixtures", str(_few_goldens(tmp_path)),
                    "--out", str(out)])
    report = json.loads(out.read_text())
    assert all("no registered plugin replays it" in n for n in report["notes"]), report["notes"]
    for name in ("golden_eager", "golden_graphs"):  # split variants are not golden-checked
        for fixture in ("llada_tiny", "dream_tiny"):
            assert report[name][fixture] == {"match": 4, "cases": 4}, (name, fixture)
    assert "golden_graphs+split" not in report
    assert report["tokens_equal_eager"] == {v: {"none": True, "prefix": True, "dual": True} for v in ("graphs+split", "graphs")}
    assert report["batch_invariant_eager"] == {"none": True, "prefix": True, "dual": True}
    assert [(t["model"], t["batch_size"], t["variant"]) for t in report["timings"]] == [
        (m, b, v) for m in ("llada-tiny", "dream-tiny") for b in (1, 2) for v in ("graphs+split", "graphs")]
    for t in report["timings"]:
        assert t["fused_projections"] == ("off" if t["variant"] == "graphs+split" else "on")
        assert [r["cache"] for r in t["results"]] == ["prefix", "dual"]
        assert all(r["step_ms"] > 0 and r["full_forward_ms"] > 0 for r in t["results"])
    assert "tokens_per_s" in report["timings"][0]["results"][0]
    assert [(p["cache"], p["batch_size"], p["variant"]) for p in report["kernel_profile"]] == [
        ("dual", 1, "graphs+split"), ("prefix", 1, "graphs+split"), ("dual", 1, "graphs"), ("prefix", 1, "graphs"),
        ("dual", 2, "graphs")]
    for p in report["kernel_profile"]:
        assert p["kernels_per_step"] > 0 and 0 < p["top"][0]["ms_per_step"] <= p["kernel_ms_per_step"]
    assert [c["batch_size"] for c in report["confidence"]] == [1, 2] and report["confidence"][0]["eager_ms"] > 0
    # the method table: every registered cache x rule on both presets, run or refused in one line
    rows = {(r["model"], r["cache"], r["decoding"]): r for r in report["methods"]}
    assert set(rows) == {(m, c, r) for m in ("llada-tiny", "dream-tiny") for c in CACHES for r in RULES}
    for row in rows.values():
        if "refused" in row:
            assert "\n" not in row["refused"]
            continue
        assert row["nfe"] >= 1 and row["ms_per_forward"] > 0 and row["tokens_per_s"] > 0
        assert row["batch_invariant_bf16"] is True  # float32 on CPU: the engine is batch-invariant
        assert row["graphs"] == (row["graphs_unsupported"] is None)
    assert rows[("llada-tiny", "dual", "threshold")]["graphs"] is True
    assert set(report["section_s"]) >= {"golden", "agreement", "timings llada-tiny", "timings dream-tiny",
                                        "kernel_profile", "confidence", "methods"}


def test_budget_skips_sections_with_a_note(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main([*TINY, "--variants", "graphs", "--budget-s", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    assert "timings" not in report and "methods" not in report
    assert [n for n in report["notes"] if n.startswith("skipped")] == [
        f"skipped {s}: time budget" for s in ("agreement", "timings llada-tiny", "timings dream-tiny", "confidence", "methods")]


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_check.main(["--device", "cuda"])


@pytest.mark.parametrize("variants, match", [("eager,graph", "'graph'"), ("graphs+graphs", "graphs"), ("", "no variant")])
def test_unknown_variant_is_a_one_line_error(variants, match):
    with pytest.raises(SystemExit, match=match):
        gpu_check.main(["--device", "cpu", "--variants", variants])


def test_unknown_preset_is_a_one_line_error():
    with pytest.raises(SystemExit, match="'llada-9b'"):
        gpu_check.main(["--device", "cpu", "--presets", "llada-tiny,llada-9b"])


def test_floors_count_the_fed_tokens_of_each_step():
    from dllm_bench import bench
    from dllm_bench.models.loading import family_of

    cfg = family_of(bench.PRESETS["llada-8b"]).parse_config(bench.PRESETS["llada-8b"])
    timing = {"batch_size": 32, "prompt_length": 768, "gen_length": 256, "block_length": 32, "bandwidth_floor_ms": 4.0,
              "results": [{"cache": "prefix", "step_ms": 100.0}, {"cache": "dual", "step_ms": 30.0}]}
    gpu_check.add_floors(timing, cfg, tflops=750.0)
    prefix, dual = timing["results"]
    assert dual["compute_floor_ms"] < prefix["compute_floor_ms"] < timing["full_forward_flop_floor_ms"]
    assert 0.85 < timing["full_forward_flop_floor_ms"] / timing["full_forward_compute_floor_ms"] < 1
    # a batch-32 dual step feeds 1024 tokens: ~2 * 7e9 * 1024 FLOPs, about 20 ms at 750 TFLOP/s
    assert 18 < dual["compute_floor_ms"] < 24 and dual["floor_ms"] == dual["compute_floor_ms"]
    assert dual["ratio_to_floor_ms"] == round(30.0 / dual["floor_ms"], 2)
    one = dict(timing, batch_size=1, results=[{"cache": "dual", "step_ms": 6.0}])
    gpu_check.add_floors(one, cfg, tflops=750.0)
    assert one["results"][0]["floor_ms"] == 4.0  # batch 1: the weights' bandwidth is the floor


def test_sections_runs_only_the_named_ones(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main([*TINY, "--presets", "llada-tiny", "--variants", "graphs", "--sections", "confidence,methods",
                    "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["section_s"]) == {"confidence", "methods"} and "timings" not in report
    assert {r["model"] for r in report["methods"]} == {"llada-tiny"}
    with pytest.raises(SystemExit, match="'method'"):
        gpu_check.main(["--device", "cpu", "--sections", "method"])


def test_method_rows_for_a_plugin_without_static_path_and_a_refused_pair():
    """A registered rule is picked up by being registered: run eager where it has no static path,
    listed as refused (one line) on a family it does not support."""
    from dataclasses import dataclass

    from dllm_bench import bench
    from dllm_bench.decoding.rules.threshold import Threshold
    from dllm_bench.method_table import method_row, ordered_pairs
    from dllm_bench.models import build_model

    @RULES.register("dream_only_eager")
    @dataclass(kw_only=True)
    class DreamOnlyEager(Threshold):
        example_args = {"threshold": 0.5}
        supports_graphs = False
        families = ("dream",)

    try:
        assert ("dual", "dream_only_eager") in ordered_pairs()
        shape = dict(gen_length=8, block_length=4, steps=8)
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(0, 300, (n,), generator=g) for n in (10, 6)]
        rows = {}
        for preset in ("llada-tiny", "dream-tiny"):
            model = build_model(bench.PRESETS[preset], seed=0)
            rows[preset] = method_row(model, preset, "dual", "dream_only_eager", prompts, shape, True, torch.device("cpu"))
        assert "llada" in rows["llada-tiny"]["refused"] and "\n" not in rows["llada-tiny"]["refused"]
        dream = rows["dream-tiny"]
        assert dream["graphs"] is False and "no static-shape step path" in dream["graphs_unsupported"]
        assert dream["args"] == {"threshold": 0.5} and 1 <= dream["nfe"] <= 8 and dream["batch_invariant_bf16"] is True
    finally:
        RULES.unregister("dream_only_eager")
