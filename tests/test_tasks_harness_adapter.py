"""The lm-eval model adapter on a tiny random LLaDA-shaped model: registration, batching that
matches unbatched generation, stop sequences, per-request timing, clear errors."""
import json
import subprocess
import sys

import pytest
import torch

import dllm_bench
from dllm_bench.models.layers import ModelConfig
from dllm_bench.tasks import decode_generated, encode_prompt
from dllm_bench.tasks.harness import DllmBenchLM
from test_tasks_tokens import char_tokenizer

torch.set_num_threads(1)
GEN = dict(gen_length=8, block_length=4, steps=8, cache="dual", decoding="fixed")


@pytest.fixture(scope="module")
def tiny():
    tok = char_tokenizer()
    cfg = ModelConfig(arch="llada", vocab_size=len(tok), d_model=32, n_layers=2, n_heads=2, n_kv_heads=2,
                      mlp_hidden=64, rope_theta=10000.0, norm_eps=1e-5, qkv_bias=False, tie_embeddings=False,
                      max_length=256, mask_token_id=tok.mask_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return dllm_bench.build_model(cfg, seed=0), tok


def _requests(contexts, until):
    from lm_eval.api.instance import Instance
    return [Instance("generate_until", {}, (c, {"until": until, "do_sample": False}), i) for i, c in enumerate(contexts)]


def test_registered_with_lm_eval():
    from lm_eval.api.registry import get_model
    assert get_model("dllm_bench") is DllmBenchLM


def test_batched_generate_until_matches_direct_generation(tiny):
    model, tok = tiny
    lm = DllmBenchLM(model=model, tokenizer=tok, batch_size=2, **GEN)
    contexts = ["1+2=", "12+30=", "5=", "q: 7+7="]
    until = ["#", "\n"]
    outs = lm.generate_until(_requests(contexts, until))
    for ctx, out in zip(contexts, outs):
        ids = encode_prompt(tok, ctx, chat=False)
        row = dllm_bench.generate(model, [ids], **GEN).tokens[0]
        assert out == decode_generated(row, tok.eos_token_id, tok, until)[0]
        assert "#" not in out and "\n" not in out
    assert len(lm.timings) == 4 and {r["batch_size"] for r in lm.timings} == {2}
    for r in lm.timings:
        assert 0 <= r["generated_tokens"] <= GEN["gen_length"] and r["nfe"] > 0 and r["batch_latency_ms"] > 0
    summary = lm.summary()
    assert summary["requests"] == 4 and summary["speed/generated_tokens"] == sum(r["generated_tokens"] for r in lm.timings)


def test_timing_file_and_loglikelihood_errors(tiny, tmp_path):
    model, tok = tiny
    lm = DllmBenchLM(model=model, tokenizer=tok, timing_path=str(tmp_path / "t.jsonl"), warmup=False, **GEN)
    lm.generate_until(_requests(["1="], []))
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == len(encode_prompt(tok, "1=", chat=False))
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        lm.loglikelihood([])


def test_bad_model_args(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown dllm_bench model arg.*'cahce'"):
        DllmBenchLM(model=model, tokenizer=tok, cahce="dual")
    with pytest.raises(ValueError, match="batch_size must be an int, got 'auto'"):
        DllmBenchLM(model=model, tokenizer=tok, batch_size="auto")


def test_simple_evaluate_by_name_on_local_task(tiny, tmp_path):
    """lm-eval's own evaluator, model looked up by name from a saved checkpoint folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    model, tok = tiny
    folder = tmp_path / "ckpt"
    dllm_bench.save_model(model, folder)
    tok.save_pretrained(str(folder))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(3)))
    (tmp_path / "tiny.yaml").write_text(
        "task: tiny_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'test.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}='\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['#']\nmetric_list:\n  - metric: exact_match\n")
    tm = TaskManager(include_defaults=False, include_path=str(tmp_path))
    args = ",".join(f"{k}={v}" for k, v in {"pretrained": folder, **GEN}.items())
    out = lm_eval.simple_evaluate(model="dllm_bench", model_args=args, tasks=["tiny_local"], task_manager=tm,
                                  batch_size=2, device="cpu")
    assert out["results"]["tiny_local"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    assert len(out["samples"]["tiny_local"]) == 3


def test_cli_wrapper_starts():
    res = subprocess.run([sys.executable, "-m", "dllm_bench.tasks.harness", "run", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--model_args" in res.stdout
