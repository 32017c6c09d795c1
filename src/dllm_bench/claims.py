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
``<tmp>/dllm_bench-jobs``): one file per job with its start time, touched at every heartbeat and
given its end time at release (kept ``KEEP_S``, for the jobs it overlapped). ``sharing()`` lists
the other jobs of this host whose run overlapped this one (a killed job's run ends at its last
heartbeat), the most of them that ran at once, and the highest 1-minute load average seen
(sampled at the start, every heartbeat and the end; it counts this job too).
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
KEEP_S = 86400.0
CLAIMS = ".claims"


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a running process on this host (zombies count as dead)?"""
    if pid <= 0:  # os.kill(0 or -1, ...) would address process groups
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or no pid at all (a garbage record)
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


def most_at_once(runs: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs])  # ends first on ties
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


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
        self.watch, self.lost, self.load_max = watch, False, 0.0
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
        self._sample_load()
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
            if self._entry is not None:
                with contextlib.suppress(OSError):
                    os.utime(self._entry)
            self._sample_load()

    def _register(self) -> None:
        reg = _registry()
        try:
            if not reg.is_dir():
                reg.mkdir(parents=True, exist_ok=True)
                reg.chmod(0o1777)  # shared by every user of the host, like /tmp
            now = time.time()
            for f, _, _, end in self._registered():
                if now - end > KEEP_S:  # another user's file is not ours to remove
                    with contextlib.suppress(OSError):
                        f.unlink()
            entry = reg / f"{self.owner['host']}-{self.owner['pid']}-{self.owner['token'][:12]}.json"
            atomic_write_text(entry, json.dumps(self.owner) + "\n")
            self._entry = entry
        except OSError as e:
            log.warning(f"[claim] cannot register in {reg} ({e}); other jobs on this host are not tracked")

    def _registered(self):
        """(file, owner record, start, end) of every other job registered on this host; a running
        job ends now, a killed one at its last heartbeat."""
        now = time.time()
        for f in _registry().glob("*.json"):
            other = _read(f)
            if other is None or other.get("token") == self.owner["token"] or other.get("host") != self.owner["host"]:
                continue
            try:
                end = other.get("ended") or (now if pid_alive(_pid(other)) else f.stat().st_mtime)
                yield f, other, float(other.get("started") or 0), float(end)
            except (OSError, TypeError, ValueError):
                continue

    def _sample_load(self) -> None:
        if hasattr(os, "getloadavg"):
            self.load_max = max(self.load_max, os.getloadavg()[0])

    def sharing(self) -> dict:
        """What shared this host with the job so far (see module doc)."""
        self._sample_load()
        lo, hi = self.owner["started"], time.time()
        runs = [(describe(o), max(lo, start), min(hi, end))
                for _, o, start, end in (self._registered() if self._entry is not None else ())]
        runs = [r for r in runs if r[1] < r[2]]
        return {"other_jobs": sorted({r[0] for r in runs}), "other_jobs_max": most_at_once([r[1:] for r in runs]),
                "load_1m_max": round(self.load_max, 2), "cpus": os.cpu_count(), "tracked": self._entry is not None}

    def release(self) -> None:
        """Stop the heartbeat, remove the claim (if still ours), record the end in the host registry."""
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
            with contextlib.suppress(OSError):
                atomic_write_text(self._entry, json.dumps(dict(self.owner, ended=time.time())) + "\n")
