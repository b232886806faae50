"""The machine's two ceilings, measured: matrix-product FLOP/s and device-to-device copy bandwidth.

    python benchmarks/peaks.py        # prints, and records with ELECTRA_FAST_BENCH_ROWS set, one "machine" row

Every roofline in benchmarks/report.py's tables uses these instead of data-sheet peaks. On CUDA: bf16 products
(the benchmarks' dtype) of 4096^3 and 8192^3 on random data, and copies of 0.25 and 1 GiB counting bytes read
plus written; on the CPU (the dry run) fp32, 512^3 and 64 MiB. Each figure is the best median over its sizes.
"""

from __future__ import annotations

import json
import platform
import time

import torch
from common import DEVICE, ON_GPU, device_name, sync
from rows import record

MATMUL_DTYPE = torch.bfloat16 if ON_GPU else torch.float32
MATMUL_SIZES = (4096, 8192) if ON_GPU else (512,)
COPY_BYTES = (2**28, 2**30) if ON_GPU else (2**26,)


def median_seconds(fn, repeats: int, warmup_s: float = 0.5) -> float:
    """Median of ``repeats`` timings of ``fn`` (CUDA events on a GPU, the host clock after a sync on the CPU),
    after ``warmup_s`` seconds of calls (an idle GPU's clocks take a moment to rise)."""
    begin = time.perf_counter()
    while time.perf_counter() - begin < warmup_s:
        fn()
        sync()
    times = []
    for _ in range(repeats):
        if ON_GPU:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return sorted(times)[len(times) // 2]


def matmul_flops_per_s(n: int) -> float:
    a, b = (torch.randn(n, n, device=DEVICE, dtype=MATMUL_DTYPE) for _ in range(2))
    out = torch.empty(n, n, device=DEVICE, dtype=MATMUL_DTYPE)
    return 2.0 * n**3 / median_seconds(lambda: torch.mm(a, b, out=out), repeats=20)


def copy_bytes_per_s(nbytes: int) -> float:
    source = torch.rand(nbytes // 4, device=DEVICE)
    target = torch.empty_like(source)
    return 2.0 * nbytes / median_seconds(lambda: target.copy_(source), repeats=20)


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "transformers"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = None
    return found


def main() -> None:
    row = {
        "kind": "machine", "device": device_name(), "matmul_dtype": str(MATMUL_DTYPE).removeprefix("torch."),
        "matmul_tflops": max(matmul_flops_per_s(n) for n in MATMUL_SIZES) / 1e12,
        "copy_gbps": max(copy_bytes_per_s(n) for n in COPY_BYTES) / 1e9, **versions(),
    }
    if ON_GPU:
        properties = torch.cuda.get_device_properties(DEVICE)
        row.update(multiprocessors=properties.multi_processor_count, memory_gib=properties.total_memory / 2**30)
    record(row)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
