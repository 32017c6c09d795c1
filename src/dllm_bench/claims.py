"""Per-job claims, so that launchers sharing a sweep folder never compute the same cell at once,
and a record of what else ran on the machine while a job was measured.

A claim is ``<sweep>/.claims/<config_hash>.json`` naming its owner (host, pid, job folder, start
time, a random token); its mtime is the heartbeat, renewed every ``HEARTBEAT_S`` seconds by a
daemon thread while the job runs. A claim is stale, and may be taken over, when its owner ran on
this host and its pid is gone (a killed launcher), or when its heartbeat is older than
``STALE_S`` (an owner on another host that died, or a hung process). Checking and taking happen
under an flock of ``.claims/.lock``, so two launchers never both take one cell. A launcher that
finds a live claim skips the cell (``run_job`` says so and returns); the owner writes the result
into the sweep folder, where the next run finds it.

With ``watch=True`` the job also registers in a per-host folder (``DLLM_BENCH_JOBS_DIR``, default
``<tmp>/dllm_bench-jobs``); the heartbeat thread notes the other live jobs registered there and the
1-minute load average, which ``sharing()`` returns for results.json. Both are samples (at the
start, every heartbeat and the end): a job shorter than a heartbeat that ran in between is missed.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from .results import atomic_write_text

log = logging.getLogger(__name__)
HEARTBEAT_S = 20.0
STALE_S = 120.0
CLAIMS = ".claims"


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process on this host (zombies count as dead)?"""
    if pid <= 0:  # os.kill(0 or -1, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def describe(owner: dict) -> str:
    return f"{owner.get('host')}:{owner.get('pid')} ({owner.get('job')})"


def _pid(owner: dict | None) -> int:
    try:
        return int((owner or {}).get("pid"))
    except (TypeError, ValueError):
        return -1


def _registry() -> Path:
    return Path(os.environ.get("DLLM_BENCH_JOBS_DIR") or Path(tempfile.gettempdir()) / "dllm_bench-jobs")


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Claim:
    """One cell of a sweep, held by this process while it computes it (see module doc)."""

    def __init__(self, sweep_dir: str | Path, key: str, job: str, watch: bool = False):
        self.dir = Path(sweep_dir) / CLAIMS
        self.path = self.dir / f"{key}.json"
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "job": job,
                      "started": time.time(), "token": uuid.uuid4().hex}
        self.watch, self.lost = watch, False
        self.others: set[str] = set()
        self.others_max, self.load_max = 0, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._entry: Path | None = None

    def stale(self, holder: dict | None, mtime: float) -> bool:
        if holder is None:  # unreadable: a torn write of a process that died mid-claim
            return True
        dead_here = holder.get("host") == self.owner["host"] and not pid_alive(_pid(holder))
        return dead_here or time.time() - mtime > STALE_S

    def acquire(self) -> dict | None:
        """Take the claim: None when taken, else the live holder's owner record."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.path.exists():
                    holder = _read(self.path)
                    if not self.stale(holder, self.path.stat().st_mtime):
                        return holder
                    log.warning(f"[claim] {self.owner['job']}: taking over the stale claim of "
                                f"{describe(holder or {})}")
                atomic_write_text(self.path, json.dumps(self.owner) + "\n")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if self.watch:
            self._register()
        self._observe()
        self._thread = threading.Thread(target=self._beat, name="dllm-bench-claim", daemon=True)
        self._thread.start()
        return None

    def _owned(self) -> bool:
        return (_read(self.path) or {}).get("token") == self.owner["token"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if self._owned():
                try:
                    os.utime(self.path)
                except OSError:
                    pass
            elif not self.lost:
                self.lost = True
                log.warning(f"[claim] {self.owner['job']}: another launcher took this cell's claim "
                            f"(this process missed its heartbeats); both will write a result")
            self._observe()

    def _register(self) -> None:
        try:
            reg = _registry()
            if not reg.is_dir():
                reg.mkdir(parents=True, exist_ok=True)
                reg.chmod(0o1777)  # shared by every user of the host, like /tmp
            self._entry = reg / f"{self.owner['host']}-{self.owner['pid']}.json"
            atomic_write_text(self._entry, json.dumps(self.owner) + "\n")
        except OSError as e:
            log.warning(f"[claim] cannot register in {_registry()} ({e}); other jobs on this host are not tracked")
            self._entry = None

    def _observe(self) -> None:
        if not self.watch:
            return
        live = set()
        if self._entry is not None:
            for f in self._entry.parent.glob("*.json"):
                other = _read(f)
                if f == self._entry or other is None or other.get("host") != self.owner["host"]:
                    continue
                if pid_alive(_pid(other)):
                    live.add(describe(other))
                else:  # a job killed before it could unregister (another user's: not ours to remove)
                    with contextlib.suppress(OSError):
                        f.unlink(missing_ok=True)
        self.others |= live
        self.others_max = max(self.others_max, len(live))
        if hasattr(os, "getloadavg"):
            self.load_max = max(self.load_max, os.getloadavg()[0])

    def sharing(self) -> dict:
        """What shared this host with the job so far (see module doc)."""
        self._observe()
        return {"other_jobs": sorted(self.others), "other_jobs_max": self.others_max,
                "load_1m_max": round(self.load_max, 2), "cpus": os.cpu_count(),
                "tracked": self._entry is not None}

    def release(self) -> None:
        """Stop the heartbeat and remove the claim (if still ours) and the host registration."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self._owned():
                    self.path.unlink(missing_ok=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if self._entry is not None:
            self._entry.unlink(missing_ok=True)
