"""Which generator-head design runs a shape: the Triton-only ``"fused"`` one or the cuBLAS ``"chunked"`` one
(docs/design.md §5.5), from the work each does and the memory it needs.

Both give the same loss, samples and gradients (within the parity rule). They differ in cost:

* fused: four GEMMs of work (logits and dh in the forward, recomputed logits and dW in the backward), memory
  O(M * E). Its tiles keep the whole E in registers, so the rows per tile shrink as E grows and every row
  tile re-reads W (forward) and every vocabulary tile re-reads h (backward): requests of 2 * E * (V * row
  tiles + M * vocabulary tiles) bytes, served by L2 when they repeat.
* chunked: three GEMMs by the GEMM library plus the epilogue's passes over each chunk's fp32 logits (written
  once, bias added, read twice, gradient written once and read by the GEMMs and db's sum) and, per chunk, two
  reads of W and a read-modify-write of the fp32 dW accumulator. Extra memory: one chunk of [rows, V] logits
  (and its 16-bit gradient).

``choose`` takes the smaller of the two roofline times, max(FLOPs / peak, bytes / bandwidth) for the fused
kernels and FLOPs / peak + bytes / bandwidth for the chunked sequence (its GEMMs and epilogue do not overlap),
with H100 data-sheet peaks. ``electra-fast inspect`` counts the same work in the interpreter (its chunked rows
use ``chunked_library_work``), and a test checks that the choice agrees with the counts at ELECTRA's shapes.
It is a model: ``benchmarks/bench_generator_head.py`` measures both. E wider than the fused tiles hold
(``MAX_EMBEDDING``) is always chunked.
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
