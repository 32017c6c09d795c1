"""Loading: official formats in, official formats out; sharded checkpoints; dtype; tokenizer."""
import json

import torch

from dllm_bench import load_model, save_model
from fixture_paths import DREAM_TINY, LLADA_TINY


def test_save_roundtrip_keeps_names_and_logits(tmp_path):
    for src in (LLADA_TINY, DREAM_TINY):
        model = load_model(src)
        out = save_model(model, tmp_path / src.name)
        reloaded = load_model(out)
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        assert torch.equal(model(ids), reloaded(ids))
        from safetensors import safe_open
        with safe_open(str(src / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
            assert set(a.keys()) == set(b.keys())
        raw = json.loads((out / "config.json").read_text())
        assert raw["model_type"] == json.loads((src / "config.json").read_text())["model_type"]


def test_sharded_checkpoint_with_index(tmp_path):
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(LLADA_TINY / "model.safetensors"))
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text((LLADA_TINY / "config.json").read_text())
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(d / name))
        weight_map.update({k: name for k in ks})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(load_model(d)(ids), load_model(LLADA_TINY)(ids))


def test_dtype_and_output_shape():
    model = load_model(DREAM_TINY, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    logits = model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, 384)


def test_tokenizer_loads_with_standard_classes(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from dllm_bench import load_tokenizer
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    # a custom class name (as Dream ships) must not need remote code
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
         "unk_token": "[UNK]"}))
    loaded = load_tokenizer(tmp_path)
    assert loaded("a b")["input_ids"] == [0, 1]
