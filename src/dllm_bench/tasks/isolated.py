"""Run a harness task in a worker process with its own ``antlr4`` (MATH beside Hydra).

lm-eval's ``minerva_math`` asserts ``antlr4-python3-runtime`` 4.11 (sympy's LaTeX parser is
generated for it) while hydra-core 1.3 / omegaconf need 4.9, and one interpreter can hold only one
``antlr4``. So where the current environment has 4.9, ``get_task("minerva_math")`` starts a worker
(``python -m dllm_bench.tasks.isolated``) whose ``sys.path`` puts a side folder holding antlr4 4.11
first; the worker builds the harness task there and answers ``samples`` / ``score`` /
``score_batch`` calls over a pipe. Prompts and scores are lm-eval's own, as in one process.

The side folder is ``$DLLM_BENCH_MATH_DEPS`` or ``~/.cache/dllm_bench/math-deps``; fill it once with

    python -m dllm_bench.tasks.isolated install     # pip install --target <folder> antlr4-python3-runtime==4.11.0
"""
from __future__ import annotations

import inspect
import os
import pickle
import struct
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .harness_tasks import HARNESS_FEWSHOT_SEED, HarnessTask

ANTLR_PIN = "antlr4-python3-runtime==4.11.0"


def deps_dir() -> Path:
    return Path(os.environ.get("DLLM_BENCH_MATH_DEPS") or Path.home() / ".cache" / "dllm_bench" / "math-deps")


def _has_antlr_411(folder: Path) -> bool:
    return any(folder.glob("antlr4_python3_runtime-4.11*.dist-info")) and (folder / "antlr4").is_dir()


def install(folder: Path | None = None) -> Path:
    """``pip install --target`` antlr4 4.11 into the side folder (needs the package index)."""
    folder = folder or deps_dir()
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--target", str(folder), ANTLR_PIN], check=True)
    return folder


def math_task(name: str = "minerva_math", **kwargs):
    """``minerva_math``: in this process when its antlr4 is 4.11, else in an :class:`IsolatedTask`.
    Takes HarnessTask's arguments (its signature is HarnessTask's, so the registry checks them)."""
    try:
        here = version("antlr4-python3-runtime")
    except PackageNotFoundError:
        here = None
    if here is not None and here.startswith("4.11"):
        return HarnessTask(name, **kwargs)
    folder = deps_dir()
    if not _has_antlr_411(folder):
        raise ImportError(f"{name} needs {ANTLR_PIN} (lm-eval[math]; this environment has antlr4 {here}, "
                          f"which hydra-core 1.3 pins): run `python -m dllm_bench.tasks.isolated install` "
                          f"to put it in {folder} (or set DLLM_BENCH_MATH_DEPS)")
    return IsolatedTask(name, folder, **kwargs)


math_task.__signature__ = inspect.signature(HarnessTask)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ the pipe
def _send(stream, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("task worker closed the pipe")
    (n,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(n))


class IsolatedTask:
    """A :class:`~dllm_bench.tasks.harness_tasks.HarnessTask` living in a worker process whose
    ``sys.path`` starts with ``side_path``. Same attributes and methods; errors re-raised here."""

    _ATTRS = ("name", "stop_sequences", "requires_code_execution", "num_fewshot", "generation_kwargs",
              "metric", "primary_filter", "fewshot_seed", "data_dir")

    def __init__(self, name: str, side_path: str | Path, **kwargs):
        import dllm_bench

        pkg_root = str(Path(dllm_bench.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(side_path), pkg_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "dllm_bench.tasks.isolated", "serve"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        attrs = self._call("__init__", name, **kwargs)
        for key in self._ATTRS:
            setattr(self, key, attrs[key])
        self.worker_antlr = attrs["antlr4"]

    def _call(self, method: str, *args, **kwargs):
        if self._proc.poll() is not None:
            raise RuntimeError(f"task worker exited with code {self._proc.returncode}")
        _send(self._proc.stdin, (method, args, kwargs))
        ok, value = _recv(self._proc.stdout)
        if not ok:
            if method == "__init__":
                self.close()
            raise value
        return value

    def samples(self, n=None, seed: int = HARNESS_FEWSHOT_SEED):
        return self._call("samples", n, seed)

    def score(self, sample, output: str):
        return self._call("score", sample, output)

    def score_batch(self, samples, outputs):
        return self._call("score_batch", samples, outputs)

    def close(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def __del__(self):
        self.close()


def serve() -> None:
    """Worker loop: the first message builds the task, later ones call its methods."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed by libraries must not corrupt the pipe
    task = None
    while True:
        try:
            method, args, kwargs = _recv(inp)
        except EOFError:
            return
        try:
            if method == "__init__":
                task = HarnessTask(*args, **kwargs)
                value = {k: getattr(task, k) for k in IsolatedTask._ATTRS} | {"antlr4": version("antlr4-python3-runtime")}
            else:
                value = getattr(task, method)(*args, **kwargs)
            reply = (True, value)
        except Exception as e:  # noqa: BLE001 - handed to the parent as is
            reply = (False, e)
        try:
            _send(out, reply)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            _send(out, (False, RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({e})")))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve()
    elif argv[:1] == ["install"]:
        folder = install(Path(argv[1]) if len(argv) > 1 else None)
        print(f"installed {ANTLR_PIN} into {folder}")
    else:
        raise SystemExit("usage: python -m dllm_bench.tasks.isolated install [folder]")


if __name__ == "__main__":
    main()
