"""lm-eval model adapter: run any lm-eval ``generate_until`` task on the dllm-bench engine.

Importing this module registers the model ``dllm_bench`` with lm-eval. lm-eval has no plugin entry
point for models, so the command line goes through this module, which registers it and then runs
lm-eval's own CLI with the same arguments::

    python -m dllm_bench.tasks.harness --model dllm_bench \\
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,gen_length=256,block_length=32,cache=dual,decoding=threshold,threshold=0.9 \\
        --tasks gsm8k --num_fewshot 5 --batch_size 8 --device cuda --confirm_run_unsafe_code

From Python: ``import dllm_bench.tasks.harness`` then ``lm_eval.simple_evaluate(model="dllm_bench",
model_args=...)``, or pass ``DllmBenchLM(model=..., tokenizer=...)`` and, for local data, the
``lm_eval_tasks`` of ``dllm_bench.tasks.get_task(name, data_dir=...)``.

Model args: everything ``dllm_bench.generate`` takes (gen_length, block_length, steps, cache,
decoding, threshold, factor, remasking, stop_at_eos) plus pretrained, dtype, chat, warmup,
timing_path. The harness's ``max_gen_toks`` is ignored: ``gen_length`` is a decoding setting here.
Requests are grouped by generation settings, sorted by prompt length and run in batches of
``batch_size``; each batch is timed (synchronize + perf_counter, after one untimed warm-up) and
every request gets a record in ``self.timings`` (and a JSON line in ``timing_path``).
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .tokens import decode_generated, encode_prompt, stop_token_ids

log = logging.getLogger(__name__)

_GENERATE_ARGS = ("gen_length", "block_length", "steps", "cache", "decoding", "threshold", "factor",
                  "remasking", "stop_at_eos")


class DllmBenchLM(LM):
    """lm-eval ``LM`` backed by ``dllm_bench.load_model`` + ``dllm_bench.generate``."""

    def __init__(self, pretrained: str | None = None, model=None, tokenizer=None, gen_length: int = 256,
                 block_length: int | None = 32, steps: int | None = None, cache: str = "none",
                 decoding: str = "fixed", threshold: float | None = None, factor: float | None = None,
                 remasking: str = "low_confidence", stop_at_eos: bool = False, chat: bool = False,
                 dtype: str | None = None, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, warmup: bool = True, timing_path: str | None = None,
                 seed: int = 0, **unknown):
        super().__init__()
        if unknown:
            valid = ", ".join(("pretrained", *_GENERATE_ARGS, "chat", "dtype", "warmup", "timing_path", "seed"))
            raise ValueError(f"unknown dllm_bench model arg(s) {', '.join(map(repr, unknown))}; valid: {valid}")
        if (pretrained is None) == (model is None):
            raise ValueError("give exactly one of pretrained=<checkpoint folder or hub id> or model=<loaded model>")
        try:
            self.batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be an int, got {batch_size!r}") from None
        import torch

        import dllm_bench

        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:
            dtype = dtype or ("bfloat16" if self._device.type == "cuda" else "float32")
            model = dllm_bench.load_model(pretrained, device=self._device, dtype=dtype)
            tokenizer = tokenizer or dllm_bench.load_tokenizer(pretrained)
        if tokenizer is None:
            raise ValueError("model= needs tokenizer= as well")
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.name = str(pretrained or getattr(model, "name_or_path", "model"))
        if decoding == "fixed" and steps is None:
            steps = gen_length  # one token per step: the reference schedule
        self.gen_args = dict(gen_length=gen_length, block_length=block_length, steps=steps, cache=cache,
                             decoding=decoding, threshold=threshold, factor=factor, remasking=remasking,
                             stop_at_eos=stop_at_eos)
        self.eos_ids = stop_token_ids(tokenizer, model.config.eos_token_id)
        self.warmup, self.seed = warmup, seed
        self.timing_path = Path(timing_path) if timing_path else None
        self.timings: list[dict] = []
        self._chat_rendered = False  # set when lm-eval renders prompts with our chat template

    # ------------------------------------------------------------------ lm-eval hooks
    @property
    def tokenizer_name(self) -> str:
        return self.name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        self._chat_rendered = True
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("dllm_bench runs generate_until tasks only: loglikelihood (multiple-choice) "
                                  "scoring is not implemented for diffusion LMs; pick a generative task (e.g. gsm8k)")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("dllm_bench runs generate_until tasks only: loglikelihood_rolling (perplexity) "
                                  "is not implemented for diffusion LMs")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generate for each ``(context, gen_kwargs)`` request; outputs cut at EOS and ``until``."""
        groups: dict[str, list[int]] = {}
        encoded = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            encoded.append(self._encode(context))
            groups.setdefault(json.dumps(self._sampling(kwargs), sort_keys=True), []).append(i)
        outputs: list[str | None] = [None] * len(requests)
        for key, idx in groups.items():
            sampling = json.loads(key)
            idx.sort(key=lambda i: -len(encoded[i]))  # similar lengths together: less padding
            for b in range(0, len(idx), self.batch_size):
                batch = idx[b:b + self.batch_size]
                texts = self._run_batch([encoded[i] for i in batch], sampling, batch, len(self.timings))
                for i, text in zip(batch, texts):
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals
    def _encode(self, context: str) -> list[int]:
        if self._chat_rendered:  # already holds the template's special tokens
            return list(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        return encode_prompt(self.tokenizer, context, self.chat)

    @staticmethod
    def _sampling(kwargs: dict) -> dict:
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample", False) else 0.0
        return {"until": until, "temperature": temperature}

    def _sync(self) -> None:
        import torch

        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def _run_batch(self, prompts: list[list[int]], sampling: dict, request_ids: list[int], first: int) -> list[str]:
        import torch

        import dllm_bench

        generator = torch.Generator(device=self._device).manual_seed(self.seed) if sampling["temperature"] else None
        run = lambda ps: dllm_bench.generate(self.model, ps, temperature=sampling["temperature"],  # noqa: E731
                                             generator=generator, **self.gen_args)
        with torch.inference_mode():
            if self.warmup and not self.timings:
                run(prompts[:1])
            self._sync()
            start = time.perf_counter()
            result = run(prompts)
            self._sync()
        latency_ms = (time.perf_counter() - start) * 1e3
        texts = []
        for row, (ids, rid) in enumerate(zip(prompts, request_ids)):
            text, n = decode_generated(result.tokens[row], self.eos_ids, self.tokenizer, sampling["until"])
            texts.append(text)
            record = {"request": rid, "batch": first, "batch_size": len(prompts), "prompt_tokens": len(ids),
                      "generated_tokens": n, "nfe": result.nfe_per_row[row], "batch_latency_ms": latency_ms}
            self.timings.append(record)
            if self.timing_path:
                with self.timing_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
        return texts

    def summary(self) -> dict:
        """Throughput over everything generated so far: generated tokens / generation time."""
        batches = {r["batch"]: r["batch_latency_ms"] for r in self.timings}
        seconds = sum(batches.values()) / 1e3
        tokens = sum(r["generated_tokens"] for r in self.timings)
        return {"speed/tokens_per_s": tokens / seconds if seconds else 0.0, "speed/seconds": seconds,
                "speed/generated_tokens": tokens, "requests": len(self.timings)}


if __name__ != "__main__":  # run as a script, the importable module registers the class instead
    register_model("dllm_bench")(DllmBenchLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with the ``dllm_bench`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    from dllm_bench.tasks.harness import main as _main  # importing registers the model

    _main()
