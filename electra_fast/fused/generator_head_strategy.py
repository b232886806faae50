"""Which generator-head design runs a shape: the Triton-only ``"fused"`` one or the cuBLAS ``"chunked"`` one
(docs/design.md §5.5), from the work each does and the memory it needs.

Both give the same loss, samples and gradients (within the parity rule). They differ in cost:

* fused: four GEMMs of work (logits and dh in the forward, recomputed logits and dW in the backward), memory
  O(M * E). Its tiles keep the whole E in registers, so the rows per tile shrink as E grows and every row
  tile re-reads W (forward) and every vocabulary tile re-reads h (backward): requests of 2 * E * (V * row
  tiles + M * vocabulary tiles) bytes, served by L2 when they repeat.
* chunked: three GEMMs by the GEMM library plus the epilogue's passes over each chunk's fp32 logits (written
  once, read twice, gradient written once and read by two GEMMs) and, per chunk, a read-modify-write of the
  fp32 dW accumulator. Extra memory: one chunk of [rows, V] logits (and its 16-bit gradient).

``choose`` takes the smaller of the two roofline times, max(FLOPs / peak, bytes / bandwidth) for the fused
kernels and FLOPs / peak + bytes / bandwidth for the chunked sequence (its GEMMs and epilogue do not overlap),
with H100 data-sheet peaks. It is a model: ``benchmarks/bench_generator_head.py`` measures both. E wider than
the fused tiles hold (``MAX_EMBEDDING``) is always chunked.
"""

from __future__ import annotations

import math

CHUNK_FRACTION = 0.02  # default chunk: at most 2 % of the rows, so of the full [M, V] logits
PEAK_FLOPS, BANDWIDTH = 989e12, 3.35e12  # H100 SXM dense bf16 FLOP/s and HBM bytes/s (data sheet)


def default_chunk_rows(rows: int) -> int:
    return max(1, math.floor(CHUNK_FRACTION * rows))


def fused_work(M: int, V: int, E: int, element_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes requested) of the fused design's forward with gradients and backward, from its tiles."""
    import torch

    from ..kernels.generator_head import tiles_for

    tiles = tiles_for(torch.bfloat16, E)  # the GPU tiles (16-bit tiles never depend on the interpreter)
    forward_rows, backward_vocab = tiles.forward_block_m, tiles.backward_block_v
    flops = 4 * 2.0 * M * V * E
    nbytes = element_bytes * E * (V * math.ceil(M / forward_rows) + M * math.ceil(V / backward_vocab))
    return flops, nbytes


def chunked_work(M: int, V: int, E: int, element_bytes: int, chunk_rows: int) -> tuple[float, float]:
    """(FLOPs, bytes) of the chunked design: its three GEMMs, the epilogue's traffic over the logits and the
    per-chunk fp32 dW accumulation."""
    flops = 3 * 2.0 * M * V * E
    logits_traffic = M * V * (4 + 2 * 4 + 3 * element_bytes)
    accumulator_traffic = math.ceil(M / chunk_rows) * V * E * 8
    return flops, logits_traffic + accumulator_traffic


def modeled_seconds(M: int, V: int, E: int, element_bytes: int, chunk_rows: int | None = None) -> dict:
    chunk_rows = chunk_rows or default_chunk_rows(M)
    fused_flops, fused_bytes = fused_work(M, V, E, element_bytes)
    chunked_flops, chunked_bytes = chunked_work(M, V, E, element_bytes, chunk_rows)
    return {"fused": max(fused_flops / PEAK_FLOPS, fused_bytes / BANDWIDTH),
            "chunked": chunked_flops / PEAK_FLOPS + chunked_bytes / BANDWIDTH}


def choose(M: int, V: int, E: int, element_bytes: int, chunk_rows: int | None = None) -> str:
    """"fused" or "chunked" for a head of M rows, V ids, width E and inputs of ``element_bytes``."""
    from ..kernels.generator_head import MAX_EMBEDDING

    if E > MAX_EMBEDDING:
        return "chunked"
    seconds = modeled_seconds(M, V, E, element_bytes, chunk_rows)
    return "chunked" if seconds["chunked"] < seconds["fused"] else "fused"
