"""Run model-written Python programs (HumanEval / MBPP) contained, one at a time or in a pool.

``run_program(program, timeout_s, memory_mb, sandbox)`` runs one program and says whether it ran to
its end. Two modes:

``strict`` (the default) runs the program under bubblewrap (``bwrap``) with:
  * its own user, pid, mount, network, IPC, UTS and cgroup namespaces; no capabilities, no further
    user namespaces; no network interface but a down loopback;
  * a filesystem of only what the interpreter needs, read-only (``/usr``, the Python prefixes,
    ``/etc/ld.so.cache``; the interpreter's ctypes, test and sub-interpreter modules masked), a
    minimal read-only ``/dev``, no ``/proc``, and one writable private ``/tmp`` (tmpfs, 16 MiB) as
    its working directory; nothing else of the host (no home, no project, no sockets) is there;
  * an empty environment but for a few fixed variables;
  * a seccomp filter: the program is one process with one thread and cannot create another
    (fork, vfork, clone, clone3), cannot open sockets, send signals, trace or read other
    processes' memory, use io_uring, memfd, bpf, keyrings, mounts or namespaces;
  * resource limits: address space ``memory_mb`` (the whole tree, since the tree is one
    process), CPU seconds ``timeout_s + 1``, 16 MiB per file, 64 open files, no core dumps;
  * the wall-clock ``timeout_s``, after which bwrap and the pid namespace are killed (so is
    anything inside: nothing outlives it); ``--die-with-parent`` if the harness dies first.

``weak`` (opt-in, for machines without bwrap or user namespaces) is a plain ``python`` subprocess in
a private temporary working directory with the same environment, resource limits, timeout (its
session is killed) and, where the kernel allows it, the same seccomp filter; it has the user's view
of the filesystem and processes, so a program can read and write the user's files (and, through
``/proc/self/mem``, its own memory, where a determined program could find the pass token).

In both modes a pass is reported through a pipe with a per-run random token that the program is
never given (see ``_sandbox_boot.py``): creating a marker file, printing, ``sys.exit(0)`` or
``os._exit(0)`` before the end of the program all score as failures. Limits: a program that
exploits a memory-safety bug of the CPython interpreter itself could still forge a pass (in strict
mode it would still be contained), and the filter covers x86_64 and aarch64 only.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import platform
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

MODES = ("strict", "weak")
_BOOT = (Path(__file__).with_name("_sandbox_boot.py")).read_text(encoding="utf-8")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1", "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_TMP_BYTES = 16 << 20
_MASKED = ("_ctypes*", "_test*", "_xxsub*", "_xxinterp*", "_interp*")  # extension modules hidden in strict mode


class SandboxUnavailable(RuntimeError):
    """The strict sandbox cannot be set up on this machine (the message says what is missing)."""


@dataclass
class ExecResult:
    passed: bool
    status: str          # "passed" | "failed" | "timeout"
    detail: str          # last stderr line, the signal, or the timeout
    seconds: float


# ------------------------------------------------------------------------------ seccomp
# syscall -> (x86_64 number, aarch64 number); every one of them fails with EPERM in the sandbox
_DENIED = {
    "clone": (56, 220), "clone3": (435, 435), "fork": (57, None), "vfork": (58, None),
    "socket": (41, 198), "socketpair": (53, 199),
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424),
    "pidfd_getfd": (438, 438), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "process_madvise": (440, 440), "kcmp": (312, 272),
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "unshare": (272, 97), "setns": (308, 268),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "add_key": (248, 217),
    "request_key": (249, 218), "keyctl": (250, 219), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265),
}
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


@functools.lru_cache(maxsize=None)
def seccomp_filter(machine: str | None = None) -> bytes:
    """The sandbox's seccomp program (``struct sock_filter[]``) for ``machine`` (default: this one):
    a foreign architecture (or x32 call) is killed, the ``_DENIED`` calls fail with EPERM."""
    machine = machine or platform.machine()
    if machine not in _AUDIT_ARCH:
        raise ValueError(f"no seccomp filter for {machine!r}; known: {', '.join(_AUDIT_ARCH)}")
    col = list(_AUDIT_ARCH).index(machine)
    numbers = sorted({nrs[col] for nrs in _DENIED.values() if nrs[col] is not None})
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    checks = [(jge, 0x40000000)] if machine == "x86_64" else []  # the x32 ABI's numbers
    checks += [(jeq, nr) for nr in numbers]
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, _AUDIT_ARCH[machine]), (ret, 0, 0, 0x80000000), (ld, 0, 0, 0)]
    deny_at = len(prog) + len(checks) + 1
    prog += [(op, deny_at - (len(prog) + i + 1), 0, k) for i, (op, k) in enumerate(checks)]
    prog += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # ALLOW, ERRNO(EPERM)
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


# ------------------------------------------------------------------------------ bwrap
def _python_dirs() -> list[str]:
    """The folders the interpreter runs from (venv and base prefixes), outside /usr."""
    dirs: list[str] = []
    for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix,
              os.path.dirname(sys.executable), os.path.dirname(os.path.realpath(sys.executable))):
        p = os.path.abspath(p)
        if not any(p == d or p.startswith(d.rstrip("/") + "/") for d in ["/usr", *dirs]):
            dirs = [d for d in dirs if not d.startswith(p.rstrip("/") + "/")] + [p]
    return dirs


def _bwrap_argv(bwrap: str, program: str, filter_fd: int, info_fd: int) -> list[str]:
    argv = [bwrap, "--info-fd", str(info_fd), "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for d in _python_dirs():
        argv += ["--ro-bind", os.path.realpath(d), d]
    dynload = os.path.realpath(sysconfig.get_path("platstdlib"))
    for pattern in _MASKED:
        for so in sorted(glob.glob(os.path.join(dynload, "lib-dynload", pattern + ".so"))):
            argv += ["--ro-bind", "/dev/null", so]
    argv += ["--dev", "/dev", "--remount-ro", "/dev", "--size", str(_TMP_BYTES), "--tmpfs", "/tmp",
             "--ro-bind", program, "/sandbox/program.py", "--chdir", "/tmp", "--remount-ro", "/",
             "--seccomp", str(filter_fd)]
    for key, value in {**_ENV, "HOME": "/tmp"}.items():
        argv += ["--setenv", key, value]
    return argv + ["--", sys.executable]


# ------------------------------------------------------------------------------ running
def _pipe_with(data: bytes) -> int:
    """The read end of a pipe that holds ``data`` and is closed for writing."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def _execute(program: str, timeout_s: float, memory_mb: int, strict: bool) -> ExecResult:
    token = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="dllm_sandbox_") as tmp:
        host_prog, err_path = os.path.join(tmp, "program.py"), os.path.join(tmp, "stderr")
        with open(host_prog, "w", encoding="utf-8") as fh:
            fh.write(program)
        token_fd, filter_fd = _pipe_with(token), _pipe_with(seccomp_filter())
        status_r, status_w = os.pipe()
        info_r, info_w = os.pipe()  # strict: bwrap writes {"child-pid": <the pid namespace's init>} there
        args = [str(token_fd), str(status_w), str(memory_mb << 20), str(int(timeout_s) + 1)]
        if strict:
            cwd, env, fds = tmp, {}, (token_fd, status_w, filter_fd, info_w)
            cmd = _bwrap_argv(shutil.which("bwrap") or "bwrap", host_prog, filter_fd, info_w)
            cmd += ["-c", _BOOT, "/sandbox/program.py", *args, "-1"]
        else:
            cwd = os.path.join(tmp, "work")
            os.mkdir(cwd)
            env, fds = {**_ENV, "HOME": cwd}, (token_fd, status_w, filter_fd)
            cmd = [sys.executable, "-c", _BOOT, host_prog, *args, str(filter_fd)]
        start = time.perf_counter()
        try:
            with open(err_path, "wb") as err:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=err, pass_fds=fds, start_new_session=True)
        except BaseException:
            os.close(status_r)
            os.close(info_r)
            raise
        finally:
            for fd in (token_fd, status_w, filter_fd, info_w):
                os.close(fd)
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(proc, _read_now(info_r))
        seconds = time.perf_counter() - start
        reported = _read_now(status_r)
        if timed_out:
            return ExecResult(False, "timeout", f"timed out after {timeout_s:g}s", seconds)
        if reported == token:
            return ExecResult(True, "passed", "", seconds)
        return ExecResult(False, "failed", _failure_detail(err_path, proc.returncode, strict), seconds)


