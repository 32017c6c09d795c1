"""Bad input: a one-line error naming the bad value, raised before any forward."""
import json
import shutil

import pytest
import torch

from dllm_bench import generate, load_model
from fixture_paths import LLADA_TINY

PROMPT = torch.tensor([[1, 2, 3, 4]])
OK = dict(gen_length=16, block_length=8, steps=8, cache="dual", decoding="fixed")


@pytest.fixture(scope="module")
def model(counted_llada):
    return counted_llada


@pytest.mark.parametrize("override,needle", [
    ({"block_length": 5}, "block_length 5"),
    ({"steps": 9}, "steps 9"),
    ({"decoding": "threshold", "threshold": 0.0}, "0.0"),
    ({"decoding": "threshold", "threshold": 1.5}, "1.5"),
    ({"decoding": "threshold"}, "threshold"),
    ({"decoding": "factor", "factor": 0}, "factor"),
    ({"decoding": "factor", "factor": -1.0}, "-1.0"),
    ({"cache": "dul"}, "Did you mean: dual"),
    ({"decoding": "treshold"}, "'treshold'"),
    ({"remasking": "lowest"}, "'lowest'"),
    ({"gen_length": 5000, "block_length": 8, "steps": 625}, "4096"),
    ({"gen_length": 0}, "gen_length"),
    ({"threshold": 0.9}, "threshold=0.9"),
])
def test_bad_generate_arguments(model, override, needle):
    before = len(model.forward_calls)
    with pytest.raises(ValueError) as err:
        generate(model, PROMPT, **{**OK, **override})
    msg = str(err.value)
    assert needle in msg and "\n" not in msg
    assert len(model.forward_calls) == before  # nothing ran


@pytest.mark.parametrize("prompt", [torch.zeros((1, 0), dtype=torch.long), [torch.tensor([1, 2]), torch.tensor([])]])
def test_empty_prompt(model, prompt):
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, prompt, **OK)


def test_right_padding_is_rejected(model):
    with pytest.raises(ValueError, match="left padding"):
        generate(model, torch.tensor([[1, 2, 0]]), attention_mask=torch.tensor([[1, 1, 0]]), **OK)


def _copy(tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(LLADA_TINY, dst)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_model(tmp_path / "nope")


def test_missing_config(tmp_path):
    d = _copy(tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(d)


def test_missing_weights_and_bin_refused(tmp_path):
    d = _copy(tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin"):
        load_model(d)


def test_unknown_model_type(tmp_path):
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'gpt2'"):
        load_model(d)


@pytest.mark.parametrize("change,needle", [
    ("drop", "missing"), ("extra", "unexpected"), ("shape", "mis-shaped"),
])
def test_weights_that_do_not_match(tmp_path, change, needle):
    from safetensors.torch import load_file, save_file
    d = _copy(tmp_path)
    t = load_file(str(d / "model.safetensors"))
    key = "model.transformer.blocks.1.q_proj.weight"
    if change == "drop":
        del t[key]
    elif change == "extra":
        t["model.transformer.blocks.9.q_proj.weight"] = t[key].clone()
    else:
        t[key] = torch.zeros(3, 3)
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ValueError, match=needle) as err:
        load_model(d)
    assert "\n" not in str(err.value)
