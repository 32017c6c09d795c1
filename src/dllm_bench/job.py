"""One sweep cell: check the config, skip if done, load the model once, batch the task's samples
through the engine, score, measure, write results.json / samples.jsonl / sweep.csv, mirror to the
logger.

Bad configuration (an invalid value, an unknown task argument, a missing model folder) raises
before anything is written or loaded. Anything that goes wrong after that is recorded: the job
writes ``status: failed`` with the error and returns normally, so a sweep goes on and a rerun
retries it. A job whose config hash already has ``status: ok`` in the sweep folder is skipped
unless ``force=true``. Nothing here branches on a cache or decoding name: they are passed through
to ``generate``. Prompts are encoded and outputs post-processed by the evaluation protocol
(``protocol=clean|reference``, ``dllm_bench.tasks.protocol``), the same code as the lm-eval adapter.
``shard=i/n`` runs the i-th of n contiguous parts of the cell's samples as a job of its own (its
own config hash); ``analysis.load_sweep`` merges the shards back into one cell.
"""
from __future__ import annotations

import logging
import os
import re
import time
import traceback
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import generate, load_model, load_tokenizer
from .config import RUN_ONLY_KEYS, ConfigError, shard_range, validate
from .decoding import CACHES
from .logging_wandb import NullLogger
from .metrics.kv_similarity import KVSimilarity
from .metrics.timing import Stopwatch, latency_stats, peak_memory_bytes, reset_peak
from .models.loading import resolve_dtype
from .models.ops import use_fused
from .results import SCHEMA_VERSION, config_hash, env_stamp, find_done, rebuild_sweep_table, utc_now, write_job
from .tasks import score_all
from .tasks.protocol import EvalProtocol
from .tasks.tokens import stop_token_ids

log = logging.getLogger(__name__)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(path: str, root: str | Path) -> str:
    """A local folder (absolute, or relative to the project root) or a hub id ``org/name``."""
    p = Path(path).expanduser()
    local = p if p.is_absolute() else Path(root) / p
    if local.is_dir():
        return str(local.resolve())
    if not p.is_absolute() and _HUB_ID.fullmatch(path):
        return path
    raise ConfigError(f"model folder not found: {local} (model.path={path!r})")


