"""Padding-aware flash attention for bidirectional encoders: forward, backward (by recompute), dropout.

One code path serves padded batches and packed variable-length batches. Every program reads its sequence's
bounds from an int32 table ``bounds[4, B]``:

    bounds[0, b]  first row of sequence b in the row dimension (0 for padded batches, cu_seqlens[b] packed)
    bounds[1, b]  number of query rows (Lq padded, the sequence length packed)
    bounds[2, b]  number of key rows whose gradients are written (Lk padded, the sequence length packed)
    bounds[3, b]  number of key rows visited: one past the last unmasked key. Key blocks at or beyond it are
                  never loaded (right padding costs nothing); keys before it may still be masked by the bias.

Tensors are addressed through (batch, head, row) strides with a unit stride along the head dimension, so
transformers' [B, heads, L, D] views of [B, L, heads, D] projections are read in place, and packed
[total, heads, D] tensors use a batch stride of 0. The key padding mask arrives as an fp32 additive bias per
(batch, key): 0 (or any finite value) for a real key, -inf for a masked one.

Numerics: scores, the online-softmax statistics, the accumulators and every gradient accumulator are fp32;
softmax runs in base 2 (scores are pre-multiplied by scale * log2(e)) and only the natural-log LSE per row is
saved. A query row with no unmasked key gets output 0 and LSE -inf. The matrix products take q, k, v, dO (and
P, dS rounded to it) in the input dtype with fp32 accumulation: fp16/bf16 tensor cores on a GPU; fp32 runs only
under the interpreter (exact, input_precision="ieee"). FP32_DOTS upcasts the operands first (bf16 under the
interpreter, which computes bf16 wrongly).

Dropout keeps probability (i, j) of head (b, h) iff Philox(seed, ATTENTION_DROPOUT, ((b * heads + h) * Lq +
i) * Lk + j) >= p, with i, j positions inside the sequence and Lq, Lk the padded lengths (max_seqlen for packed
batches), and scales kept ones by 1 / (1 - p); the backward kernels regenerate the same bits.

Backward: ``attention_backward_dq_kernel`` runs per query block, computes delta = rowsum(dO * O) (saved for the
second kernel) and accumulates dQ over key blocks; ``attention_backward_dkdv_kernel`` runs per key block and
accumulates dK and dV over query blocks. Both recompute P from q, k and the LSE. No atomics: gradients are
bitwise reproducible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import tiles
from .constants import Stream
from .philox import draw_uniform
from .registry import gpu_tiles, interpreted, register_launches, target_arch

LOG2E = tl.constexpr(1.4426950408889634)
ATTENTION_DROPOUT_STREAM = tl.constexpr(int(Stream.ATTENTION_DROPOUT))  # constants.Stream, as electra_fast.rng


@triton.jit
def _check_tiles(HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Every block is a tl.arange length (a power of two) and a tl.dot dimension (at least 16); one BLOCK_D tile
    holds a whole head (the dims past HEAD_DIM are masked)."""
    tl.static_assert((BLOCK_M & (BLOCK_M - 1)) == 0 and BLOCK_M >= 16, "BLOCK_M must be a power of two >= 16")
    tl.static_assert((BLOCK_N & (BLOCK_N - 1)) == 0 and BLOCK_N >= 16, "BLOCK_N must be a power of two >= 16")
    tl.static_assert((BLOCK_D & (BLOCK_D - 1)) == 0 and BLOCK_D >= 16, "BLOCK_D must be a power of two >= 16")
    tl.static_assert(BLOCK_D >= HEAD_DIM, "BLOCK_D must cover HEAD_DIM")


