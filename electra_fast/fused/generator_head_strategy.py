"""Which generator-head design runs a shape: the Triton-only ``"fused"`` one or the cuBLAS ``"chunked"`` one
(docs/design.md §5.5), from the work each does.

Both give the same loss, samples and gradients (within the parity rule). They differ in cost:

* fused: four GEMMs of work (logits and dh in the forward, recomputed logits and dW in the backward), memory
  O(M * E). Its logit tiles walk E in chunks, so every tile re-reads its operands' chunks, and the
  accumulators that span E live in global memory: per forward vocabulary tile each row's fp32 g is read and
  written once, per backward row tile each vocabulary id's fp32 dW (``fused_work`` counts these requests;
  they are served by L2 when they repeat, but the model charges them at HBM bandwidth).
* chunked: three GEMMs by the GEMM library plus the epilogue's passes over each chunk's fp32 logits (written
  once, bias added, read twice, gradient written once and read by the GEMMs and db's sum) and, per chunk, two
  reads of W and a read-modify-write of the fp32 dW accumulator. Extra memory: one chunk of [rows, V] logits
  (and its 16-bit gradient).

``choose`` takes the smaller of the two roofline times, max(FLOPs / peak, bytes / bandwidth) for the fused
kernels and FLOPs / peak + bytes / bandwidth for the chunked sequence (its GEMMs and epilogue do not overlap).
The peaks are the machine's own where a GPU run recorded them (``benchmarks/peaks.py``'s "machine" row in
``benchmarks/results/<stamp>/rows.jsonl``, the newest; the current GPU's own when it has one), else the H100
data sheet's. ``electra-fast inspect`` counts the same work in the interpreter (its chunked rows use
``chunked_library_work``), and a test checks that the choice agrees with the counts at ELECTRA's shapes. It is
a model: ``benchmarks/bench_generator_head.py`` measures both. 16-bit inputs never take the fused design where
its tiles could not run as wgmma on sm_90a (``has_wgmma``): the tensor-core rate the model assumes would not
be there.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

CHUNK_FRACTION = 0.02  # default chunk: at most 2 % of the rows, so of the full [M, V] logits
DATA_SHEET_PEAKS = (989e12, 3.35e12)  # H100 SXM dense bf16 FLOP/s and HBM bytes/s
# Where a source checkout keeps the GPU runs' results (benchmarks/gpu_check.sh); absent in an installed wheel.
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def default_chunk_rows(rows: int) -> int:
    return max(1, math.floor(CHUNK_FRACTION * rows))


def _machine_rows(results: Path) -> list[dict]:
    """The GPU "machine" rows (measured bf16 matmul and copy peaks) under ``results``, oldest run first."""
    found = []
    for rows_file in sorted(results.glob("*/rows.jsonl")):  # folders are named by their UTC stamp
        with open(rows_file) as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if (row.get("kind") == "machine" and row.get("matmul_dtype") == "bfloat16"
                        and row.get("matmul_tflops") and row.get("copy_gbps")):
                    found.append(row)
    return found


@functools.lru_cache(maxsize=None)
def peaks(results: str | None = None, device: str | None = None) -> tuple[float, float]:
    """(FLOP/s, bytes/s) for the model: the newest measured GPU peaks under ``results`` (default ``RESULTS``),
    those of ``device`` (a CUDA device name) when any were measured on it, else the data sheet's. Read once per
    process, so a run's choices never change under it."""
    rows = _machine_rows(Path(results) if results else RESULTS) if (results or RESULTS.is_dir()) else []
    same_device = [row for row in rows if row.get("device") == device]
    chosen = (same_device or rows or [None])[-1]
    if chosen is None:
        return DATA_SHEET_PEAKS
    return chosen["matmul_tflops"] * 1e12, chosen["copy_gbps"] * 1e9


def current_peaks() -> tuple[float, float]:
    """``peaks`` for the GPU this process runs on (any recorded GPU on a machine without one)."""
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return peaks(None, device)


