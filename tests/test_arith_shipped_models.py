"""The shipped tiny checkpoints load in their official formats and solve held-out arith problems."""
from pathlib import Path

import pytest
import torch
import yaml

from dllm_bench import load_model, load_tokenizer
from dllm_bench.tasks.arithmetic import ArithmeticTask
from dllm_bench.train import evaluate

MODELS = Path(__file__).resolve().parents[1] / "assets" / "models"
# floors under the measured accuracy (README.md of each model: about 27% LLaDA, 24% Dream at
# threshold 0.9 + dual cache) and above the 10% that guessing the final digit gets, to catch a
# broken model or engine rather than to re-measure; 50 held-out problems. The models are
# undertrained (issue 5's targets are not met yet): raise these when better checkpoints ship.
FLOORS = {"llada-tiny-arith": ("llada", 0.15), "dream-tiny-arith": ("dream", 0.15)}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_model_scores_above_floor(name):
    folder = MODELS / name
    if not (folder / "config.json").exists():  # not shipped yet: see the trainer (issue 5)
        pytest.skip(f"{folder} is not shipped yet")
    arch, floor = FLOORS[name]
    assert (folder / "model.safetensors").stat().st_size < 20 * 2**20
    torch.set_num_threads(1)
    model, tok = load_model(folder), load_tokenizer(folder)
    assert model.config.arch == arch and model.config.mask_token_id == tok.mask_token_id
    task_cfg = yaml.safe_load((folder / "train_config.yaml").read_text())["task"]
    task = ArithmeticTask(**task_cfg, split="heldout", seed=0)
    res = evaluate(model, tok, task, task.samples(50), batch_size=50, gen_length=64, block_length=16,
                   steps=64, cache="dual", decoding="threshold", threshold=0.9)
    assert res["accuracy"] >= floor, res
    assert res["nfe_mean"] < 64  # parallel decoding actually decoded several tokens per forward
