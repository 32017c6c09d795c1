"""The GPU check script's code path, shrunk to a tiny model on the CPU (the real run needs a GPU)."""
import json

import pytest
import torch

from dllm_bench import gpu_check


def test_gpu_check_runs_on_cpu_with_a_tiny_shape(tmp_path):
    out = tmp_path / "check.json"
    gpu_check.main(["--device", "cpu", "--preset", "llada-tiny", "--batches", "1,2", "--prompt-length", "16",
                    "--gen-length", "16", "--block-length", "8", "--repeats", "2", "--profile", "--variants", "eager,graphs", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["notes"] == []
    assert report["tokens_equal_eager"] == {"graphs": {"none": True, "prefix": True, "dual": True}}
    assert report["batch_invariant_eager"] == {"none": True, "prefix": True, "dual": True}
    assert [t["batch_size"] for t in report["timings"]] == [1, 1, 2, 2]
    for t in report["timings"]:
        assert [r["cache"] for r in t["results"]] == ["none", "prefix", "dual"]
        assert all(r["step_ms"] > 0 for r in t["results"])
    assert "tokens_per_s" in report["timings"][0]["results"][0]
    assert [p["cache"] for p in report["kernel_profile"]] == ["dual", "prefix"]
    for p in report["kernel_profile"]:
        assert p["kernels_per_step"] > 0 and 0 < p["top"][0]["ms_per_step"] <= p["kernel_ms_per_step"]


def test_cuda_request_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_check.main(["--device", "cuda"])


def test_unknown_variant_is_a_one_line_error():
    with pytest.raises(SystemExit, match="'graph'"):
        gpu_check.main(["--device", "cpu", "--variants", "eager,graph"])
