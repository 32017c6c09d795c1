"""Results on disk (the contract of docs/results_schema.md): atomic writes, config hash, env stamp,
and the checks that decide whether a job folder holds a finished job.

Every file is written to a temp file in the same folder and renamed over the target, so a job
killed mid-write leaves either the previous file or the new one, never half of one. A job writes
``samples.jsonl`` first and ``results.json`` last; results.json records the row count, size and
sha256 of the samples it describes, so it is the commit marker of both. ``load_job`` trusts a
folder only when results.json is a well-formed object and its samples match; anything else is
reported as a one-line problem and the job is computed again. The sweep table ``sweep.csv`` is
rebuilt from every valid ``*/results.json`` of the sweep folder under a file lock, so parallel jobs
never lose each other's rows.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import socket
import subprocess
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .config import TimingConf
from .metrics.timing import cpu_name

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
RESULTS, SAMPLES, SWEEP_TABLE, MIRRORED = "results.json", "samples.jsonl", "sweep.csv", ".mirrored.json"
STATUSES = ("ok", "failed")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + rename (atomic on POSIX)."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file + rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# Keys (dotted for nested ones) added after sweeps already existed, with the value that reproduces the
# old behaviour: left out of the hash at that value, so folders written before the key existed stay
# resumable. A shard's hash keeps its `shard`: shards of one cell are different jobs.
LATER_KEYS = {"fused": False, "cfg_scale": 0.0, "timing": asdict(TimingConf()), "protocol": "clean", "shard": None,
              "task.protocol": "clean", "decoding.alg": None, "metrics.agreement": False,
              "metrics.agreement_samples": None, "metrics.replays": 0}
# Keys renamed since (new name -> the name hashed), and plugin-node keys the hash fills in at their
# old value when a plugin does not take them (the decoding node once listed every rule's argument).
RENAMED_KEYS = {"measure": "metrics"}
LEGACY_NODES = {"decoding": {"threshold": None, "factor": None, "temperature": 0.0, "remasking": "low_confidence"},
                "metrics": {"warmup": True}}


def _canonical(config: dict) -> dict:
    """The config as hashed: ``_target_`` paths dropped (a plugin is identified by its name), renamed
    keys under their old names, later-added keys at their old value left out."""
    out = {RENAMED_KEYS.get(k, k): v for k, v in config.items()}
    for node in ("cache", "decoding"):
        if isinstance(out.get(node), dict):
            out[node] = {k: v for k, v in out[node].items() if k != "_target_"}
    for node, old in LEGACY_NODES.items():
        if isinstance(out.get(node), dict):
            out[node] = {**old, **out[node]}
    for key, old in LATER_KEYS.items():
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            if not isinstance(node.get(p), dict):
                break
            node[p] = node = dict(node[p])
        else:
            if leaf in node and node[leaf] == old:
                del node[leaf]
    return out


def config_hash(config: dict, run_only: Iterable[str] = ()) -> str:
    """sha256 of the canonical JSON of the resolved config minus the run-only top-level keys
    (and minus later-added keys at their old-behaviour value, see ``LATER_KEYS``)."""
    kept = {k: v for k, v in _canonical(config).items() if k not in set(run_only)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def env_stamp(device: str = "cpu") -> dict[str, Any]:
    """Versions and hardware: device name, torch, CUDA, transformers, dllm_bench, git commit."""
    import torch
    import transformers

    import dllm_bench

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()
    return {"device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "transformers": transformers.__version__, "dllm_bench": dllm_bench.__version__,
            "git_commit": _git_commit(Path(dllm_bench.__file__).resolve().parent),
            "hostname": socket.gethostname(), "python": platform.python_version()}


SKIPPED = "skipped.json"


def mark_skipped(job_dir: str | Path, holder: str, chash: str) -> None:
    """Record in a job folder that the sweep skipped it: its config is the one job ``holder`` of the
    same sweep holds results for (``analysis`` reads this instead of recomputing hashes)."""
    job_dir = Path(job_dir)
    if job_dir.name != holder and job_dir.is_dir():
        atomic_write_text(job_dir / SKIPPED, json.dumps({"duplicate_of": holder, "config_hash": chash}) + "\n")


def write_job(job_dir: str | Path, results: dict, samples: list[dict]) -> Path:
    """Write ``samples.jsonl`` then ``results.json`` (last: the commit marker of both). Adds
    ``results["samples"]``: the rows' count, byte size and sha256, checked by ``load_job``."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(s, default=str) + "\n" for s in samples).encode()
    results["samples"] = {"count": len(samples), "bytes": len(text), "sha256": hashlib.sha256(text).hexdigest()}
    atomic_write_text(job_dir / SAMPLES, text.decode())
    return atomic_write_text(job_dir / RESULTS, json.dumps(results, indent=2, default=str) + "\n")


def _schema_problem(res) -> str | None:
    if not isinstance(res, dict):
        return f"{RESULTS} holds a JSON {type(res).__name__}, not an object"
    if res.get("status") not in STATUSES:
        return f"{RESULTS} has status {res.get('status')!r} (expected one of {', '.join(STATUSES)})"
    for key, kind in (("config_hash", str), ("config", dict), ("metrics", dict)):
        if not isinstance(res.get(key), kind):
            return f"{RESULTS} has no {key} {kind.__name__}"
    if "samples" in res:
        rec = res["samples"]
        if not (isinstance(rec, dict) and all(isinstance(rec.get(k), int) for k in ("count", "bytes"))
                and isinstance(rec.get("sha256"), str)):
            return f"{RESULTS} has a malformed samples record {rec!r}"
    return None


