"""One sweep cell: check the config, skip if done, load the model once, batch the task's samples
through the engine, score, measure, write results.json / samples.jsonl / sweep.csv, mirror to the
logger.

Bad configuration (an invalid value, an unknown task argument, a missing model folder, a local
checkpoint whose config.json or shard index is wrong) raises ``ConfigError`` before anything is
written or loaded. Anything that goes wrong after that is recorded: the job writes ``status:
failed`` with the error and returns normally, so a sweep goes on and a rerun retries it; only a
failure to write the results themselves raises (``ResultsWriteError``, the job's outcome in its
message). A job whose config hash already has a trusted ``status: ok`` result in the sweep folder
(``results.load_job``) is skipped unless ``force=true``, after re-logging it if its logger run is
missing; a cell another launcher is computing is skipped too (``claims``). Every path rebuilds
sweep.csv. Nothing here branches on a cache or decoding name: they are passed through to
``generate``.
"""
from __future__ import annotations

import json
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
from .claims import Claim, describe
from .config import RUN_ONLY_KEYS, ConfigError, build_plugins, validate
from .logging_wandb import NullLogger
from .metrics.kv_similarity import KVSimilarity
from .metrics.timing import Stopwatch, latency_stats, peak_memory_bytes, reset_peak
from .models.loading import check_checkpoint, resolve_dtype
from .models.ops import use_fused
from .results import (RESULTS, SCHEMA_VERSION, atomic_write_text, config_hash, env_stamp, find_done, mark_mirrored,
                      mirrored, read_samples, rebuild_sweep_table, utc_now, write_job)
from .tasks import decode_generated, encode_prompt, score_all

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


def engine_kwargs(cfg) -> dict:
    """``generate`` keyword arguments of a sweep cell: the built cache and rule plus the lengths."""
    cache, rule = build_plugins(cfg)
    return dict(gen_length=cfg.gen_length, block_length=cfg.block_length, steps=cfg.steps, cache=cache,
                decoding=rule, cfg_scale=cfg.cfg_scale, stop_at_eos=cfg.stop_at_eos, graphs=cfg.graphs)


def _measure(cfg, task, model_path: str) -> tuple[dict, list[dict], dict | None]:
    """Load, generate in batches, score: (metrics, sample rows, kv_similarity or None)."""
    device = torch.device(cfg.device)
    t0 = time.perf_counter()
    model = use_fused(load_model(model_path, device=device, dtype=resolve_dtype(cfg.dtype)), cfg.fused)
    tok = instantiate(cfg.model.tokenizer) if cfg.model.tokenizer else load_tokenizer(model_path)
    load_s = time.perf_counter() - t0
    samples = task.samples(cfg.n_samples, seed=cfg.seed)
    prompts = [torch.tensor(encode_prompt(tok, s.prompt, cfg.model.instruct and s.meta.get("chat", True)))
               for s in samples]
    eos = {i for i in (model.config.eos_token_id, tok.eos_token_id) if i is not None}
    kw = engine_kwargs(cfg)
    cache = kw["cache"]
    gen = torch.Generator(device).manual_seed(cfg.seed) if kw["decoding"].temperature > 0 else None
    if cfg.measure.warmup:
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
        kv_bytes = max(kv_bytes, cache.kv_bytes(model, len(batch), length))
        for r, s in enumerate(samples[lo:lo + cfg.batch_size]):
            text, n_tok = decode_generated(res.tokens[r], eos, tok, task.stop_sequences)
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
    if cfg.measure.kv_similarity:  # after the timed run: its extra forwards must not be timed
        sim = KVSimilarity(model, cfg.measure.kv_heatmap_prompt_tokens)
        for i, p in enumerate(prompts[:cfg.measure.kv_similarity_samples]):
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


class ResultsWriteError(RuntimeError):
    """A job's results could not be written (e.g. a full disk); the message keeps the job's outcome."""


def _check_model(model_path: str) -> None:
    """A local checkpoint's config.json and weight files, checked before anything is written
    (a hub id is checked by ``load_model`` once downloaded)."""
    if Path(model_path).is_dir():
        try:
            check_checkpoint(model_path)
        except (ValueError, OSError) as e:
            raise ConfigError(str(e)) from None


