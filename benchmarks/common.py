"""Shared measurement for the pytest-benchmark suites: timing with device sync, peak memory, extra info.

Every benchmark calls ``measure(benchmark, fn, op=..., impl=..., shape=..., flops=..., bytes_moved=...)``;
``benchmarks/report.py`` turns the saved JSON into tables and plots (TFLOP/s, GB/s, peak memory, speed-up
against the other implementations of the same op and shape).
"""

from __future__ import annotations

import gc
import os

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
# The H200's HBM3e bandwidth, for the "fraction of peak" column.
PEAK_BANDWIDTH_GBPS = float(os.environ.get("ELECTRA_FAST_PEAK_GBPS", "4800"))


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def peak_memory_bytes(fn) -> int | None:
    """Peak CUDA memory allocated by one call of ``fn`` above what was allocated before it."""
    if not ON_GPU:
        return None
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def measure(benchmark, fn, *, op: str, impl: str, shape: str, flops: float | None = None,
            bytes_moved: float | None = None, rounds: int | None = None, warmup: int = 2, **extra):
    """Time ``fn`` (synchronised) and record what report.py needs in ``benchmark.extra_info``."""
    def timed():
        fn()
        sync()

    for _ in range(warmup):
        timed()
    peak = peak_memory_bytes(fn)
    benchmark.extra_info.update(
        op=op, impl=impl, shape=shape, device=torch.cuda.get_device_name() if ON_GPU else "cpu",
        flops=flops, bytes_moved=bytes_moved, peak_memory_bytes=peak, **extra,
    )
    benchmark.pedantic(timed, rounds=rounds or (20 if ON_GPU else 3), iterations=1, warmup_rounds=0)
