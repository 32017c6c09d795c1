"""One sweep cell: check the config, skip if done, load the model once, batch the task's samples
through the engine, score, measure, write results.json / samples.jsonl / sweep.csv, mirror to the
logger.

Bad configuration (an invalid value, an unknown task argument, a missing model folder, a local
checkpoint whose config.json or shard index is wrong, a hub model that cannot be fetched, prompts
that with gen_length do not fit the model's context) raises ``ConfigError`` before anything is
written or loaded (``dllm_bench.prepare``; ``dllm_bench.sweep`` runs the same checks on every cell of a
multirun before the first job). Anything that goes wrong after that is recorded: the job writes
``status: failed`` with the error (its traceback goes to the log file only) and returns normally,
so a sweep goes on and a rerun retries it; only a failure to write the results themselves raises
(``ResultsWriteError``, the job's outcome in its message). Ctrl-C while the results are written is
held until they are whole. A job whose config hash already has a trusted ``status: ok`` result in
the sweep folder (``results.load_job``) is skipped unless ``force=true``, after re-logging it if its logger run is
missing; a cell another launcher is computing is skipped too (``claims``). Every path rebuilds
sweep.csv. Nothing here branches on a cache or decoding name: they are passed through to
``generate``.
Prompts are encoded and outputs post-processed by the evaluation protocol (``protocol=clean|reference``,
``dllm_bench.tasks.protocol``), the same code as the lm-eval adapter. ``shard=i/n`` runs the i-th of n
contiguous parts of the cell's samples as a job of its own (its own config hash);
``analysis.load_sweep`` merges the shards back into one cell.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import statistics
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from . import generate, load_model
from .claims import Claim, describe
from .config import RUN_ONLY_KEYS, build_plugins, validate
from .evaluate import generate_all, paired_speedup, speed_metrics, time_engines
from .logging_wandb import NullLogger
from .metrics import JobView, build_metrics, run_extra_pass
from .metrics.timing import peak_memory_bytes, reset_peak
from .models.loading import resolve_dtype
from .models.ops import use_fused
from .prepare import Prepared, prepare, resolve_model_path  # noqa: F401  (also importable from here)
from .results import (RESULTS, SCHEMA_VERSION, atomic_write_bytes, atomic_write_text, config_hash, env_stamp,
                      find_done, mark_mirrored, mark_skipped, mirrored, read_samples, rebuild_sweep_table, utc_now, write_job)
from .tasks import score_all
from .tasks.tokens import stop_token_ids

log = logging.getLogger(__name__)


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


def baseline_engine(cfg, engine: dict) -> dict:
    """The paper's baseline of a cell: no cache, fixed decoding of one token per step."""
    from .decoding import CACHES, RULES

    return dict(engine, cache=CACHES.build("none"), decoding=RULES.build("fixed"), steps=cfg.gen_length, graphs=False)


def _title(cfg) -> str:
    """One line naming a cell, for pictures: model, cache, decoding and its arguments, lengths."""
    name = cfg.decoding.name
    args = " ".join((f"{v:g}" if isinstance(v, float) else str(v)) if k == name else f"{k}={v}"
                    for k, v in cfg.decoding.items()
                    if k not in ("name", "_target_", "temperature", "remasking") and v is not None)
    return (f"{cfg.model.name} · {cfg.cache.name} cache · {name}" + (f" {args}" if args else "")
            + f" · gen {cfg.gen_length}, " + (f"block {cfg.block_length}" if cfg.block_length else "one block"))