def _mirror(logger, key: str | None, res: dict, rows: list[dict], job_dir: Path) -> None:
    logger.log_job(res, rows, job_dir)
    if key is not None:  # the run is complete: a later skip need not log it again
        mark_mirrored(job_dir, key)


def _skip(done: tuple[str, dict], sweep_dir: Path, job: str, logger, key: str | None) -> dict:
    """A finished job: re-log it when its logger run is missing (killed between results.json and
    the logger; done under the cell's claim so two launchers do not both log it); rebuild sweep.csv."""
    folder, res = sweep_dir / done[0], done[1]
    log.info(f"[skip] {job}: config {res['config_hash'][:10]} already ok in {folder}")
    if key is not None and not mirrored(folder, key):
        claim = Claim(sweep_dir, res["config_hash"], job)
        if claim.acquire() is None:
            try:
                if not mirrored(folder, key):
                    log.info(f"[relog] {job}: {key} has no complete run of this result; logging it from disk")
                    _mirror(logger, key, res, read_samples(folder), folder)
            finally:
                claim.release()
    rebuild_sweep_table(sweep_dir)
    return res


def _write_failed(job_dir: Path, results: dict, err: OSError) -> ResultsWriteError:
    """Keep the error of a failed write: logged, in the exception and, when a small file still fits,
    in a ``status: failed`` results.json (so the job is retried and its outcome not lost)."""
    outcome = "finished ok" if results["status"] == "ok" else f"had failed: {results['error']}"
    msg = f"could not write the results of {job_dir} ({type(err).__name__}: {err}); the job {outcome}"
    log.error(msg)
    stub = {k: v for k, v in results.items() if k != "samples"}
    stub.update(status="failed", error=msg)
    try:
        atomic_write_text(job_dir / RESULTS, json.dumps(stub, indent=2, default=str) + "\n")
    except OSError:
        pass
    return ResultsWriteError(msg)


def run_job(cfg: DictConfig, job_dir: str | Path, root: str | Path) -> dict | None:
    """Run one sweep cell into ``job_dir`` (whose parent is the sweep folder); returns results.json's
    dict, or None when another launcher holds the cell's claim (it is skipped here; see ``claims``).

    root: the project root, against which relative model paths resolve.
    """
    job_dir = Path(job_dir)
    sweep_dir = job_dir.parent
    launched = utc_now()
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(config, RUN_ONLY_KEYS)
    logger = instantiate(cfg.logger) if cfg.logger else NullLogger()
    key = None if isinstance(logger, NullLogger) else cfg.logger._target_
    done = None if cfg.force else find_done(sweep_dir, chash, job_dir)
    if done is not None:
        return _skip(done, sweep_dir, job_dir.name, logger, key)
    try:
        task = instantiate(cfg.task)          # bad task arguments fail here, before the model
    except Exception as e:
        cause = e.__cause__ or e
        raise ConfigError(f"task {cfg.task.name!r}: {type(cause).__name__}: {cause}") from e
    model_path = resolve_model_path(cfg.model.path, root)
    _check_model(model_path)

    claim = Claim(sweep_dir, chash, job_dir.name, watch=True)
    holder = claim.acquire()
    if holder is not None:
        log.info(f"[busy] {job_dir.name}: {describe(holder)} is computing this cell; skipped here, "
                 f"its result will be in {sweep_dir}")
        rebuild_sweep_table(sweep_dir)
        return None
    try:
        done = find_done(sweep_dir, chash, warn=False)  # finished by another launcher meanwhile?
        if done is not None and (not cfg.force or str(done[1].get("finished_at")) >= launched):
            return _skip(done, sweep_dir, job_dir.name, NullLogger(), None)
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
        results["sharing"] = claim.sharing()
        results["finished_at"] = utc_now()
        try:
            write_job(job_dir, results, rows)
        except OSError as e:
            raise _write_failed(job_dir, results, e) from e
        try:
            rebuild_sweep_table(sweep_dir)
        except OSError as e:
            raise ResultsWriteError(f"results of {job_dir} are written but {sweep_dir / 'sweep.csv'} "
                                    f"is not ({type(e).__name__}: {e}); the next run rebuilds it") from e
        _mirror(logger, key, results, rows, job_dir)
        log.info(_summary(results, job_dir.name))
        return results
    finally:
        claim.release()
