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
decoding, threshold, factor, remasking, stop_at_eos) plus pretrained, dtype, warmup, timing_path,
seed, show_speed and
  protocol  ``reference`` (default: prompts and outputs exactly as Fast-dLLM's lm-eval classes) or
            ``clean`` (the project's own); see ``dllm_bench.tasks.protocol``;
  instruct  apply the chat template; default: when the model's name contains "instruct" (the
            reference's rule; LLaDA-1.5 needs ``instruct=true``). ``chat`` is the same switch;
  family    ``llada`` / ``dream``; default: the checkpoint's architecture.
The harness's ``max_gen_toks`` is ignored: ``gen_length`` is a decoding setting here. Requests are
grouped by generation settings, sorted by prompt length and run in batches of ``batch_size``; each
batch is timed (synchronize + perf_counter, after one untimed warm-up), every request gets a record
in ``self.timings`` (and a JSON line in ``timing_path``), and ``generate_until`` ends by printing a
speed summary (``summary()``).

Data parallel: under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1 in the environment)
each process takes ``cuda:$LOCAL_RANK`` (the CPU without CUDA), joins the process group (NCCL, or
gloo on CPU) and reports its rank and world size to lm-eval, which hands each rank its share of the
documents and gathers the results on rank 0 through ``all_gather`` / ``gather_object`` /
``barrier`` (as lm-eval's HFLM does with accelerate). Rank 0 then prints the speed of all ranks.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from .protocol import EvalProtocol
from .tokens import stop_token_ids

log = logging.getLogger(__name__)

_GENERATE_ARGS = ("gen_length", "block_length", "steps", "cache", "decoding", "threshold", "factor",
                  "remasking", "stop_at_eos", "cfg_scale")  # + any argument of the chosen cache / rule
_OTHER_ARGS = ("pretrained", "protocol", "instruct", "chat", "family", "dtype", "warmup", "timing_path", "seed",
               "show_speed")
_PROCESS_SPEED: dict = {}  # this process's latest speed summary, for the all-ranks report at the end of main()


def generate_kwargs(settings: dict, temperature: float) -> dict:
    """Keyword arguments of one ``dllm_bench.generate`` call (but the generator) from the adapter's
    generation settings (the ``_GENERATE_ARGS`` model args) and a request's sampling: the one place
    they are built."""
    kw = dict(settings, temperature=temperature)
    if kw["decoding"] == "fixed" and kw["steps"] is None:
        kw["steps"] = kw["gen_length"]  # one token per step: the reference schedule
    return kw


def _dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's / accelerate's environment."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def _local_family(pretrained) -> str | None:
    """The model family of a local checkpoint folder's config.json (None for a hub id)."""
    from ..models.loading import local_config

    try:
        config = local_config(pretrained)
    except (ValueError, OSError):
        return None  # load_model reports it
    return config and config.arch


class DllmBenchLM(LM):
    """lm-eval ``LM`` backed by ``dllm_bench.load_model`` + ``dllm_bench.generate``."""

    def __init__(self, pretrained: str | None = None, model=None, tokenizer=None, gen_length: int = 256,
                 block_length: int | None = 32, steps: int | None = None, cache: str = "none",
                 decoding: str = "fixed", threshold: float | None = None, factor: float | None = None,
                 remasking: str | None = None, stop_at_eos: bool = False, cfg_scale: float = 0.0,
                 protocol: str = "reference",
                 instruct: bool | None = None, chat: bool | None = None, family: str | None = None,
                 dtype: str | None = None, device: str | None = None, batch_size: int | str = 1,
                 max_batch_size: int | None = None, warmup: bool = True, timing_path: str | None = None,
                 seed: int = 0, show_speed: bool = True, **plugin_args):
        super().__init__()
        from ..decoding import build_plugins, pair_unsupported

        # threshold / factor / remasking given only when set: the rule's own default applies otherwise
        # (e.g. WINO's threshold, random_order's remasking)
        plugin_args.update({k: v for k, v in dict(threshold=threshold, factor=factor, remasking=remasking).items()
                            if v is not None})
        try:  # the cache's and rule's own arguments (e.g. gamma=0.01) and the pair: before the model loads
            pair = build_plugins(cache, decoding, **plugin_args)
            arch = family or (model.config.arch if model is not None else _local_family(pretrained))
            if arch and (why := pair_unsupported(*pair, arch)):
                raise ValueError(why)
        except ValueError as e:
            valid = ", ".join(("pretrained", *_GENERATE_ARGS, *_OTHER_ARGS[1:]))
            raise ValueError(f"dllm_bench model args: {e}; adapter args: {valid}") from None
        if (pretrained is None) == (model is None):
            raise ValueError("give exactly one of pretrained=<checkpoint folder or hub id> or model=<loaded model>")
        try:
            self.batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be an int, got {batch_size!r}") from None
        if instruct is not None and chat is not None and instruct != chat:
            raise ValueError(f"instruct={instruct} and chat={chat} disagree (they are the same switch)")
        EvalProtocol(protocol, family or "llada")  # a bad protocol or family fails before the model loads
        import torch

        import dllm_bench

        self._rank, self._world_size, local_rank = _dist_env()
        if self._world_size > 1:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        if device and torch.device(device).type == "cuda" and not torch.cuda.is_available():
            log.warning(f"device={device!r} but CUDA is not available (lm-eval's CLI defaults to cuda:0): using the CPU")
            device = "cpu"
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self._world_size > 1:
            self._join_process_group()
        if model is None:
            dtype = dtype or ("bfloat16" if self._device.type == "cuda" else "float32")
            model = dllm_bench.load_model(pretrained, device=self._device, dtype=dtype)
            tokenizer = tokenizer or dllm_bench.load_tokenizer(pretrained)
        if tokenizer is None:
            raise ValueError("model= needs tokenizer= as well")
        self.model, self.tokenizer = model, tokenizer
        self.name = str(pretrained or getattr(model, "name_or_path", "model"))
        instruct = instruct if instruct is not None else chat
        self.instruct = "instruct" in self.name.lower() if instruct is None else bool(instruct)
        self.protocol = EvalProtocol(protocol, family or model.config.arch, self.instruct)
        self.gen_settings = dict(gen_length=gen_length, block_length=block_length, steps=steps, cache=cache,
                                 decoding=decoding, stop_at_eos=stop_at_eos, cfg_scale=cfg_scale, **plugin_args)
        self.eos_ids = stop_token_ids(tokenizer, model.config.eos_token_id)
        self.warmup, self.seed, self.show_speed = warmup, seed, show_speed
        self.timing_path = Path(timing_path) if timing_path else None
        if self.timing_path and self._world_size > 1:
            self.timing_path = self.timing_path.with_name(f"{self.timing_path.stem}.rank{self._rank}{self.timing_path.suffix}")
        self.timings: list[dict] = []
        self._wall_s = 0.0
        self._chat_rendered = False  # set when lm-eval renders prompts with our chat template
        log.info(f"dllm_bench: {self.name} protocol={protocol} family={self.protocol.family} "
                 f"instruct={self.instruct} (chat template {'on' if self.instruct else 'off'}) "
                 f"rank {self._rank}/{self._world_size} on {self._device}")

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
        """Generate for each ``(context, gen_kwargs)`` request; outputs post-processed by the protocol."""
        start = time.perf_counter()
        groups: dict[str, list[int]] = {}
        encoded = []
        for i, req in enumerate(requests):
            context, kwargs = req.args
            encoded.append(self.protocol.encode(self.tokenizer, context, rendered=self._chat_rendered))
            groups.setdefault(json.dumps(self._sampling(kwargs), sort_keys=True), []).append(i)
        outputs: list[str | None] = [None] * len(requests)
        for key, idx in groups.items():
            sampling = json.loads(key)
            idx.sort(key=lambda i: -len(encoded[i]))  # similar lengths together: less padding
            for b in range(0, len(idx), self.batch_size):
                batch = idx[b:b + self.batch_size]
                texts = self._run_batch([encoded[i] for i in batch], sampling, [requests[i] for i in batch], batch)
                for i, text in zip(batch, texts):
                    outputs[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        self._wall_s += time.perf_counter() - start
        _PROCESS_SPEED.update(self.summary(), show=self.show_speed)
        if self.show_speed and requests:
            print(speed_line(self.summary(), f" (rank {self._rank}/{self._world_size})"
                             if self._world_size > 1 else ""), flush=True)
        return outputs  # type: ignore[return-value]

    # ------------------------------------------------------------------ data parallel (as lm-eval's HFLM)
    def _join_process_group(self) -> None:
        import torch
        import torch.distributed as dist

        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if self._device.type == "cuda" else "gloo")

    def all_gather(self, tensor):
        if self._world_size <= 1:
            return tensor
        import torch
        import torch.distributed as dist

        parts = [torch.zeros_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    def gather_object(self, obj, dst=0):
        if self._world_size <= 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self._world_size if self._rank == dst else None
        dist.gather_object(obj, out, dst=dst)
        return out

    def barrier(self) -> None:
        if self._world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _sampling(kwargs: dict) -> dict:
        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        temperature = float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample", False) else 0.0
        return {"until": until, "temperature": temperature}

    def _run_batch(self, prompts: list[list[int]], sampling: dict, requests: list, request_ids: list[int]) -> list[str]:
        """One batch through the evaluation path the job uses (``dllm_bench.evaluate.generate_all``)."""
        import torch

        import dllm_bench
        from ..evaluate import generate_all

        generator = torch.Generator(device=self._device).manual_seed(self.seed) if sampling["temperature"] else None
        kw = generate_kwargs(self.gen_settings, sampling["temperature"])
        first = len(self.timings)
        with torch.inference_mode():
            if self.warmup and not self.timings:
                warm = time.perf_counter()
                dllm_bench.generate(self.model, prompts[:1], generator=generator, **kw)
                self._wall_s -= time.perf_counter() - warm  # the speed summary leaves the warm-up out
            rows, info = generate_all(
                self.model, self.tokenizer, prompts, kw, batch_size=len(prompts), generator=generator,
                postprocess=lambda i, ids: self.protocol.postprocess(ids, self.tokenizer, self.eos_ids, sampling["until"],
                                                                     getattr(requests[i], "doc", None)))
        latency_ms = info["wall_s"] * 1e3
        texts = []
        for ids, row, rid in zip(prompts, rows, request_ids):
            texts.append(row["output"])
            record = {"request": rid, "batch": first, "batch_size": len(prompts), "prompt_tokens": len(ids),
                      "generated_tokens": row["n_generated_tokens"], "nfe": row["nfe"], "batch_latency_ms": latency_ms,
                      "prompt": self.tokenizer.decode(ids, skip_special_tokens=False)}
            self.timings.append(record)
            if self.timing_path:
                with self.timing_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
        return texts

    def summary(self) -> dict:
        """Speed over everything generated so far: generated tokens (to the first EOS / stop), timed
        generation seconds and tokens/s, wall seconds of ``generate_until`` (warm-up excluded), NFE
        (forwards per sequence, summed) and forwards per generated token."""
        batches = {r["batch"]: r["batch_latency_ms"] for r in self.timings}
        seconds = sum(batches.values()) / 1e3
        tokens = sum(r["generated_tokens"] for r in self.timings)
        nfe = sum(r["nfe"] for r in self.timings)
        return {"speed/tokens_per_s": tokens / seconds if seconds else 0.0, "speed/seconds": seconds,
                "speed/wall_s": self._wall_s, "speed/generated_tokens": tokens, "cost/nfe": nfe,
                "cost/forwards_per_token": nfe / tokens if tokens else None, "requests": len(self.timings)}


def speed_line(s: dict, where: str = "") -> str:
    """The speed summary as one readable line, then the same as JSON."""
    fpt = s["cost/forwards_per_token"]
    return (f"dllm_bench speed{where}: {s['requests']} requests, {s['speed/generated_tokens']} generated tokens "
            f"in {s['speed/seconds']:.2f} s of generation ({s['speed/wall_s']:.2f} s wall): "
            f"{s['speed/tokens_per_s']:.1f} tokens/s; NFE {s['cost/nfe']} "
            f"({'n/a' if fpt is None else f'{fpt:.3f}'} forwards/token)\n" + json.dumps(s))


def report_all_ranks(summary: dict) -> dict | None:
    """Under several processes: rank 0 gathers every rank's ``summary`` and returns (and prints,
    unless ``summary["show"]`` is False) their total; None elsewhere. A collective call: every rank
    makes it, also one that got no request (``main`` calls it after lm-eval returns)."""
    import torch.distributed as dist

    rank, world, _ = _dist_env()
    if world <= 1 or not dist.is_initialized():
        return None
    parts = [None] * world if rank == 0 else None
    dist.gather_object(summary, parts, dst=0)
    if parts is None:
        return None
    parts = [p for p in parts if p and p.get("requests")]
    tokens = sum(p["speed/generated_tokens"] for p in parts)
    nfe = sum(p["cost/nfe"] for p in parts)
    seconds = max((p["speed/seconds"] for p in parts), default=0.0)  # ranks run side by side: the slowest sets the pace
    total = {"speed/tokens_per_s": tokens / seconds if seconds else 0.0, "speed/seconds": seconds,
             "speed/wall_s": max((p["speed/wall_s"] for p in parts), default=0.0),
             "speed/generated_tokens": tokens, "cost/nfe": nfe,
             "cost/forwards_per_token": nfe / tokens if tokens else None,
             "requests": sum(p["requests"] for p in parts), "world_size": world}
    if summary.get("show", True):
        print(speed_line(total, f" (all {world} ranks; times of the slowest rank)"), flush=True)
    return total


if __name__ != "__main__":  # run as a script, the importable module registers the class instead
    register_model("dllm_bench")(DllmBenchLM)


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with the ``dllm_bench`` model registered; under several processes, rank 0
    prints the speed of all ranks at the end."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    report_all_ranks(dict(_PROCESS_SPEED))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    from dllm_bench.tasks.harness import main as _main  # importing registers the model

    _main()
