"""The chunked generator head's epilogue: one Triton pass over a chunk of fp32 logits that a GEMM library made.

The chunked design (Liger-Kernel's, and torch's ``linear_cross_entropy``'s) computes the logits of a few rows at
a time with cuBLAS, so the three GEMMs (logits, dh, dW) run at library speed and only a chunk of [rows, V]
logits is ever in memory. Between the GEMMs this kernel reads the chunk's logits and, per row, writes the
log-sum-exp, the target logit and the Gumbel-max sample (the same Philox draws as every other implementation:
stream GUMBEL at ``row * V + v`` with the row's index in the whole batch), and with ``COMPUTE_GRAD`` the
gradient of the row's cross-entropy scaled by its weight, ``(softmax - onehot) * row_scale``, into
``grad_logits`` (which may be the logits buffer itself: each program reads a tile before writing it back).

One program per row, in two sweeps over the row: the first keeps per-lane running statistics in fp32 (max and
rescaled sum for the LSE, the best Gumbel score and its id) and reduces them across lanes at the end; the
second (gradients only) needs the final LSE. fp32 throughout; only the stored gradient takes its dtype.
"""

import torch
import triton
import triton.language as tl

from .generator_head import gumbel_scores
from .registry import register_launches

BLOCK_V = 1024  # lanes per program: a row of 30522 logits is 30 sweeps of coalesced 4 KiB loads


@triton.jit(do_not_specialize=["seed", "row_offset"])
def chunk_epilogue_kernel(
    logits_ptr, grad_logits_ptr, targets_ptr, row_scale_ptr, lse_ptr, target_logit_ptr, samples_ptr,
    seed, temperature, disallow_correct, row_offset, V, stride_logits, stride_grad,
    BLOCK_V: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    """Program = one row of the chunk (``row_offset + row`` in the batch)."""
    row = tl.program_id(0)
    target = tl.load(targets_ptr + row).to(tl.int64)
    excluded = tl.where(disallow_correct != 0, target, -1)  # the id disallow_correct removes (-1: none)
    logits_row = logits_ptr + row.to(tl.int64) * stride_logits
    draw_base = (row_offset + row).to(tl.int64) * V  # Gumbel element index = row * V + v (docs/design.md §4)
    lanes = tl.arange(0, BLOCK_V)

    # Sweep 1: per-lane online log-sum-exp, target logit and Gumbel-max, in fp32.
    lane_max = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    lane_sum = tl.zeros((BLOCK_V,), dtype=tl.float32)
    lane_target = tl.zeros((BLOCK_V,), dtype=tl.float32)
    lane_score = tl.full((BLOCK_V,), float("-inf"), dtype=tl.float32)
    lane_index = tl.zeros((BLOCK_V,), dtype=tl.int64)
    for v0 in range(0, V, BLOCK_V):
        offs_v = v0 + lanes
        in_v = offs_v < V
        logits = tl.load(logits_row + offs_v, mask=in_v, other=float("-inf")).to(tl.float32)
        new_max = tl.maximum(lane_max, logits)
        # A lane that has seen only -inf (past V) keeps max -inf and sum 0 (no exp(-inf - -inf) = NaN).
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        lane_sum = lane_sum * tl.exp(lane_max - safe_max) + tl.exp(logits - safe_max)
        lane_max = new_max
        lane_target += tl.where(offs_v.to(tl.int64) == target, logits, 0.0)
        scores = tl.where(in_v & (offs_v.to(tl.int64) != excluded),
                          gumbel_scores(logits, temperature, seed, draw_base + offs_v), float("-inf"))
        better = scores > lane_score  # strict: a lane keeps its lowest id on ties
        lane_index = tl.where(better, offs_v.to(tl.int64), lane_index)
        lane_score = tl.where(better, scores, lane_score)

    row_max = tl.max(lane_max, axis=0)
    lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), axis=0))
    best = tl.max(lane_score, axis=0)
    # Ties across lanes go to the lowest id, as torch.argmax.
    sample = tl.min(tl.where(lane_score == best, lane_index, V), axis=0)
    tl.store(lse_ptr + row, lse)
    tl.store(target_logit_ptr + row, tl.sum(lane_target, axis=0))
    tl.store(samples_ptr + row, sample)

    if COMPUTE_GRAD:
        # Sweep 2: (softmax - onehot) * row_scale; the target's p - 1 in fp32 (no cancellation near p = 1);
        # exactly 0 for padding rows (scale 0) whatever their logits.
        row_scale = tl.load(row_scale_ptr + row).to(tl.float32)
        grad_row = grad_logits_ptr + row.to(tl.int64) * stride_grad
        for v0 in range(0, V, BLOCK_V):
            offs_v = v0 + lanes
            in_v = offs_v < V
            logits = tl.load(logits_row + offs_v, mask=in_v, other=0.0).to(tl.float32)
            onehot = tl.where(offs_v.to(tl.int64) == target, 1.0, 0.0)
            grad = (tl.exp(logits - lse) - onehot) * row_scale
            grad = tl.where(row_scale != 0.0, grad, 0.0)
            tl.store(grad_row + offs_v, grad.to(grad_logits_ptr.dtype.element_ty), mask=in_v)


def forward(logits, targets, row_scale, lse, target_logit, samples, *, grad_logits, temperature: float,
            disallow_correct: bool, seed: int, row_offset: int):
    """Fill ``lse``, ``target_logit`` (fp32 [rows]) and ``samples`` (int64 [rows]) of the chunk's fp32 ``logits``
    [rows, V] (rows ``row_offset + i`` of the batch), and ``grad_logits`` [rows, V] unless it is None.

    ``targets`` int64 and ``row_scale`` fp32 are contiguous [rows]; logits and grad_logits have unit column
    stride.
    """
    rows, V = logits.shape
    compute_grad = grad_logits is not None
    chunk_epilogue_kernel[(rows,)](
        logits, grad_logits if compute_grad else logits, targets, row_scale, lse, target_logit, samples,
        seed, float(temperature), int(disallow_correct), row_offset, V, logits.stride(0),
        grad_logits.stride(0) if compute_grad else 0,
        BLOCK_V=BLOCK_V, COMPUTE_GRAD=compute_grad,
        num_warps=8, num_stages=1,
    )


AOT_ROWS = 1024  # a chunk of rows (the fused entry's default chunk at ELECTRA-Base's masked slots)
AOT_VOCAB = 30522


def _register_launch_configs():
    """The launches of a GPU (docs/design.md §6), as the chunked design makes them: a contiguous fp32 [rows, V]
    chunk of logits; with gradients written into it (fp32 inputs) or into a 16-bit copy (bf16, fp16), and
    without. No GEMM here and one pipeline stage: nothing to expect of the SASS beyond the common checks."""

    def run(arch):
        del arch  # one configuration serves every architecture
        logits = torch.empty(AOT_ROWS, AOT_VOCAB)
        stats = [torch.empty(AOT_ROWS) for _ in range(2)]
        samples = torch.empty(AOT_ROWS, dtype=torch.int64)
        targets, row_scale = torch.zeros(AOT_ROWS, dtype=torch.int64), torch.ones(AOT_ROWS)
        for grad_logits in (None, logits, torch.empty_like(logits, dtype=torch.bfloat16),
                            torch.empty_like(logits, dtype=torch.float16)):
            forward(logits, targets, row_scale, *stats, samples, grad_logits=grad_logits, temperature=1.0,
                    disallow_correct=True, seed=0x2545F4914F6CDD1D, row_offset=0)

    register_launches(run)


_register_launch_configs()