def _measure(cfg, prep: Prepared) -> tuple[dict, list[dict], dict, dict]:
    """Load; the accuracy pass (all samples, batched); the timed pass (a subset, repeated,
    interleaved with the baseline when asked); scoring; metrics' extra pass and finish.
    Returns (metrics, sample rows, extra results.json sections, files for the job folder)."""
    device = torch.device(cfg.device)
    task, tok, protocol, samples, prompts = prep.task, prep.tokenizer, prep.protocol, prep.samples, prep.prompts
    t0 = time.perf_counter()
    model = use_fused(load_model(prep.model_path, device=device, dtype=resolve_dtype(cfg.dtype)), cfg.fused)
    load_s = time.perf_counter() - t0
    stop_ids = stop_token_ids(tok, model.config.eos_token_id)
    engine = engine_kwargs(cfg)
    seed = cfg.seed if engine["decoding"].temperature > 0 else None
    gen = torch.Generator(device).manual_seed(seed) if seed is not None else None
    metrics = build_metrics(model, OmegaConf.to_container(cfg.measure))
    reset_peak(device)

    def post(i: int, ids):  # sample i's tokens -> (text, ...) under the evaluation protocol
        return protocol.postprocess(ids, tok, stop_ids, task.stop_sequences, samples[i].meta.get("doc"))

    bar = tqdm(total=len(samples), desc=f"{cfg.model.name}/{cfg.cache.name}/{cfg.decoding.name}",
               disable=not cfg.progress, leave=False)
    rows, info = generate_all(model, tok, prompts, engine, batch_size=cfg.batch_size, generator=gen, metrics=metrics,
                              postprocess=post, progress=bar.update)
    bar.close()
    peak = peak_memory_bytes(device)
    for row, s in zip(rows, samples):
        row.update({"id": s.id, "prompt": s.prompt, "target": s.target})

    t = cfg.timing
    subset = prompts[:t.samples or cfg.batch_size]
    engines = {"cell": engine, **({"baseline": baseline_engine(cfg, engine)} if t.baseline else {})}
    timing = time_engines(model, subset, engines, batch_size=cfg.batch_size, repeats=t.repeats, warmup=t.warmup,
                          generator_seed=seed)
    speed = speed_metrics(timing.repeats["cell"], sum(r["n_generated_tokens"] for r in rows[:len(subset)]),
                          t.max_spread)
    if t.baseline:
        speed.update(paired_speedup(timing, "cell", "baseline"))
    for i, row in enumerate(rows[:len(subset)]):  # the sample's own latency: its batch / rows, median of repeats
        b = i // cfg.batch_size
        row["latency_s"] = statistics.median(r.batch_s[b] / r.batch_rows[b] for r in timing.repeats["cell"])

    extras: dict[str, list[float]] = {}
    for row, score in zip(rows, score_all(task, samples, [r["output"] for r in rows])):
        row.update(extracted=score.extracted, correct=bool(score.correct), extra=score.extra)
        for k, v in score.extra.items():
            if isinstance(v, (int, float)):
                extras.setdefault(f"task_{k}", []).append(float(v))

    n, tokens, nfe = len(rows), sum(r["n_generated_tokens"] for r in rows), sum(r["nfe"] for r in rows)
    out = {
        "accuracy": sum(r["correct"] for r in rows) / n,
        **speed,
        "nfe_mean": nfe / n,
        "tokens_per_forward": tokens / nfe if nfe else None,
        "remasked_mean": sum(r["remasked"] for r in rows) / n,
        "cache_refreshes_mean": sum(r["cache_refreshes"] for r in rows) / n,
        "peak_memory_bytes": peak,
        "kv_cache_bytes": info["kv_cache_bytes"],
        **compute_metrics(info["stats"]),
        "n_samples": n,
        "generated_tokens": tokens,
        "accuracy_pass_s": info["wall_s"],
        "timed_samples": len(subset),
        "load_s": load_s,
        "load_1m": timing.load["load_1m"], "load_other_cpu": timing.load["other_cpu"],
        "cpus": timing.load["cpus"], "torch_threads": timing.load["torch_threads"],
        **{k: sum(v) / len(v) for k, v in extras.items()},
    }
    sections: dict = {"timing": {"order": timing.order, **{
        name: [{"wall_s": r.wall_s, "nfe": r.nfe} for r in reps] for name, reps in timing.repeats.items()}}}
    run_extra_pass(metrics, model, prompts, engine, generate, generator=gen)  # after timing: never timed

    def score(indices: list[int], token_rows: list) -> list:
        texts = [post(i, ids)[0] for i, ids in zip(indices, token_rows)]
        return list(zip(texts, score_all(task, [samples[i] for i in indices], texts)))

    view, files = JobView(rows, tok, _title(cfg), score), {}
    for m in metrics:
        m.finish(view)
        out.update(m.summary())
        if (section := m.result()) is not None:
            sections[m.name] = section
        files.update(m.files())
    return out, rows, sections, files


def compute_metrics(stats: dict) -> dict:
    """The hardware-independent cost of a cell from the engine's counters: layer x token
    computations done and the fraction a full forward at every step would have done but this cache
    skipped (negative when a rule adds work, e.g. WINO's shadow block); plugin counters as
    ``stat_<name>``."""
    done, total = stats.get("layer_tokens_computed"), stats.get("layer_tokens_total")
    out = {f"stat_{k}": v for k, v in stats.items() if k not in ("layer_tokens_computed", "layer_tokens_total")}
    if done is not None and total:
        out.update(layer_tokens_computed=done, layer_tokens_total=total, compute_skipped=1 - done / total)
    return out


