"""Token-exact parity with the reference implementations, on every golden file of the fixtures.

Each case goes through ``dllm_bench.replay`` (the same code as ``python -m dllm_bench.replay``):
Fast-dLLM's ``<checkpoint>/golden.json`` and each published method's ``methods/<method>.json``,
mapped to our plugins by the adapter the method registered. A new method's golden file needs no
test code here: its file is picked up, and fails until a plugin replays it.
"""
import json

import pytest
import torch

from dllm_bench import load_model, replay
from fixture_paths import DREAM_TINY, FIXTURES, LLADA_TINY

CHECKPOINTS = {"llada_tiny": LLADA_TINY, "dream_tiny": DREAM_TINY}
GOLDEN_FILES = sorted(FIXTURES.glob("*/golden.json")) + sorted(FIXTURES.glob("methods/*.json"))


def _golden(name):
    return json.loads((CHECKPOINTS[name] / "golden.json").read_text())


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def model_and_golden(request):
    return load_model(CHECKPOINTS[request.param], dtype=torch.float32), _golden(request.param)


def test_full_forward_matches_reference_logits(model_and_golden):
    model, golden = model_and_golden
    ids = torch.tensor(golden["forward"]["input_ids"])
    ref = torch.tensor(golden["forward"]["logits_fp64"], dtype=torch.float64)
    out = model(ids).double()
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


def _cases():
    for path in GOLDEN_FILES:
        data = replay.load(path)
        for case in data["cases"]:
            name = case.get("checkpoint") or data["checkpoint"]
            yield pytest.param(path, name, case, id=f"{path.parent.name}/{path.stem}:{case['id']}")


_MODELS = {}


@pytest.mark.parametrize("path,checkpoint,case", list(_cases()))
def test_golden_case(path, checkpoint, case):
    if checkpoint not in _MODELS:
        _MODELS[checkpoint] = load_model(FIXTURES / checkpoint, dtype=torch.float32)
    adapter = replay.adapter_for(replay.load(path), path)
    result = replay.run_case(_MODELS[checkpoint], case, adapter)
    assert result.ok, result.why


def test_replay_cli_counts_and_exit_status(tmp_path, capsys):
    path = LLADA_TINY / "golden.json"
    assert replay.main([str(path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "42/42 cases passed"
    bad = replay.load(path)
    bad["cases"] = bad["cases"][:3]
    bad["cases"][1] = dict(bad["cases"][1], expected_tokens=[0] * len(bad["cases"][1]["expected_tokens"]))
    (tmp_path / "llada_tiny").symlink_to(LLADA_TINY)
    (tmp_path / "methods").mkdir()
    f = tmp_path / "methods" / "bad.json"
    f.write_text(json.dumps(bad))
    assert replay.main([str(f), "--checkpoints", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "2/3 cases passed" and lines[0].startswith(f"FAIL {bad['cases'][1]['id']}: row 0 tokens differ")