def _samples_problem(job_dir: Path, res: dict, full: bool) -> str | None:
    """Does samples.jsonl match what results.json says? ``full``: hash it (else: size only).
    Results written before the samples record existed are checked by row count and JSON."""
    path = job_dir / SAMPLES
    try:
        data = path.read_bytes() if full or "samples" not in res else None
        size = path.stat().st_size
    except OSError:
        return f"{SAMPLES} is missing or unreadable"
    rec = res.get("samples")
    if rec is not None:
        if size != rec["bytes"]:
            return f"{SAMPLES} has {size} bytes, {RESULTS} says {rec['bytes']}"
        if full and hashlib.sha256(data).hexdigest() != rec["sha256"]:
            return f"{SAMPLES} does not match the sha256 recorded in {RESULTS}"
        return None
    lines = data.splitlines()
    try:
        if not all(isinstance(json.loads(line), dict) for line in lines):
            raise ValueError
    except ValueError:
        return f"{SAMPLES} holds a line that is not a JSON object"
    if len(lines) != res["metrics"].get("n_samples"):
        return f"{SAMPLES} has {len(lines)} rows, {RESULTS} says {res['metrics'].get('n_samples')}"
    return None


def load_job(job_dir: str | Path, full: bool = True) -> tuple[dict | None, str | None]:
    """(results, None) for a job folder that can be trusted, (None, None) for one without
    results.json, (whatever was read, problem) otherwise. The samples of an ok job must match the
    record in results.json (``full``: by sha256, else by size); a failed job's samples are not used."""
    job_dir = Path(job_dir)
    try:
        text = (job_dir / RESULTS).read_text()
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"{RESULTS} is unreadable ({type(e).__name__}: {e})"
    try:
        res = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{RESULTS} is not valid JSON ({e})"
    problem = _schema_problem(res)
    if problem is None and res["status"] == "ok":
        problem = _samples_problem(job_dir, res, full)
    return res, problem


def read_samples(job_dir: str | Path) -> list[dict]:
    return [json.loads(line) for line in (Path(job_dir) / SAMPLES).read_text().splitlines()]


def read_results(sweep_dir: str | Path, full: bool = False) -> list[tuple[str, dict]]:
    """(job folder name, results) for every trusted ``<job>/results.json`` in the sweep folder
    (``load_job``; samples checked by size unless ``full``)."""
    out = []
    for f in sorted(Path(sweep_dir).glob(f"*/{RESULTS}")):
        res, problem = load_job(f.parent, full)
        if res is not None and problem is None:
            out.append((f.parent.name, res))
    return out


def find_done(sweep_dir: str | Path, chash: str, job_dir: str | Path | None = None,
              warn: bool = True) -> tuple[str, dict] | None:
    """The first trusted job of the sweep folder with this config hash and ``status: ok``, if any.
    When there is none (and ``warn``), each folder that claims this hash (or is ``job_dir``) but
    cannot be trusted gets a one-line warning: it is about to be computed again."""
    problems = []
    for f in sorted(Path(sweep_dir).glob(f"*/{RESULTS}")):
        res, problem = load_job(f.parent, full=False)
        ours = isinstance(res, dict) and res.get("config_hash") == chash
        if problem is None and ours and res["status"] == "ok":
            res, problem = load_job(f.parent, full=True)
            if problem is None:
                return f.parent.name, res
        if problem is not None and (ours or (job_dir is not None and f.parent == Path(job_dir))):
            problems.append(f"[redo] {f.parent.name}: {problem}; computing it again")
    for p in problems if warn else ():
        log.warning(p)
    return None


def mirrored(job_dir: str | Path, logger_key: str) -> bool:
    """Was this job's current results.json mirrored by the logger ``logger_key``? Results written
    before the samples record existed count as mirrored (their logger run cannot be checked)."""
    job_dir = Path(job_dir)
    try:
        text = (job_dir / RESULTS).read_bytes()
        if "samples" not in json.loads(text):
            return True
        marks = json.loads((job_dir / MIRRORED).read_text())
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(marks, dict) and marks.get(logger_key) == hashlib.sha256(text).hexdigest()


def mark_mirrored(job_dir: str | Path, logger_key: str) -> None:
    job_dir = Path(job_dir)
    try:
        marks = json.loads((job_dir / MIRRORED).read_text())
    except (OSError, json.JSONDecodeError):
        marks = {}
    marks = marks if isinstance(marks, dict) else {}
    marks[logger_key] = hashlib.sha256((job_dir / RESULTS).read_bytes()).hexdigest()
    atomic_write_text(job_dir / MIRRORED, json.dumps(marks, indent=2) + "\n")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


@contextmanager
def _locked(path: Path):
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def rebuild_sweep_table(sweep_dir: str | Path) -> Path:
    """Rewrite ``sweep.csv``: job_dir, status, config_hash, config.* leaves, metrics.*."""
    sweep_dir = Path(sweep_dir)
    with _locked(sweep_dir / f".{SWEEP_TABLE}.lock"):
        rows = []
        for job, res in read_results(sweep_dir):
            row = {"job_dir": job, "status": res.get("status"), "config_hash": res.get("config_hash")}
            row.update(flatten(res.get("config") or {}))
            row.update(flatten(res.get("sharing") or {}, "sharing."))
            row.update(flatten(res.get("metrics") or {}, "metrics."))
            rows.append(row)
        head = ["job_dir", "status", "config_hash"]
        cols = head + sorted({k for r in rows for k in r} - set(head),
                             key=lambda k: (k.startswith("metrics."), k))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return atomic_write_text(sweep_dir / SWEEP_TABLE, buf.getvalue())
