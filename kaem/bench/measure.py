"""Measuring one call: its median wall time over repeats, and the memory its first call needs.

Peak memory is the growth of the process's peak resident set during the first call (Linux
``VmHWM``, reset before it), or ``torch.cuda.max_memory_allocated`` on CUDA.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BenchResult", "measure"]


@dataclass(frozen=True)
class BenchResult:
    """Median wall time (with the fastest and slowest repeat) and peak memory of one benchmark."""

    name: str
    seconds: float
    peak_mib: float
    repeats: int
    device: str
    seconds_min: float | None = None
    seconds_max: float | None = None
    #: Median CPU time of this process over the timed calls (all its threads): on a machine
    #: shared with other work, a one-thread call's CPU time is what its wall time would be
    #: with the machine to itself, where its wall time also counts the waits.
    cpu_seconds: float | None = None


def _read_status(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(
    name: str,
    fn: Callable[[], object],
    *,
    repeats: int = 5,
    warmup: int = 1,
    warmup_seconds: float = 0.25,
    device: torch.device | str = "cpu",
    setup: Callable[[], object] | None = None,
) -> BenchResult:
    """Median seconds and peak memory of ``fn()`` over ``repeats`` calls.

    Memory is read from the first call, before any warm-up: in a fresh process (as
    :func:`run_benchmarks` arranges) that call's growth of the peak resident set is the
    memory the operation needs, where later calls would reuse pages the allocator kept.

    Parameters
    ----------
    name
        Label printed with the result.
    fn
        The measured call.
    repeats, warmup, warmup_seconds
        Timed calls, and untimed warm-up calls: at least ``warmup``, and more (up to 20)
        until ``warmup_seconds`` have passed, so a call of milliseconds is timed once the
        allocator and caches have settled (its first calls take several times as long),
        while a call of seconds is warmed up once.
    device
        CUDA calls are synchronised and their memory read from the caching allocator.
    setup
        Called (untimed) before every call, e.g. to change the parameters so caches are cold.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if setup is not None:
        setup()
    gc.collect()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        _reset_peak()
        base = _read_status("VmRSS") or 0.0
    fn()
    sync()
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20 - base
    else:
        peak = max(0.0, (_read_status("VmHWM") or base) - base)
    started, calls = time.perf_counter(), 0
    while calls < warmup or (time.perf_counter() - started < warmup_seconds and calls < 20):
        if setup is not None:
            setup()
        fn()
        calls += 1
    times, cpu = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return BenchResult(
        name,
        statistics.median(times),
        peak,
        repeats,
        str(device),
        min(times),
        max(times),
        statistics.median(cpu),
    )
