"""The lm-eval model adapter on a tiny random LLaDA-shaped model and the shipped tiny LLaDA:
registration, batching that matches unbatched generation under both protocols, stop sequences,
per-request timing and the speed summary, the chat template for instruct models without a flag
(the README's command), data parallel over two processes, clear errors."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dllm_bench
from dllm_bench.decoding import RULES
from dllm_bench.models.layers import ModelConfig
from dllm_bench.tasks.harness import DllmBenchLM
from dllm_bench.tasks.protocol import EvalProtocol
from fixture_paths import DREAM_TINY, ROOT
from test_tasks_tokens import char_tokenizer

torch.set_num_threads(1)
GEN = dict(gen_length=8, block_length=4, steps=8, cache="dual", decoding="fixed")
TINY_LLADA = ROOT / "assets" / "models" / "llada-tiny-arith"


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


@pytest.mark.parametrize("protocol", ["clean", "reference"])
def test_batched_generate_until_matches_direct_generation(tiny, protocol):
    model, tok = tiny
    lm = DllmBenchLM(model=model, tokenizer=tok, batch_size=2, protocol=protocol, **GEN)
    contexts = ["1+2=", "12+30=", "5=", "q: 7+7="]
    until = ["#", "\n"]
    outs = lm.generate_until(_requests(contexts, until))
    proto = EvalProtocol(protocol, "llada", instruct=False)
    for ctx, out in zip(contexts, outs):
        row = dllm_bench.generate(model, [proto.encode(tok, ctx)], **GEN).tokens[0]
        assert out == proto.postprocess(row, tok, lm.eos_ids, until)[0]
        assert "#" not in out and "\n" not in out
    assert len(lm.timings) == 4 and {r["batch_size"] for r in lm.timings} == {2}
    for r in lm.timings:
        assert 0 <= r["generated_tokens"] <= GEN["gen_length"] and r["nfe"] > 0 and r["batch_latency_ms"] > 0
    summary = lm.summary()
    assert summary["requests"] == 4 and summary["speed/generated_tokens"] == sum(r["generated_tokens"] for r in lm.timings)


def test_speed_summary_is_printed_at_the_end(tiny, capsys):
    model, tok = tiny
    lm = DllmBenchLM(model=model, tokenizer=tok, batch_size=2, **GEN)
    lm.generate_until(_requests(["1+2=", "3=", "4+4="], []))
    line, js = capsys.readouterr().out.strip().splitlines()[-2:]
    s = json.loads(js)
    assert s == lm.summary() and s["requests"] == 3
    tokens, nfe = sum(r["generated_tokens"] for r in lm.timings), sum(r["nfe"] for r in lm.timings)
    assert s["speed/generated_tokens"] == tokens and s["cost/nfe"] == nfe == 3 * GEN["steps"]
    assert s["cost/forwards_per_token"] == pytest.approx(nfe / tokens)
    assert s["speed/tokens_per_s"] == pytest.approx(tokens / s["speed/seconds"])
    assert 0 < s["speed/seconds"] <= s["speed/wall_s"]  # the timed generation lies inside the wall time
    assert line.startswith(f"dllm_bench speed: 3 requests, {tokens} generated tokens")


def test_timing_file_and_loglikelihood_errors(tiny, tmp_path):
    model, tok = tiny
    lm = DllmBenchLM(model=model, tokenizer=tok, timing_path=str(tmp_path / "t.jsonl"), warmup=False, **GEN)
    lm.generate_until(_requests(["1="], []))
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt_tokens"] == len(tok("1=")["input_ids"])
    assert rows[0]["prompt"] == "<bos>1="  # the prompt as tokenized
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        lm.loglikelihood([])


def test_bad_model_args(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown argument cahce='dual' for decoding 'fixed'"):
        DllmBenchLM(model=model, tokenizer=tok, cahce="dual")
    with pytest.raises(ValueError, match="threshold must be a finite number in \\(0, 1\\], got 1.5"):
        DllmBenchLM(pretrained="/no/such/folder", decoding="threshold", threshold=1.5)  # before any loading
    with pytest.raises(ValueError, match="unknown decoding 'wnio'"):
        DllmBenchLM(pretrained="/no/such/folder", decoding="wnio")
    with pytest.raises(ValueError, match="batch_size must be an int, got 'auto'"):
        DllmBenchLM(model=model, tokenizer=tok, batch_size="auto")
    with pytest.raises(ValueError, match="unknown protocol 'paper'; valid: clean, reference"):
        DllmBenchLM(pretrained="/no/such/folder", protocol="paper")  # before any loading
    with pytest.raises(ValueError, match="unknown model family 'gpt2'"):
        DllmBenchLM(pretrained="/no/such/folder", family="gpt2")
    with pytest.raises(ValueError, match="cache 'dllm_cache' cannot run decoding 'wino'"):
        DllmBenchLM(model=model, tokenizer=tok, cache="dllm_cache", decoding="wino")


@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_runs_with_its_own_defaults(tiny, rule):
    """Adapter arguments not given (threshold, factor, remasking) leave the rule's defaults alone."""
    model, tok = tiny
    try:
        RULES.build(rule)
    except ValueError:
        pytest.skip(f"{rule} has required arguments")
    lm = DllmBenchLM(model=model, tokenizer=tok, decoding=rule, gen_length=8, block_length=8, steps=8,
                     show_speed=False)
    out = lm.generate_until(_requests(["1="], []))
    assert len(out) == 1 and isinstance(out[0], str)