def set_threads(cfg) -> int:
    """torch threads: ``num_threads``, else this process's usable CPUs shared by ``n_parallel`` jobs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = cfg.num_threads or max(1, cpus // cfg.n_parallel)
    torch.set_num_threads(n)
    return n


def _generate_kwargs(cfg) -> dict:
    d = cfg.decoding
    return dict(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps,
                cache=cfg.cache.name, decoding=d.name, threshold=d.threshold, factor=d.factor,
                temperature=d.temperature, remasking=d.remasking, stop_at_eos=cfg.stop_at_eos,
                graphs=cfg.graphs)


def _kv_bytes(model, batch: int, length: int) -> int:
    c = model.config
    return 2 * c.n_layers * batch * c.n_kv_heads * length * c.head_dim * model.dtype.itemsize


def _measure(cfg, task, model_path: str) -> tuple[dict, list[dict], dict | None]:
    """Load, generate in batches, score: (metrics, sample rows, kv_similarity or None)."""
    device = torch.device(cfg.device)
    every = task.samples(cfg.n_samples, seed=cfg.seed)
    samples = every[slice(*shard_range(len(every), cfg.shard))]  # all of them unless cfg.shard is set
    if not samples:
        raise ValueError(f"shard={cfg.shard} holds none of the task's {len(every)} samples")
    t0 = time.perf_counter()
    model = use_fused(load_model(model_path, device=device, dtype=resolve_dtype(cfg.dtype)), cfg.fused)
    tok = instantiate(cfg.model.tokenizer) if cfg.model.tokenizer else load_tokenizer(model_path)
    load_s = time.perf_counter() - t0
    protocol = EvalProtocol(cfg.protocol, cfg.model.family, cfg.model.instruct)
    prompts = [torch.tensor(protocol.encode(tok, s.prompt, chat=s.meta.get("chat", True))) for s in samples]
    eos = stop_token_ids(tok, model.config.eos_token_id)
    kw = _generate_kwargs(cfg)
    gen = torch.Generator(device).manual_seed(cfg.seed) if cfg.decoding.temperature > 0 else None
    if cfg.metrics.warmup:
        generate(model, prompts[:1], generator=gen, **kw)
    reset_peak(device)

    rows, outputs, seconds, batch_nfe, kv_bytes = [], [], 0.0, 0, 0
    bar = tqdm(total=len(samples), desc=f"{cfg.model.name}/{cfg.cache.name}/{cfg.decoding.name}",
               disable=not cfg.progress, leave=False)
    for lo in range(0, len(samples), cfg.batch_size):
        batch = prompts[lo:lo + cfg.batch_size]
        with Stopwatch(device) as sw:
            res = generate(model, batch, generator=gen, **kw)
        seconds += sw.seconds
        batch_nfe += res.nfe
        length = max(len(p) for p in batch) + cfg.gen_length
        kv_bytes = max(kv_bytes, _kv_bytes(model, len(batch), length) * CACHES[cfg.cache.name].uses_cache)
        for r, s in enumerate(samples[lo:lo + cfg.batch_size]):
            text, n_tok = protocol.postprocess(res.tokens[r], tok, eos, task.stop_sequences, s.meta.get("doc"))
            outputs.append(text)
            rows.append({"id": s.id, "prompt": s.prompt, "output": text, "target": s.target,
                         "nfe": res.nfe_per_row[r], "latency_s": sw.seconds, "n_generated_tokens": n_tok,
                         "cache_refreshes": res.refreshes})
        bar.update(len(batch))
    bar.close()
    peak = peak_memory_bytes(device)

    extras: dict[str, list[float]] = {}
    for row, score in zip(rows, score_all(task, samples, outputs)):
        row.update(extracted=score.extracted, correct=bool(score.correct), extra=score.extra)
        for k, v in score.extra.items():
            if isinstance(v, (int, float)):
                extras.setdefault(f"task_{k}", []).append(float(v))

    n, tokens, nfe = len(rows), sum(r["n_generated_tokens"] for r in rows), sum(r["nfe"] for r in rows)
    metrics = {
        "accuracy": sum(r["correct"] for r in rows) / n,
        "tokens_per_s": tokens / seconds if seconds else None,
        "nfe_mean": nfe / n,
        **latency_stats([r["latency_s"] for r in rows]),
        "tokens_per_forward": tokens / nfe if nfe else None,
        "ms_per_forward": 1000 * seconds / batch_nfe if batch_nfe else None,
        "cache_refreshes_mean": sum(r["cache_refreshes"] for r in rows) / n,
        "peak_memory_bytes": peak,
        "kv_cache_bytes": kv_bytes,
        "n_samples": n,
        "generated_tokens": tokens,
        "wall_s": seconds,
        "load_s": load_s,
        **{k: sum(v) / len(v) for k, v in extras.items()},
    }
    kv_sim = None
    if cfg.metrics.kv_similarity:  # after the timed run: its extra forwards must not be timed
        sim = KVSimilarity(model, cfg.metrics.kv_heatmap_prompt_tokens)
        for i, p in enumerate(prompts[:cfg.metrics.kv_similarity_samples]):
            generate(model, [p], generator=gen, on_step=sim.start(len(p), heatmap=i == 0), **kw)
        kv_sim = sim.result()
    return metrics, rows, kv_sim


def _summary(res: dict, job: str) -> str:
    if res["status"] != "ok":
        return f"[failed] {job}: {res['error']}"
    m = res["metrics"]
    shown = {"accuracy": 3, "tokens_per_s": 1, "nfe_mean": 1, "latency_s_median": 3}
    parts = [f"{k}={m[k]:.{d}f}" if isinstance(m.get(k), float) else f"{k}={m.get(k)}" for k, d in shown.items()]
    return f"[ok] {job}: " + " ".join(parts) + f" n={m['n_samples']}"


def run_job(cfg: DictConfig, job_dir: str | Path, root: str | Path) -> dict:
    """Run one sweep cell into ``job_dir`` (whose parent is the sweep folder); returns results.json's dict.

    root: the project root, against which relative model paths resolve.
    """
    job_dir = Path(job_dir)
    sweep_dir = job_dir.parent
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(config, RUN_ONLY_KEYS)
    done = None if cfg.force else find_done(sweep_dir, chash)
    if done is not None:
        log.info(f"[skip] {job_dir.name}: config {chash[:10]} already ok in {sweep_dir / done[0]}")
        return done[1]
    try:
        task = instantiate(cfg.task)          # bad task arguments fail here, before the model
    except Exception as e:
        cause = e.__cause__ or e
        raise ConfigError(f"task {cfg.task.name!r}: {type(cause).__name__}: {cause}") from e
    model_path = resolve_model_path(cfg.model.path, root)
    logger = instantiate(cfg.logger) if cfg.logger else NullLogger()
    set_threads(cfg)
    torch.manual_seed(cfg.seed)

    results = {"schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "sweep": cfg.sweep_name,
               "config": config, "config_hash": chash, "metrics": {}, "env": env_stamp(cfg.device),
               "started_at": utc_now()}
    rows: list[dict] = []
    try:
        results["metrics"], rows, kv_sim = _measure(cfg, task, model_path)
        if kv_sim is not None:
            results["kv_similarity"] = kv_sim
    except Exception as e:  # recorded, not raised: the sweep goes on and a rerun retries this job
        log.error(f"job {job_dir.name} failed:\n{traceback.format_exc()}")
        results.update(status="failed", error=f"{type(e).__name__}: {e}")
    results["finished_at"] = utc_now()
    write_job(job_dir, results, rows)
    rebuild_sweep_table(sweep_dir)
    logger.log_job(results, rows, job_dir)
    log.info(_summary(results, job_dir.name))
    return results
