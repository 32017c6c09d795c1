"""Helpers shared by the engine and method tests: random prompts, a random GQA model, the
batch-size-1 comparison of a batch's rows, and a model that ranks [MASK] first."""
from __future__ import annotations

import torch

from dllm_bench import build_model, generate


def random_prompts(lengths, seed: int = 0, hi: int = 380) -> list[torch.Tensor]:
    """1-D prompts of the given lengths, token ids in [0, hi) (below the fixtures' special ids)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, hi, (n,), generator=g) for n in lengths]


def gqa_model(arch: str = "llada", d_model: int = 64, n_layers: int = 2, seed: int = 3):
    """A shape the fixtures do not cover: a random GQA model (8 query heads on 2 KV heads; vocab 200,
    mask 199, EOS / pad 198, so prompts take ``hi=198``) with its output layer sharpened so that
    confidences spread over 0..1."""
    shared = {"vocab_size": 200, "mask_token_id": 199, "eos_token_id": 198, "pad_token_id": 198,
              "rope_theta": 10000.0}
    raw = {"model_type": "llada", "d_model": d_model, "n_layers": n_layers, "n_heads": 8, "n_kv_heads": 2,
           "mlp_hidden_size": 96, "embedding_size": 200, **shared} if arch == "llada" else \
          {"model_type": "Dream", "hidden_size": d_model, "num_hidden_layers": n_layers, "num_attention_heads": 8,
           "num_key_value_heads": 2, "intermediate_size": 96, **shared}
    model = build_model(raw, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model


def rows_equal_single(model, prompts, **kw):
    """(batch result, batch-size-1 results): every row of the batch equals its own run, in tokens and
    in its own forward count."""
    batch = generate(model, prompts, **kw)
    singles = [generate(model, p[None], **kw) for p in prompts]
    for i, single in enumerate(singles):
        assert batch.tokens[i].tolist() == single.tokens[0].tolist(), f"row {i} differs ({kw})"
        assert batch.nfe_per_row[i] == single.nfe, f"row {i} nfe differs ({kw})"
    return batch, singles


def summed_stats(singles, maxed: tuple[str, ...] = ()) -> dict:
    """The counters a batch must report: the sum of its rows' (the maximum for ``maxed`` keys)."""
    total: dict = {}
    for single in singles:
        for k, v in single.stats.items():
            total[k] = max(total.get(k, 0), v) if k in maxed else total.get(k, 0) + v
    return total


def put_mask_on_top(model):
    """Make [MASK] the top prediction at every position (a reference would commit it)."""
    mask = model.config.mask_token_id

    def hook(module, args, out):
        out = out.clone()
        out[..., mask] = out.max(-1).values + 5.0
        return out

    model.register_forward_hook(hook)
    return model