def _summary(res: dict, job: str) -> str:
    if res["status"] != "ok":
        return f"[failed] {job}: {res['error']}"
    m = res["metrics"]
    shown = {"accuracy": 3, "tokens_per_s": 1, "nfe_mean": 1, "latency_s_median": 3}
    parts = [f"{k}={m[k]:.{d}f}" if isinstance(m.get(k), float) else f"{k}={m.get(k)}" for k, d in shown.items()]
    return f"[ok] {job}: " + " ".join(parts) + f" n={m['n_samples']}"


FILE_ONLY = "file_only"  # a log record's ``extra`` flag: for the job's log file, not the console


class ConsoleFilter(logging.Filter):
    """Drops records flagged ``FILE_ONLY`` (conf/config.yaml puts it on Hydra's console handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FILE_ONLY, False)


@contextmanager
def _holding_interrupts():
    """Ctrl-C (SIGINT) during the block is held and raised once the block is done, so that a
    job's files are written whole or not at all (main thread only: elsewhere nothing is held)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):
            previous(signal.SIGINT, None)


class ResultsWriteError(RuntimeError):
    """A job's results could not be written (e.g. a full disk); the message keeps the job's outcome."""


def _mirror(logger, key: str | None, res: dict, rows: list[dict], job_dir: Path) -> None:
    logger.log_job(res, rows, job_dir)
    if key is not None:  # the run is complete: a later skip need not log it again
        mark_mirrored(job_dir, key)


def _skip(done: tuple[str, dict], sweep_dir: Path, job: str, logger, key: str | None) -> dict:
    """A finished job: re-log it when its logger run is missing (killed between results.json and
    the logger; done under the cell's claim so two launchers do not both log it); rebuild sweep.csv."""
    folder, res = sweep_dir / done[0], done[1]
    log.info(f"[skip] {job}: config {res['config_hash'][:10]} already ok in {folder} (force=true reruns it)")
    mark_skipped(sweep_dir / job, done[0], res["config_hash"])
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
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(config, RUN_ONLY_KEYS)
    logger = instantiate(cfg.logger) if cfg.logger else NullLogger()
    key = None if isinstance(logger, NullLogger) else cfg.logger._target_
    before = find_done(sweep_dir, chash, job_dir)  # with force=true: the result this run replaces
    done = None if cfg.force else before
    if done is not None:
        return _skip(done, sweep_dir, job_dir.name, logger, key)
    prep = prepare(cfg, root)

    claim = Claim(sweep_dir, chash, job_dir.name, watch=True)
    holder = claim.acquire()
    if holder is not None:
        log.info(f"[busy] {job_dir.name}: {describe(holder)} is computing this cell; skipped here, "
                 f"its result will be in {sweep_dir}")
        rebuild_sweep_table(sweep_dir)
        return None
    try:
        done = find_done(sweep_dir, chash, warn=False)  # finished by another launcher meanwhile?
        if done is not None and (not cfg.force or before is None or
                                 (done[0], done[1].get("finished_at")) != (before[0], before[1].get("finished_at"))):
            return _skip(done, sweep_dir, job_dir.name, NullLogger(), None)
        set_threads(cfg)
        torch.manual_seed(cfg.seed)
        results = {"schema_version": SCHEMA_VERSION, "status": "ok", "error": None, "sweep": cfg.sweep_name,
                   "config": config, "config_hash": chash, "metrics": {}, "env": env_stamp(cfg.device),
                   "started_at": utc_now()}
        rows: list[dict] = []
        files: dict[str, bytes] = {}
        try:
            results["metrics"], rows, sections, files = _measure(cfg, prep)
            results.update(sections)
        except Exception as e:  # recorded, not raised: the sweep goes on and a rerun retries this job
            # the traceback goes to the job's run.log only (conf/config.yaml's console filter)
            log.error(f"job {job_dir.name} failed:\n{traceback.format_exc()}", extra={FILE_ONLY: True})
            results.update(status="failed", error=f"{type(e).__name__}: {e}")
        results["sharing"] = claim.sharing()
        results["finished_at"] = utc_now()
        with _holding_interrupts():  # Ctrl-C now would leave a half-written job folder
            try:
                for rel, data in files.items():  # before results.json, the job's commit marker
                    (job_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(job_dir / rel, data)
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
