"""Results on disk (the contract of docs/results_schema.md): atomic writes, config hash, env stamp.

Every file is written to a temp file in the same folder and renamed over the target, so a job
killed mid-write leaves either the previous file or the new one, never half of one. The sweep
table ``sweep.csv`` is rebuilt from every ``*/results.json`` of the sweep folder under a file lock,
so parallel jobs never lose each other's rows.
"""
from __future__ import annotations

import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import socket
import subprocess
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .metrics.timing import cpu_name

SCHEMA_VERSION = 1
RESULTS, SAMPLES, SWEEP_TABLE = "results.json", "samples.jsonl", "sweep.csv"


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file + rename (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# Top-level keys added after sweeps already existed, with the value that reproduces the old behaviour:
# left out of the hash at that value, so folders written before the key existed stay resumable.
LATER_KEYS = {"fused": False, "cfg_scale": 0.0}
# Keys renamed since (new name -> the name hashed), and plugin-node keys the hash fills in at their
# old value when a plugin does not take them (the decoding node once listed every rule's argument).
RENAMED_KEYS = {"measure": "metrics"}
LEGACY_DECODING = {"threshold": None, "factor": None, "temperature": 0.0, "remasking": "low_confidence"}
# Plugin arguments added after sweeps existed, left out of the hash at their old-behaviour value.
LATER_NODE_KEYS = {"decoding": {"alg": None}}


def _canonical(config: dict) -> dict:
    """The config as hashed: ``_target_`` paths dropped (a plugin is identified by its name)."""
    out = {RENAMED_KEYS.get(k, k): v for k, v in config.items()}
    for node in ("cache", "decoding"):
        if isinstance(out.get(node), dict):
            later = LATER_NODE_KEYS.get(node, {})
            out[node] = {k: v for k, v in out[node].items()
                         if k != "_target_" and not (k in later and v == later[k])}
    if isinstance(out.get("decoding"), dict):
        out["decoding"] = {**LEGACY_DECODING, **out["decoding"]}
    return out


def config_hash(config: dict, run_only: Iterable[str] = ()) -> str:
    """sha256 of the canonical JSON of the resolved config minus the run-only top-level keys
    (and minus later-added keys at their old-behaviour value, see ``LATER_KEYS``)."""
    kept = {k: v for k, v in _canonical(config).items()
            if k not in set(run_only) and not (k in LATER_KEYS and v == LATER_KEYS[k])}
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


def write_job(job_dir: str | Path, results: dict, samples: list[dict]) -> Path:
    """Write ``samples.jsonl`` then ``results.json`` (last: its presence marks a finished job)."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / SAMPLES, "".join(json.dumps(s, default=str) + "\n" for s in samples))
    return atomic_write_text(job_dir / RESULTS, json.dumps(results, indent=2, default=str) + "\n")


def read_results(sweep_dir: str | Path) -> list[tuple[str, dict]]:
    """(job folder name, results) for every readable ``<job>/results.json`` in the sweep folder."""
    out = []
    for f in sorted(Path(sweep_dir).glob(f"*/{RESULTS}")):
        try:
            out.append((f.parent.name, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError):
            continue  # another job's file being replaced; it is rebuilt at that job's end
    return out


def find_done(sweep_dir: str | Path, chash: str) -> tuple[str, dict] | None:
    """The first job of the sweep folder with this config hash and ``status: ok``, if any."""
    for job, res in read_results(sweep_dir):
        if res.get("config_hash") == chash and res.get("status") == "ok":
            return job, res
    return None


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