def fused_work(M: int, V: int, E: int, element_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes requested) of the fused design's forward with gradients and backward, from its GPU tiles:
    the operand chunks each logit tile reads, and the fp32 g and dW read and written per tile."""
    import torch

    from ..kernels.generator_head import tiles_for_gpu

    t = tiles_for_gpu(torch.bfloat16 if element_bytes == 2 else torch.float32)
    s = element_bytes
    row_tiles, vocab_tiles = math.ceil(M / t.forward_block_m), math.ceil(V / t.forward_block_v)
    forward = (M * E * s * vocab_tiles + 2 * V * E * s * row_tiles  # h per vocabulary tile, W twice per row tile
               + M * E * 8 * vocab_tiles)  # g read and written per vocabulary tile
    row_tiles, vocab_tiles = math.ceil(M / t.backward_block_m), math.ceil(V / t.backward_block_v)
    backward = (V * E * s * row_tiles + 2 * M * E * s * vocab_tiles  # W per row tile, h twice per vocabulary tile
                + V * E * 8 * row_tiles)  # dW read and written per row tile
    return 4 * 2.0 * M * V * E, forward + backward


def chunked_library_work(M: int, V: int, E: int, element_bytes: int, chunk_rows: int) -> dict:
    """{"forward": (FLOPs, bytes), "backward": (FLOPs, bytes)} of what the chunked design runs outside Triton,
    each operand read and each result written once per call: per chunk the logits GEMM and bias add, dh's GEMM,
    dW's GEMM into the fp32 accumulator (read and written) and db's column sum; in the backward, the three fp32
    gradients scaled and cast once."""
    s, chunks = element_bytes, math.ceil(M / chunk_rows)
    logits = M * E * s + chunks * V * E * s + M * V * 4 + M * V * 8  # h, W -> fp32 logits; += bias (read, write)
    grad_hidden = M * V * s + chunks * V * E * s + M * E * 4
    grad_weight = M * V * s + M * E * s + chunks * V * E * 8
    grad_bias = M * V * s + chunks * V * 8
    return {"forward": (6 * M * V * E, logits + grad_hidden + grad_weight + grad_bias),
            "backward": (0, (M * E + V * E + V) * (4 + s))}


def chunked_work(M: int, V: int, E: int, element_bytes: int, chunk_rows: int) -> tuple[float, float]:
    """(FLOPs, bytes) of the chunked design: its library work and the epilogue's two reads of the fp32 logits
    and one write of the gradient."""
    library = chunked_library_work(M, V, E, element_bytes, chunk_rows)
    epilogue_bytes = M * V * (2 * 4 + element_bytes)
    return (library["forward"][0], library["forward"][1] + library["backward"][1] + epilogue_bytes)


def modeled_seconds(M: int, V: int, E: int, element_bytes: int, chunk_rows: int | None = None,
                    machine: tuple[float, float] | None = None) -> dict:
    """Roofline seconds of both designs under ``machine`` = (FLOP/s, bytes/s) (default ``current_peaks()``)."""
    peak_flops, bandwidth = machine or current_peaks()
    chunk_rows = chunk_rows or default_chunk_rows(M)
    fused_flops, fused_bytes = fused_work(M, V, E, element_bytes)
    chunked_flops, chunked_bytes = chunked_work(M, V, E, element_bytes, chunk_rows)
    return {"fused": max(fused_flops / peak_flops, fused_bytes / bandwidth),
            "chunked": chunked_flops / peak_flops + chunked_bytes / bandwidth}


def fused_has_wgmma(element_bytes: int) -> bool:
    """Whether the fused design's GPU tiles for inputs of ``element_bytes`` run their products as wgmma on sm_90a
    (16-bit inputs only; fp32 products are IEEE, on CUDA cores, in both designs)."""
    import torch

    from ..kernels.generator_head import has_wgmma, tiles_for_gpu

    dtype = torch.bfloat16 if element_bytes == 2 else torch.float32
    return has_wgmma(tiles_for_gpu(dtype), dtype)


def choose(M: int, V: int, E: int, element_bytes: int, chunk_rows: int | None = None,
           machine: tuple[float, float] | None = None) -> str:
    """"fused" or "chunked" for a head of M rows, V ids, width E and inputs of ``element_bytes``."""
    if element_bytes == 2 and not fused_has_wgmma(element_bytes):
        return "chunked"
    seconds = modeled_seconds(M, V, E, element_bytes, chunk_rows, machine)
    return "chunked" if seconds["chunked"] < seconds["fused"] else "fused"