def test_a_pair_the_checkpoint_cannot_run_is_refused_before_loading(monkeypatch):
    import dllm_bench

    monkeypatch.setattr(dllm_bench, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(ValueError, match="decoding 'wino' is defined for llada models, not dream"):
        DllmBenchLM(pretrained=str(DREAM_TINY), decoding="wino")


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


# ---------------------------------------------------------------- the shipped tiny LLaDA through lm-eval's CLI
def _arith_task(folder: Path, n: int = 4) -> Path:
    """A local lm-eval task of ``n`` held-out arith problems (target: the worked solution)."""
    from dllm_bench.tasks.arithmetic import ArithmeticTask

    samples = ArithmeticTask(max_operand=3, var_prob=0.0).samples(n)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(json.dumps({"q": s.prompt, "a": s.meta["solution"]}) + "\n"
                                               for s in samples))
    (folder / "tiny_arith.yaml").write_text(
        "task: tiny_arith\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'test.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\nmetric_list:\n  - metric: exact_match\n")
    return folder


def _readme_adapter_command() -> list[str]:
    """The adapter command of the README, as written (arguments after ``python -m ...harness``)."""
    import shlex

    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "dllm_bench.tasks.harness --model" in b)
    args = shlex.split(block.replace("\\\n", " "))
    return args[args.index("dllm_bench.tasks.harness") + 1:]


@pytest.mark.slow
def test_readme_command_applies_the_chat_template_to_an_instruct_folder(tmp_path, monkeypatch):
    """The README's adapter command, with only the checkpoint and the task swapped for local ones:
    on a folder named like an instruct model the chat template is applied with no flag given."""
    from dllm_bench.tasks import harness

    args = _readme_adapter_command()
    assert "chat=" not in " ".join(args) and "instruct=" not in " ".join(args)
    task_dir = _arith_task(tmp_path / "task", n=2)
    template = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"
    seen = {}
    original = EvalProtocol.encode

    def spy(self, tokenizer, text, chat=True, rendered=False):
        ids = original(self, tokenizer, text, chat, rendered)
        seen.setdefault(self.instruct, []).append(tokenizer.decode(ids, skip_special_tokens=False))
        return ids

    monkeypatch.setattr(EvalProtocol, "encode", spy)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for name in ("llada-tiny-arith-instruct", "llada-tiny-arith"):
        folder = tmp_path / name
        shutil.copytree(TINY_LLADA, folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(dict(cfg, chat_template=template)))
        (folder / "chat_template.jinja").write_text(template)
        run = [a.replace("pretrained=GSAI-ML/LLaDA-8B-Instruct", f"pretrained={folder}") for a in args]
        run[run.index("--tasks") + 1] = "tiny_arith"
        harness.main([*run, "--include_path", str(task_dir), "--limit", "2"])  # no --device: cuda:0 falls back
    assert set(seen) == {True, False}
    assert all(p.startswith("<|bos|>a=") for p in seen[True]) and len(seen[True]) == 2
    assert all(p.startswith("a=") for p in seen[False]) and len(seen[False]) == 2


def _lm_eval_cli(args: list[str], out: Path, nproc: int = 1) -> dict:
    """Run the adapter's CLI (under torchrun with gloo when nproc > 1): (results, samples by doc)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    launch = [sys.executable, "-m"] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    proc = subprocess.run([*launch, "dllm_bench.tasks.harness", *args, "--output_path", str(out), "--log_samples"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = {}
    for f in out.rglob("samples_tiny_arith_*.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            # lm-eval pads the shorter rank with a repeat of its last request: a second response there
            samples[row["doc_id"]] = (row["resps"][0][0], row["filtered_resps"][0], row["exact_match"])
    return {"results": results["results"]["tiny_arith"], "samples": samples, "stdout": proc.stdout}


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(tmp_path):
    """torchrun --nproc_per_node=2 on CPU (gloo): each rank generates its share, lm-eval gathers;
    the samples and the score equal one process's, and rank 0 prints the speed of both ranks."""
    task_dir = _arith_task(tmp_path / "task", n=5)
    args = ["--model", "dllm_bench", "--model_args",
            f"pretrained={TINY_LLADA},cache=dual,decoding=threshold,threshold=0.9,gen_length=64,block_length=16",
            "--tasks", "tiny_arith", "--include_path", str(task_dir), "--batch_size", "2"]
    one = _lm_eval_cli(args, tmp_path / "one")
    two = _lm_eval_cli(args, tmp_path / "two", nproc=2)
    assert len(one["samples"]) == 5 and two["samples"] == one["samples"]
    assert two["results"]["exact_match,none"] == one["results"]["exact_match,none"]
    assert one["results"]["exact_match,none"] >= 0.6  # the tiny model solves most held-out problems
    ranks = re.findall(r"dllm_bench speed \(rank (\d)/2\): (\d+) requests", two["stdout"])
    assert sorted(r for r, _ in ranks) == ["0", "1"] and sum(int(n) for _, n in ranks) >= 5  # 3 + 2 (+ padding)
    total = json.loads(two["stdout"].split("dllm_bench speed (all 2 ranks")[1].splitlines()[1])
    single = json.loads(one["stdout"].split("dllm_bench speed: ")[1].splitlines()[1])
    assert total["world_size"] == 2 and total["requests"] >= 5
    assert total["speed/generated_tokens"] >= single["speed/generated_tokens"]
