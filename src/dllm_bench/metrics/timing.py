"""Timing and memory done the same way everywhere: synchronize around ``perf_counter``, medians
and percentiles over samples, peak memory reset before the timed run.

GPU peak memory is ``torch.cuda.max_memory_allocated`` since ``reset_peak``; CPU peak memory is the
process's peak RSS (``resource.getrusage``), which cannot be reset and so covers the whole process.
"""
from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds`` (synchronized on CUDA)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device, self.seconds = device, 0.0

    def __enter__(self):
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        return False


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int:
    """GPU: max allocated since ``reset_peak``; CPU: peak RSS of this process."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS: bytes, Linux: KiB


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(values: list[float], prefix: str = "latency_s") -> dict[str, float]:
    """{prefix_mean, prefix_median, prefix_p90} of per-sample latencies."""
    if not values:
        return {f"{prefix}_mean": None, f"{prefix}_median": None, f"{prefix}_p90": None}
    return {f"{prefix}_mean": sum(values) / len(values), f"{prefix}_median": percentile(values, 50),
            f"{prefix}_p90": percentile(values, 90)}


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), for stamping measurements with their machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model with the number of torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.get_num_threads()} torch threads)"


def _cpu_busy_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """``with LoadMeter() as m: ...`` then ``m.result()``: how loaded the machine was meanwhile.

    ``load_1m`` (the 1-minute load average, max of before/after), ``other_cpu`` (CPUs kept busy by
    other processes, on average: machine busy time minus this process's CPU time, over the wall
    time; Linux only), ``cpus`` and ``torch_threads``. A timing taken with ``other_cpu`` near or
    above ``cpus - torch_threads`` shared its cores and is not to be trusted.
    """

    def __enter__(self):
        self._t0, self._busy0, self._own0 = time.perf_counter(), _cpu_busy_seconds(), time.process_time()
        self._load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc):
        self._t1, self._busy1, self._own1 = time.perf_counter(), _cpu_busy_seconds(), time.process_time()
        self._load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return False

    def result(self) -> dict:
        wall = self._t1 - self._t0
        other = None
        if self._busy0 is not None and self._busy1 is not None and wall > 0:
            other = max(0.0, (self._busy1 - self._busy0 - (self._own1 - self._own0)) / wall)
        loads = [v for v in (self._load0, self._load1) if v is not None]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return {"load_1m": max(loads) if loads else None, "other_cpu": None if other is None else round(other, 3),
                "cpus": cpus, "torch_threads": torch.get_num_threads(), "wall_s": round(wall, 4)}
