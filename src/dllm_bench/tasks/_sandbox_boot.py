"""The runner inside the sandbox: ``python -c <this file> PROGRAM TOKEN_FD STATUS_FD MEM CPU FILTER_FD``.

It is run as a script, never imported (``dllm_bench.tasks.sandbox`` passes its text to ``-c``), and
runs trusted code only until the program starts:

1. reads the run's pass token from TOKEN_FD and closes it (the token is in no file, argument or
   environment variable the program can read);
2. sets the resource limits (address space, CPU seconds, file size, open files, no core dumps);
3. where FILTER_FD >= 0 (the weak mode; bwrap has already loaded it in the strict mode), installs
   that seccomp filter itself, if the kernel allows;
4. installs an audit hook that refuses the ways a pure-Python program could read the token back out
   of this interpreter or skip its own tests (ctypes, gc referrer walks, other threads' frames,
   trace functions that jump lines, hand-made code objects, the interpreter's test modules);
5. runs the program through a chain of C iterators that writes the token to STATUS_FD only when
   ``exec`` of the whole program returned normally. The token lives only inside those iterators:
   no Python frame of the program or of this runner holds it.
"""
import builtins
import collections
import itertools
import os
import resource
import sys
import traceback

_BLOCKED = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
                      "sys._current_exceptions", "sys.settrace", "sys._settraceallthreads", "code.__new__"})
_BLOCKED_IMPORTS = ("_test", "_xxsubinterpreters", "_xxinterpchannels", "_interp", "_ctypes")


def _guard(event, args):
    if (event in _BLOCKED or event.startswith("ctypes.")
            or (event == "import" and str(args[0]).startswith(_BLOCKED_IMPORTS))):
        raise PermissionError(f"{event} is disabled in the dllm-bench sandbox")


def _install_filter(fd):
    """Load a seccomp filter (an array of struct sock_filter) read from ``fd``; False if refused."""
    import ctypes

    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    os.close(fd)

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prog = Prog(len(data) // 8, data)
    if prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER


def _run(job):
    source, path, namespace = job
    try:
        exec(compile(source, path, "exec"), namespace)
    except BaseException:  # noqa: B036 - every way out but the end of the program is a failure
        try:
            traceback.print_exc()
        except BaseException:  # noqa: B036
            pass
        return False
    return True


def _chain(token_fd, status_fd, job):
    """The program's run, as iterators: ``os.write(status_fd, token)`` iff ``_run(job)`` is True."""
    token = os.read(token_fd, 64)
    os.close(token_fd)
    return map(os.write, itertools.repeat(status_fd, 1), itertools.compress([token], map(_run, [job])))


def main():
    path, token_fd, status_fd, mem, cpu, filter_fd = sys.argv[1], *map(int, sys.argv[2:])
    os.set_inheritable(status_fd, False)
    for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, 16 << 20),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(lim, (val, val))
    if filter_fd >= 0 and not _install_filter(filter_fd):
        print("dllm-bench sandbox: the seccomp filter could not be installed; running without it",
              file=sys.stderr)
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    sys.argv = [path]
    sys.addaudithook(_guard)
    consume = collections.deque(maxlen=0).extend
    consume(_chain(token_fd, status_fd, (source, path, namespace)))
    os._exit(0)


if __name__ == "__main__":
    main()
