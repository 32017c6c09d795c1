"""Run model-written Python programs: one subprocess each, time- and memory-limited, no network.

What a program gets (``run_program``):
  * a fresh ``python -I`` interpreter (no user site, no PYTHONPATH) in an empty temporary working
    directory, with a minimal environment;
  * ``resource.setrlimit`` set by the child on itself before the program runs: address space
    (``memory_mb``), CPU seconds (the timeout + 1), file size (16 MiB), no core dumps;
  * a wall-clock ``timeout_s`` after which its whole process group is killed (scored as failure);
  * no network: when ``unshare -n`` works on this machine (root, or unprivileged user namespaces)
    the program runs in a fresh network namespace with no interfaces; ALWAYS, in addition, the
    child replaces ``socket.socket`` / ``create_connection`` / ``getaddrinfo`` with versions that
    raise before the program starts. ``network_isolation()`` says which applies here;
  * destructive helpers (``os.system``, ``os.kill``, ``os.remove``, ``shutil.rmtree``,
    ``subprocess.Popen``, ...) replaced by functions that raise, as lm-eval's ``code_eval`` does.

A program passes when it runs to its end with exit status 0 (an early ``sys.exit(0)`` is a
failure). This is defence in depth for benchmark code, not a security boundary: run untrusted
models' code inside a container as well.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

_BOOTSTRAP = r"""
import resource, sys
mem, cpu, path, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                 (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(lim, (val, val))
import socket
def _no_net(*a, **k):
    raise OSError("network access is disabled in the dllm-bench sandbox")
class _NoSocket(socket.socket):
    def __init__(self, *a, **k):
        _no_net()
socket.socket = _NoSocket
socket.create_connection = socket.getaddrinfo = socket.socketpair = socket.fromfd = _no_net
import os, shutil, subprocess, builtins
def _disabled(*a, **k):
    raise PermissionError("disabled in the dllm-bench sandbox")
done = open(marker, "w")
for mod, names in ((os, "system kill killpg fork forkpty remove unlink rmdir removedirs rename "
                        "renames replace truncate putenv chmod chown setuid"),
                   (shutil, "rmtree move chown"), (subprocess, "Popen run call check_call check_output")):
    for n in names.split():
        if hasattr(mod, n):
            setattr(mod, n, _disabled)
builtins.exit = builtins.quit = _disabled
with open(path) as fh:
    src = fh.read()
sys.argv = [path]
exec(compile(src, path, "exec"), {"__name__": "__main__", "__file__": path})
done.write("done")
done.close()
"""


@dataclass
class ExecResult:
    passed: bool
    status: str          # "passed" | "failed" | "timeout"
    detail: str          # last stderr line, the signal, or the timeout
    seconds: float


@functools.lru_cache(maxsize=1)
def network_isolation() -> str:
    """``"netns+socket-patch"`` when ``unshare -n`` works here, else ``"socket-patch"``."""
    exe = shutil.which("unshare")
    if exe:
        try:
            ok = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return "netns+socket-patch"
    return "socket-patch"


def run_program(program: str, timeout_s: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """Run one Python program in the sandbox described in the module docstring."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be > 0, got {timeout_s!r}, {memory_mb!r}")
    with tempfile.TemporaryDirectory(prefix="dllm_sandbox_") as tmp:
        path, marker, err_path = (os.path.join(tmp, n) for n in ("program.py", "done", "stderr"))
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(program)
        cmd = [sys.executable, "-I", "-c", _BOOTSTRAP, str(memory_mb << 20), str(int(timeout_s) + 1),
               path, marker]
        if network_isolation().startswith("netns"):
            cmd = [shutil.which("unshare") or "unshare", "-n", *cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8", "HOME": tmp}
        start = time.perf_counter()
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:  # the group: also any children the program started
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        seconds = time.perf_counter() - start
        if timed_out:
            return ExecResult(False, "timeout", f"timed out after {timeout_s:g}s", seconds)
        finished = os.path.exists(marker) and open(marker).read() == "done"
        if proc.returncode == 0 and finished:
            return ExecResult(True, "passed", "", seconds)
        with open(err_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(err_path) - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        if proc.returncode < 0:
            detail = f"killed by signal {signal.Signals(-proc.returncode).name}"
        elif proc.returncode == 0:
            detail = "exited before the end of the program"
        else:
            detail = lines[-1] if lines else f"exit status {proc.returncode}"
        return ExecResult(False, "failed", detail, seconds)


def run_programs(programs: list[str], timeout_s: float = 3.0, memory_mb: int = 1024,
                 workers: int | None = None) -> list[ExecResult]:
    """``run_program`` over many programs with a small thread pool (one subprocess per program);
    results in input order. ``workers`` defaults to twice the usable CPUs (the children mostly
    start up and wait), at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or min(8, 2 * cpus)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s, memory_mb), programs))
