"""The shipped tiny checkpoints load in their official formats and solve held-out arith problems."""
from pathlib import Path

import pytest
import torch
import yaml

from dllm_bench import load_model, load_tokenizer
from dllm_bench.tasks.arithmetic import ArithmeticTask
from dllm_bench.train import evaluate

MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
# Floors under the accuracy measured on 500 / 200 held-out problems (each model card's table), to catch
# a broken model or engine rather than to re-measure, on 50 problems: threshold 0.9 without a cache and
# with the dual cache (both models about 98-99% either way).
FLOORS = {"llada-tiny-arith": ("llada", {"none": 0.85, "dual": 0.85}),
          "dream-tiny-arith": ("dream", {"none": 0.85, "dual": 0.85})}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_model_scores_above_floor(name):
    folder = MODELS / name
    assert (folder / "config.json").exists(), f"{folder} is missing: the shipped tiny models are part of the project"
    arch, floors = FLOORS[name]
    assert (folder / "model.safetensors").stat().st_size < 20 * 2**20
    torch.set_num_threads(1)
    model, tok = load_model(folder), load_tokenizer(folder)
    assert model.config.arch == arch and model.config.mask_token_id == tok.mask_token_id
    task_cfg = yaml.safe_load((folder / "train_config.yaml").read_text())["task"]
    task = ArithmeticTask(**task_cfg, split="heldout", seed=0)
    for cache, floor in floors.items():
        res = evaluate(model, tok, task, task.samples(50), batch_size=50, gen_length=64, block_length=16,
                       steps=64, cache=cache, decoding="threshold", threshold=0.9)
        assert res["accuracy"] >= floor, (cache, res)
        assert res["nfe_mean"] < 32  # parallel decoding actually decoded several tokens per forward