@triton.jit
def _program_tile(bounds_ptr, n_batch, heads, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Where this program works: grid axis 0 picks a block of BLOCK rows (query rows; key rows in dkdv), axis 1
    a (batch, head) pair. Returns the block's first row, its rows (positions inside the sequence), the head-dim
    offsets [0, BLOCK_D), bh = b * heads + h, b, h, and the bounds of sequence b (module docstring)."""
    # Keep this order (program_id(0) first): with the bounds loaded first, ptxas gives the dq kernel
    # (BLOCK_D 128, dropout, sm_90a) 210 registers instead of 186.
    block_start = tl.program_id(0) * BLOCK
    bh = tl.program_id(1)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    row_start = tl.load(bounds_ptr + b).to(tl.int64)
    q_count = tl.load(bounds_ptr + n_batch + b)
    k_stored = tl.load(bounds_ptr + 2 * n_batch + b)
    k_visited = tl.load(bounds_ptr + 3 * n_batch + b)
    rows = block_start + tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    return block_start, rows, dims, bh, b, h, row_start, q_count, k_stored, k_visited


@triton.jit
def _block_prologue(bounds_ptr, n_batch, heads, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KEY_BLOCKS: tl.constexpr):
    """The start every kernel shares: the tile checks, where this program works (``_program_tile``), which of
    its own rows and head dims are real, and how far its inner loop runs. The forward and dq kernels own a
    block of BLOCK_M queries and loop over keys; with KEY_BLOCKS (dk/dv) a program owns BLOCK_N keys and loops
    over queries. Returns (block start, own rows, dims, bh, b, h, sequence start, query count, stored keys,
    visited keys, own-row mask, dim mask, [rows, dims] tile mask, loop end)."""
    _check_tiles(HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D)
    if KEY_BLOCKS:
        start, rows, dims, bh, b, h, row_start, q_count, k_stored, k_visited = _program_tile(
            bounds_ptr, n_batch, heads, BLOCK_N, BLOCK_D)
        rows_ok = rows < k_visited
        loop_stop = tl.where(start < k_visited, q_count, 0)  # key blocks past the last real key stay 0
    else:
        start, rows, dims, bh, b, h, row_start, q_count, k_stored, k_visited = _program_tile(
            bounds_ptr, n_batch, heads, BLOCK_M, BLOCK_D)
        rows_ok = rows < q_count
        loop_stop = tl.where(start < q_count, k_visited, 0)  # blocks past a packed sequence's end do no work
    dim_ok = dims < HEAD_DIM  # head dims that are not a power of two are padded with masked loads
    tile_mask = rows_ok[:, None] & dim_ok[None, :]
    return start, rows, dims, bh, b, h, row_start, q_count, k_stored, k_visited, rows_ok, dim_ok, tile_mask, loop_stop


@triton.jit
def _tile_ptrs(ptr, b, h, row_start, rows, dims, stride_b, stride_h, stride_l):
    """Addresses of the [rows, dims] tile of head h of sequence b; rows count from the sequence's first row."""
    return ptr + b * stride_b + h * stride_h + (row_start + rows[:, None]) * stride_l + dims[None, :]


@triton.jit
def _sequence_start(ptr, b, h, row_start, stride_b, stride_h, stride_l):
    """Address of the first row of sequence b in head h, for the tiles that an inner loop walks."""
    return ptr + b * stride_b + h * stride_h + row_start * stride_l


@triton.jit
def _lse_log2(lse):
    """The saved natural-log LSE in base 2. Rows without an unmasked key (LSE -inf) get 0: their P is 0 anyway."""
    return tl.where(lse == float("-inf"), 0.0, lse * LOG2E)


@triton.jit
def _dropout_keep(seed, dropout_p, bh, q_len_padded, k_len_padded, rows, cols):
    """Keep decision for every (row, col) pair of a tile: rows and cols are broadcastable index tensors."""
    index = (bh.to(tl.int64) * q_len_padded + rows) * k_len_padded + cols
    return draw_uniform(seed, ATTENTION_DROPOUT_STREAM, index) >= dropout_p


# The seed changes every step: not specialising it spares a compile whenever one happens to be 1 or
# divisible by 16.
@triton.jit(do_not_specialize=["seed"])
def attention_forward_kernel(
    q_ptr, k_ptr, v_ptr, key_bias_ptr, bounds_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol, stride_lseb, stride_lseh, stride_biasb, stride_biasl,
    n_batch, heads, q_len_padded, k_len_padded, scale_log2, seed, dropout_p,
    HEAD_DIM: tl.constexpr, DROPOUT: tl.constexpr, FP32_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, rows, dims, bh, b, h, row_start, _, _, k_visited, row_ok, dim_ok, tile_mask, key_stop = _block_prologue(
        bounds_ptr, n_batch, heads, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False)
    q = tl.load(_tile_ptrs(q_ptr, b, h, row_start, rows, dims, stride_qb, stride_qh, stride_ql),
                mask=tile_mask, other=0.0)
    if FP32_DOTS:
        q = q.to(tl.float32)
    k_start = _sequence_start(k_ptr, b, h, row_start, stride_kb, stride_kh, stride_kl)
    v_start = _sequence_start(v_ptr, b, h, row_start, stride_vb, stride_vh, stride_vl)
    bias_row = key_bias_ptr + b * stride_biasb + row_start * stride_biasl

    # Online softmax in base 2, all fp32: running max m_i, running sum l_i, unnormalised output acc.
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, key_stop, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < k_visited
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_start + cols[:, None] * stride_kl + dims[None, :], mask=kv_mask, other=0.0)
        bias = tl.load(bias_row + cols * stride_biasl, mask=col_ok, other=float("-inf"))
        if FP32_DOTS:
            k = k.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2 + bias[None, :] * LOG2E
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        # While a row has seen only masked keys its max is -inf; subtract 0 instead to avoid inf - inf.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(scores - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts dropped probabilities too
        if DROPOUT:
            keep = _dropout_keep(seed, dropout_p, bh, q_len_padded, k_len_padded, rows[:, None], cols[None, :])
            p = tl.where(keep, p, 0.0)
        v = tl.load(v_start + cols[:, None] * stride_vl + dims[None, :], mask=kv_mask, other=0.0)
        if FP32_DOTS:
            v = v.to(tl.float32)
        # P is rounded to v's dtype for the tensor-core product; the accumulator stays fp32.
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        m_i = m_new

    empty_row = l_i == 0.0  # no unmasked key: output 0, LSE -inf
    l_safe = tl.where(empty_row, 1.0, l_i)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * (1.0 / (1.0 - dropout_p))
    # Only the natural-log LSE per row is saved: the backward recomputes P from it (no [L, L] tensor is kept).
    lse = tl.where(empty_row, float("-inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)
    tl.store(_tile_ptrs(out_ptr, b, h, row_start, rows, dims, stride_ob, stride_oh, stride_ol),
             out.to(out_ptr.dtype.element_ty), mask=tile_mask)
    tl.store(lse_ptr + b * stride_lseb + h * stride_lseh + row_start + rows, lse, mask=row_ok)


@triton.jit(do_not_specialize=["seed"])
def attention_backward_dq_kernel(
    q_ptr, k_ptr, v_ptr, key_bias_ptr, bounds_ptr, out_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    stride_ob, stride_oh, stride_ol, stride_dob, stride_doh, stride_dol, stride_dqb, stride_dqh, stride_dql,
    stride_lseb, stride_lseh, stride_biasb, stride_biasl,
    n_batch, heads, q_len_padded, k_len_padded, scale, scale_log2, seed, dropout_p,
    HEAD_DIM: tl.constexpr, DROPOUT: tl.constexpr, FP32_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, rows, dims, bh, b, h, row_start, _, _, k_visited, row_ok, dim_ok, tile_mask, key_stop = _block_prologue(
        bounds_ptr, n_batch, heads, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False)
    q = tl.load(_tile_ptrs(q_ptr, b, h, row_start, rows, dims, stride_qb, stride_qh, stride_ql),
                mask=tile_mask, other=0.0)
    dout = tl.load(_tile_ptrs(dout_ptr, b, h, row_start, rows, dims, stride_dob, stride_doh, stride_dol),
                   mask=tile_mask, other=0.0)
    out = tl.load(_tile_ptrs(out_ptr, b, h, row_start, rows, dims, stride_ob, stride_oh, stride_ol),
                  mask=tile_mask, other=0.0)
    # delta = rowsum(dO * O) = rowsum(P * dP) (O includes dropout, so this holds with dropout too), in fp32.
    delta = tl.sum(dout.to(tl.float32) * out.to(tl.float32), 1)
    row_stats = b * stride_lseb + h * stride_lseh + row_start + rows
    tl.store(delta_ptr + row_stats, delta, mask=row_ok)
    lse_log2 = _lse_log2(tl.load(lse_ptr + row_stats, mask=row_ok, other=0.0))
    if FP32_DOTS:
        q = q.to(tl.float32)
        dout = dout.to(tl.float32)
    k_start = _sequence_start(k_ptr, b, h, row_start, stride_kb, stride_kh, stride_kl)
    v_start = _sequence_start(v_ptr, b, h, row_start, stride_vb, stride_vh, stride_vl)
    bias_row = key_bias_ptr + b * stride_biasb + row_start * stride_biasl

    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, key_stop, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < k_visited
        kv_mask = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(k_start + cols[:, None] * stride_kl + dims[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_start + cols[:, None] * stride_vl + dims[None, :], mask=kv_mask, other=0.0)
        bias = tl.load(bias_row + cols * stride_biasl, mask=col_ok, other=float("-inf"))
        if FP32_DOTS:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        # Recompute P = exp(S - LSE) exactly as the forward normalised it.
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale_log2 + bias[None, :] * LOG2E
        p = tl.math.exp2(scores - lse_log2[:, None])
        dp = tl.dot(dout, tl.trans(v), input_precision="ieee")
        if DROPOUT:  # the forward's keep bits, regenerated from the same Philox indices
            keep = _dropout_keep(seed, dropout_p, bh, q_len_padded, k_len_padded, rows[:, None], cols[None, :])
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])  # gradient of the (natural-scale) scores, fp32
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision="ieee")
    dq = dq * scale
    tl.store(_tile_ptrs(dq_ptr, b, h, row_start, rows, dims, stride_dqb, stride_dqh, stride_dql),
             dq.to(dq_ptr.dtype.element_ty), mask=tile_mask)


@triton.jit(do_not_specialize=["seed"])
def attention_backward_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, key_bias_ptr, bounds_ptr, dout_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    stride_dob, stride_doh, stride_dol, stride_dkb, stride_dkh, stride_dkl, stride_dvb, stride_dvh, stride_dvl,
    stride_lseb, stride_lseh, stride_biasb, stride_biasl,
    n_batch, heads, q_len_padded, k_len_padded, scale, scale_log2, seed, dropout_p,
    HEAD_DIM: tl.constexpr, DROPOUT: tl.constexpr, FP32_DOTS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, cols, dims, bh, b, h, row_start, q_count, k_stored, _, col_ok, dim_ok, kv_mask, query_stop = _block_prologue(
        bounds_ptr, n_batch, heads, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, True)
    k = tl.load(_tile_ptrs(k_ptr, b, h, row_start, cols, dims, stride_kb, stride_kh, stride_kl),
                mask=kv_mask, other=0.0)
    v = tl.load(_tile_ptrs(v_ptr, b, h, row_start, cols, dims, stride_vb, stride_vh, stride_vl),
                mask=kv_mask, other=0.0)
    bias = tl.load(key_bias_ptr + b * stride_biasb + (row_start + cols) * stride_biasl, mask=col_ok,
                   other=float("-inf"))
    if FP32_DOTS:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_start = _sequence_start(q_ptr, b, h, row_start, stride_qb, stride_qh, stride_ql)
    dout_start = _sequence_start(dout_ptr, b, h, row_start, stride_dob, stride_doh, stride_dol)
    stats_start = b * stride_lseb + h * stride_lseh + row_start

    # Work in the transposed orientation (keys x queries) so dK and dV accumulate as [BLOCK_N, D] fp32 tiles.
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, query_stop, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < q_count
        q_mask = row_ok[:, None] & dim_ok[None, :]
        q = tl.load(q_start + rows[:, None] * stride_ql + dims[None, :], mask=q_mask, other=0.0)
        dout = tl.load(dout_start + rows[:, None] * stride_dol + dims[None, :], mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + stats_start + rows, mask=row_ok, other=0.0)
        delta = tl.load(delta_ptr + stats_start + rows, mask=row_ok, other=0.0)
        lse_log2 = _lse_log2(lse)
        if FP32_DOTS:
            q = q.to(tl.float32)
            dout = dout.to(tl.float32)
        # Recompute P^T from q, k and the LSE, as in the dq kernel.
        scores_t = tl.dot(k, tl.trans(q), input_precision="ieee") * scale_log2 + bias[:, None] * LOG2E
        p_t = tl.math.exp2(scores_t - lse_log2[None, :])
        p_t = tl.where(row_ok[None, :], p_t, 0.0)
        dp_t = tl.dot(v, tl.trans(dout), input_precision="ieee")
        if DROPOUT:  # the forward's keep bits, regenerated from the same Philox indices
            keep_t = _dropout_keep(seed, dropout_p, bh, q_len_padded, k_len_padded, rows[None, :], cols[:, None])
            dropout_scale = 1.0 / (1.0 - dropout_p)
            p_dropped_t = tl.where(keep_t, p_t * dropout_scale, 0.0)
            dp_t = tl.where(keep_t, dp_t * dropout_scale, 0.0)
        else:
            p_dropped_t = p_t
        dv = tl.dot(p_dropped_t.to(dout.dtype), dout, dv, input_precision="ieee")
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision="ieee")
    dk = dk * scale
    store_mask = (cols < k_stored)[:, None] & dim_ok[None, :]  # masked keys get explicit zero gradients
    tl.store(_tile_ptrs(dk_ptr, b, h, row_start, cols, dims, stride_dkb, stride_dkh, stride_dkl),
             dk.to(dk_ptr.dtype.element_ty), mask=store_mask)
    tl.store(_tile_ptrs(dv_ptr, b, h, row_start, cols, dims, stride_dvb, stride_dvh, stride_dvl),
             dv.to(dv_ptr.dtype.element_ty), mask=store_mask)


# ---------------------------------------------------------------------------------------------------------------
# Launchers and launch configurations
# ---------------------------------------------------------------------------------------------------------------

HEAD_DIM_BLOCKS = (16, 32, 64, 128)  # head dims 1..128 are padded up to the next of these
KERNELS = ("forward", "dq", "dkdv")  # the tile table's names: attention.forward, attention.dq, attention.dkdv
TABLE_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16"}  # fp32 runs only under the interpreter


@dataclass(frozen=True, kw_only=True)
class Tiles:
    """Launch configuration of one kernel: score tiles of BLOCK_M query rows x BLOCK_N key rows."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Under the interpreter registers do not matter and large tiles mean fewer programs to simulate.
INTERPRETER_TILES = Tiles(block_m=64, block_n=64, num_warps=4, num_stages=1)


def _tile_configs(dtype: torch.dtype, block_d: int, dropout: bool, arch: str | None) -> dict:
    """Tiles per kernel ("forward", "dq", "dkdv"): the interpreter's (arch None), else the tile table's entry for
    (arch, dtype, head-dim block, dropout) (kernels/tiles.py, docs/design.md §7.5)."""
    if arch is None:
        return dict.fromkeys(KERNELS, INTERPRETER_TILES)
    key = dict(dtype=TABLE_DTYPES[dtype], head_dim=block_d, dropout=dropout)
    return {name: Tiles(**tiles.lookup(f"attention.{name}", arch, **key)) for name in KERNELS}


def block_head_dim(head_dim: int) -> int:
    for block in HEAD_DIM_BLOCKS:
        if head_dim <= block:
            return block
    raise ValueError(f"head_dim must be <= {HEAD_DIM_BLOCKS[-1]}, got {head_dim}")


def _row_strides(t):
    """(batch, head, row) strides of a [B, heads, L, D] view or of a packed [total, heads, D] tensor."""
    if t.dim() == 4:
        return t.stride(0), t.stride(1), t.stride(2)
    return 0, t.stride(1), t.stride(0)


def _stats_strides(stats):
    """(batch, head) strides of the fp32 per-row statistics: [B, heads, Lq] padded, [heads, total] packed."""
    if stats.dim() == 3:
        return stats.stride(0), stats.stride(1)
    return 0, stats.stride(0)


def _bias_strides(key_bias):
    """The bias is [B, Lk] fp32, or a single 0 (no mask) read through zero strides."""
    if key_bias.dim() == 2:
        return key_bias.stride(0), key_bias.stride(1)
    return 0, 0


def _as_heads_first(t):
    """[B, L, heads, D] buffers are addressed as [B, heads, L, D] views; packed tensors stay as they are."""
    return t.transpose(1, 2) if t.dim() == 4 else t


def _launch_setup(q, bounds, dropout_p):
    """(head_dim, tiles per kernel, n_batch, heads, constexprs shared by the three kernels) of a call."""
    head_dim = q.shape[-1]
    block_d = block_head_dim(head_dim)
    configs = _tile_configs(q.dtype, block_d, dropout_p > 0, target_arch(q.device) if gpu_tiles() else None)
    n_batch = bounds.shape[1]
    heads = q.shape[1]
    # The interpreter computes bf16 wrongly (docs/design.md §6): there the products run on fp32 copies.
    fp32_dots = interpreted() and q.dtype == torch.bfloat16
    constexprs = dict(HEAD_DIM=head_dim, DROPOUT=dropout_p > 0, FP32_DOTS=fp32_dots, BLOCK_D=block_d)
    return head_dim, configs, n_batch, heads, constexprs


def forward(q, k, v, key_bias, bounds, q_len_padded: int, k_len_padded: int, scale: float, dropout_p: float,
            seed: int):
    """Forward pass. Padded: q, k, v [B, heads, L, D] (any strides, unit stride on D); returns out as a
    contiguous [B, Lq, heads, D] tensor and lse [B, heads, Lq] fp32. Packed: q, k, v [total, heads, D];
    returns out [total, heads, D] and lse [heads, total]."""
    head_dim, configs, n_batch, heads, constexprs = _launch_setup(q, bounds, dropout_p)
    if q.dim() == 4:
        out = torch.empty(q.shape[0], q_len_padded, heads, head_dim, device=q.device, dtype=q.dtype)
        lse = torch.empty(q.shape[0], heads, q_len_padded, device=q.device, dtype=torch.float32)
    else:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        lse = torch.empty(heads, q.shape[0], device=q.device, dtype=torch.float32)
    tiles = configs["forward"]
    attention_forward_kernel[(triton.cdiv(q_len_padded, tiles.block_m), n_batch * heads)](
        q, k, v, key_bias, bounds, out, lse,
        *_row_strides(q), *_row_strides(k), *_row_strides(v), *_row_strides(_as_heads_first(out)),
        *_stats_strides(lse), *_bias_strides(key_bias),
        n_batch, heads, q_len_padded, k_len_padded, scale * LOG2E.value, seed, dropout_p,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        **constexprs,
    )
    return out, lse


def backward(dout, q, k, v, out, lse, key_bias, bounds, q_len_padded: int, k_len_padded: int, scale: float,
             dropout_p: float, seed: int):
    """Gradients of ``forward``. ``dout`` and ``out`` have out's shape ([B, Lq, heads, D] padded, any strides for
    dout). Returns dq, dk, dv shaped like q, k, v: [B, heads, L, D] views of contiguous [B, L, heads, D] buffers
    (padded) or contiguous [total, heads, D] (packed)."""
    head_dim, configs, n_batch, heads, constexprs = _launch_setup(q, bounds, dropout_p)

    def gradient_like(t):
        if t.dim() == 4:
            return torch.empty(t.shape[0], t.shape[2], heads, head_dim, device=t.device, dtype=t.dtype).transpose(1, 2)
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    dq, dk, dv = gradient_like(q), gradient_like(k), gradient_like(v)
    delta = torch.empty_like(lse)
    out_view, dout_view = _as_heads_first(out), _as_heads_first(dout)
    tiles = configs["dq"]
    attention_backward_dq_kernel[(triton.cdiv(q_len_padded, tiles.block_m), n_batch * heads)](
        q, k, v, key_bias, bounds, out, dout, lse, delta, dq,
        *_row_strides(q), *_row_strides(k), *_row_strides(v), *_row_strides(out_view), *_row_strides(dout_view),
        *_row_strides(dq), *_stats_strides(lse), *_bias_strides(key_bias),
        n_batch, heads, q_len_padded, k_len_padded, scale, scale * LOG2E.value, seed, dropout_p,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        **constexprs,
    )
    tiles = configs["dkdv"]
    attention_backward_dkdv_kernel[(triton.cdiv(k_len_padded, tiles.block_n), n_batch * heads)](
        q, k, v, key_bias, bounds, dout, lse, delta, dk, dv,
        *_row_strides(q), *_row_strides(k), *_row_strides(v), *_row_strides(dout_view),
        *_row_strides(dk), *_row_strides(dv), *_stats_strides(lse), *_bias_strides(key_bias),
        n_batch, heads, q_len_padded, k_len_padded, scale, scale * LOG2E.value, seed, dropout_p,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, num_warps=tiles.num_warps, num_stages=tiles.num_stages,
        **constexprs,
    )
    return dq, dk, dv


# What the AOT compile builds (docs/design.md §6): ELECTRA's head dim 64 in both GPU dtypes at the small
# (128 x 128, 4 heads) and base (16 x 512, 12 heads) shapes, and the 128 head-dim family in bf16.
# ELECTRA_FAST_AOT_FULL=1 adds fp16/bf16 x head dims 16/32/80/96/128.
# (dtype, head dim, batch, length, heads)
AOT_SHAPES = ((torch.bfloat16, 64, 128, 128, 4), (torch.bfloat16, 64, 16, 512, 12), (torch.float16, 64, 16, 512, 12),
              (torch.bfloat16, 128, 16, 512, 8))
FULL_AOT_SHAPES = tuple((dtype, d, 16, 512, 8) for dtype in (torch.float16, torch.bfloat16)
                        for d in (16, 32, 80, 96, 128))
AOT_SEED = 0x2545F4914F6CDD1D  # a step seed of 62 bits, as electra_fast.rng draws them (i64, not 16-aligned)


def representative_launch(dtype, head_dim: int, batch: int, length: int, heads: int, dropout: bool,
                          packed: bool = False):
    """Forward and backward as the model calls them on a GPU, on CPU tensors (the AOT compile records the
    launches instead of running them): q, k, v and dO are [B, heads, L, D] views of contiguous [B, L, heads, D]
    projections, the key padding mask an fp32 bias [B, L]; packed, [B * L, heads, D] with cu_seqlens bounds.
    The architecture whose tiles they use is the one being recorded (registry.target_arch)."""
    if packed:
        q, k, v, dout = (torch.empty(batch * length, heads, head_dim, dtype=dtype) for _ in range(4))
        starts = torch.arange(batch, dtype=torch.int32) * length
        lengths = torch.full((batch,), length, dtype=torch.int32)
        bounds = torch.stack([starts, lengths, lengths, lengths])
        key_bias = torch.zeros(1)
    else:
        q, k, v, dout = (torch.empty(batch, length, heads, head_dim, dtype=dtype).transpose(1, 2) for _ in range(4))
        filled = torch.full((batch,), length, dtype=torch.int32)
        bounds = torch.stack([torch.zeros_like(filled), filled, filled, filled])
        key_bias = torch.zeros(batch, length)
    dropout_p, seed = (0.1, AOT_SEED) if dropout else (0.0, 0)
    scale = head_dim**-0.5
    out, lse = forward(q, k, v, key_bias, bounds, length, length, scale, dropout_p, seed)
    backward(dout.transpose(1, 2) if dout.dim() == 4 else dout, q, k, v, out, lse, key_bias, bounds, length, length,
             scale, dropout_p, seed)


def _register_launch_configs():
    """AOT entries (docs/design.md §6): the three kernels with and without dropout at AOT_SHAPES, and the packed
    layout at the base shape. Their inner loops must issue wgmma on sm_90a and stream K/V (Q/dO in dk/dv) with
    asynchronous copies."""
    full = os.environ.get("ELECTRA_FAST_AOT_FULL", "0") not in ("", "0")

    def run(arch):  # the launchers pick arch's tiles through registry.target_arch while it records
        for shape in AOT_SHAPES + (FULL_AOT_SHAPES if full else ()):
            for dropout in (False, True):
                representative_launch(*shape, dropout)
        representative_launch(torch.bfloat16, 64, 16, 512, 12, False, packed=True)

    register_launches(run, expect=("wgmma", "async_copy"))


_register_launch_configs()
