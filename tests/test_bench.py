"""The benchmark CLI: a table and a JSON line on a fixture model; bad input fails in one line, early."""
import json

import pytest
import torch

from dllm_bench import bench

from fixture_paths import LLADA_TINY

SMALL = ["--prompt-length", "16", "--gen-length", "16", "--block-length", "8", "--repeats", "2", "--warmup", "1"]


@pytest.mark.parametrize("graphs", ["off", "on"])
def test_bench_prints_a_row_per_cache_mode_and_json_last(capsys, graphs):
    assert bench.main(["--model", str(LLADA_TINY), "--graphs", graphs, *SMALL]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["graphs"] == graphs and out["device"] == "cpu" and out["weights_bytes"] > 0
    assert [r["cache"] for r in out["results"]] == ["none", "prefix", "dual"]
    for r in out["results"]:
        assert r["step_ms"] > 0 and r["full_forward_ms"] > 0 and 1 <= r["nfe"] <= 16
        assert r["tokens_per_s"] > 0 and (r["kv_cache_bytes"] == 0) == (r["cache"] == "none")
    assert any(line.startswith("cache | step_ms") for line in lines)


@pytest.mark.parametrize("argv, match", [
    (["--caches", "none,duel"], "'duel'"),
    (["--gen-length", "20", "--block-length", "8"], "20"),
    (["--batch-size", "0"], "batch-size"),
    (["--dtype", "float13"], "float13"),
    (["--caches", "none,dkv_greedy", "--decoding", "fixed"], "dkv_greedy.*decoding=random_order"),
])
def test_bad_options_are_one_line_errors(argv, match):
    with pytest.raises((SystemExit, ValueError), match=match):
        bench.main(["--model", str(LLADA_TINY), *argv])


def test_a_pair_the_model_family_cannot_run_is_refused_before_building_the_model(monkeypatch):
    monkeypatch.setattr(bench, "build", lambda *a: pytest.fail("built the model before refusing the pair"))
    with pytest.raises(SystemExit, match="decoding 'wino' is defined for llada models, not dream"):
        bench.main(["--random-weights", "dream-7b", "--caches", "dual", "--decoding", "wino"])


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        bench.main(["--random-weights", "llada-tiny", "--device", "cuda"])


def test_too_large_is_refused_with_the_bytes_before_allocating():
    with pytest.raises(SystemExit, match=r"needs about [\d.]+ GiB .* only [\d.]+ GiB available"):
        bench.main(["--random-weights", "llada-8b", "--batch-size", "4096", "--prompt-length", "1024"])


def test_interleave_gives_medians_and_quartiles_per_mode(capsys):
    argv = ["--model", str(LLADA_TINY), "--interleave", "--fused-projections", "off", *SMALL[:-4],
            "--repeats", "3", "--warmup", "1"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["interleave"] and out["fused_projections"] == "off" and out["repeats"] == 3
    assert out["machine_load"]["cpus"] >= 1 and out["machine_load"]["wall_s"] > 0
    assert [r["cache"] for r in out["results"]] == ["none", "prefix", "dual"]
    for r in out["results"]:
        q1, q3 = r["step_ms_iqr"]
        assert 0 < q1 <= r["step_ms"] <= q3
        q1, q3 = r["e2e_s_iqr"]
        assert 0 < q1 <= r["e2e_s"] <= q3 and 1 <= r["nfe"] <= 16
        assert r["full_forward_ms_iqr"][0] <= r["full_forward_ms"] <= r["full_forward_ms_iqr"][1]