def _read_now(fd: int) -> bytes:
    """What a pipe holds now (up to 4 KiB); closes it."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    finally:
        os.close(fd)


def _kill(proc: subprocess.Popen, info: bytes) -> None:
    """Kill the sandbox and wait until nothing of it is left. In the strict mode the pid namespace's
    init (bwrap's ``child-pid``) is killed first: the kernel then kills every process inside, and bwrap
    exits only once it has reaped that init, i.e. once the namespace is empty."""
    try:
        os.kill(int(json.loads(info)["child-pid"]), signal.SIGKILL)
        proc.wait(timeout=10)
    except (ValueError, KeyError, TypeError, ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        pass  # weak mode (no info), already gone, or stuck: the group is killed below either way
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _failure_detail(err_path: str, code: int, strict: bool) -> str:
    with open(err_path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(err_path) - 4096))
        lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    if lines:
        return lines[-1]
    if strict and code > 128:  # bwrap reports a child killed by a signal as 128 + the signal
        code = 128 - code
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return "exited before the end of the program" if code == 0 else f"exit status {code}"


@functools.lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """None when the strict sandbox works on this machine, else what is missing (one line)."""
    if not sys.platform.startswith("linux"):
        return f"it needs Linux, this is {sys.platform}"
    if platform.machine() not in _AUDIT_ARCH:
        return f"its seccomp filter knows {', '.join(_AUDIT_ARCH)}, this machine is {platform.machine()}"
    if shutil.which("bwrap") is None:
        return "bwrap (bubblewrap) is not on PATH"
    probe = _execute("pass\n", 60.0, 512, strict=True)
    return None if probe.passed else f"a test program did not run under bwrap ({probe.detail})"


def check_sandbox(sandbox: str) -> None:
    """Raise unless programs can run in mode ``sandbox`` here (``ValueError`` for an unknown mode,
    ``SandboxUnavailable`` with what is missing for ``strict``)."""
    if sandbox not in MODES:
        raise ValueError(f"unknown sandbox {sandbox!r}; valid: {', '.join(MODES)}")
    if sandbox == "strict" and (problem := sandbox_problem()) is not None:
        raise SandboxUnavailable(
            f"code execution refused: the sandbox cannot be set up here: {problem}; install bubblewrap "
            f"(apt-get install bubblewrap) with user namespaces enabled, or opt in to weaker isolation "
            f"with sandbox='weak' (sweep: task.sandbox=weak)")


def run_program(program: str, timeout_s: float = 3.0, memory_mb: int = 1024, sandbox: str = "strict") -> ExecResult:
    """Run one Python program in the sandbox described in the module docstring."""
    if not (timeout_s > 0 and memory_mb > 0):
        raise ValueError(f"timeout_s and memory_mb must be > 0, got {timeout_s!r}, {memory_mb!r}")
    check_sandbox(sandbox)
    return _execute(program, timeout_s, memory_mb, strict=sandbox == "strict")


def run_programs(programs: list[str], timeout_s: float = 3.0, memory_mb: int = 1024,
                 workers: int | None = None, sandbox: str = "strict") -> list[ExecResult]:
    """``run_program`` over many programs with a small thread pool (one sandbox per program);
    results in input order. ``workers`` defaults to twice the usable CPUs (the children mostly
    start up and wait), at most 8."""
    check_sandbox(sandbox)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = workers or min(8, 2 * cpus)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout_s, memory_mb, sandbox), programs))
