"""Shared measurement for the pytest-benchmark suites: timing with device sync, peak memory, extra info.

Every benchmark calls ``measure(benchmark, fn, op=..., impl=..., shape=..., flops=..., bytes_moved=...)``.
With ``ELECTRA_FAST_BENCH_ROWS=FILE`` each case is appended to FILE as one JSON line the moment it is measured
(``rows.record``), so a suite stopped part-way keeps every case before the stop (benchmarks/gpu_check.sh);
``benchmarks/report.py`` turns those lines, or pytest-benchmark's JSON, into tables and plots.
``ELECTRA_FAST_BENCH_QUICK=1`` picks each suite's quick matrix (the shapes ELECTRA uses, no cold
``torch.compile`` or FlexAttention baselines) instead of the full one.
"""

from __future__ import annotations

import gc
import os

import torch
from rows import record

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
QUICK = os.environ.get("ELECTRA_FAST_BENCH_QUICK", "0") == "1"


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if ON_GPU else "cpu"


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
    """Time ``fn`` (synchronised), record what report.py needs in ``benchmark.extra_info`` and as a row."""
    def timed():
        fn()
        sync()

    for _ in range(warmup):
        timed()
    peak = peak_memory_bytes(fn)
    benchmark.extra_info.update(
        op=op, impl=impl, shape=shape, device=device_name(), flops=flops, bytes_moved=bytes_moved,
        peak_memory_bytes=peak, **extra,
    )
    benchmark.pedantic(timed, rounds=rounds or (20 if ON_GPU else 3), iterations=1, warmup_rounds=0)
    record(dict(benchmark.extra_info, kind="timing", name=benchmark.name, median_s=benchmark.stats.stats.median))
