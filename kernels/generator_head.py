"""Fused generator head: LM-head matmul + cross-entropy + Gumbel-max sampling, without [M, V] logits in memory.

Forward: each program takes BLOCK_M rows of ``hidden`` [M, E] and one contiguous split of the vocabulary,
walks it in BLOCK_V tiles (logits tile = hidden @ weight[tile].T + bias, fp32 accumulation over E in
BLOCK_K steps) and keeps per row, in fp32: an online log-sum-exp, the target logit, and a running argmax of
``logits / T + gumbel``. The host combines the per-split results (a few [splits, M] tensors).

Backward: two kernels recompute logit tiles from ``hidden``, ``weight`` and the saved per-row LSE and form
``dlogits = (softmax - onehot) * row_scale`` in fp32 (row_scale = grad_loss * w_row / sum(w), 0 for
padding rows). ``dh = dlogits @ W`` is computed by programs over (M-tile, E-tile, vocabulary split), each
looping over its split and writing an fp32 partial that the host sums over the few splits (one split once M
alone fills the GPU); ``dW = dlogits^T @ h`` and ``db = sum_rows dlogits`` by programs over (V-tile, E-tile)
looping over all rows. Every element is written by exactly one program after a fixed-order loop: no atomics,
so gradients are bitwise reproducible, and dW / db are accumulated in fp32 registers and cast once.

Every load is upcast to fp32 (bf16 arithmetic is wrong in the interpreter); operands are cast to
``DOT_DTYPE`` (the dtype of ``hidden``) just before ``tl.dot``, with IEEE fp32 products when it is fp32.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .philox import draw_uniform
from .registry import TRITON_DTYPES, interpreted, pointer_type, register

GUMBEL_STREAM = tl.constexpr(4)  # electra_fast.rng.Stream.GUMBEL


@dataclass(frozen=True, kw_only=True)
class Tiles:
    """Launch configuration of one precision. BLOCK_K steps E in the logits product; the backward's output
    E-tile is the smallest of ``output_block_e`` covering E (larger E recomputes logits once per E-tile)."""

    block_m: int
    block_v: int
    block_k: int
    backward_block_k: int
    output_block_e: tuple
    input_precision: str
    num_warps: int
    num_stages: int

    def block_e(self, E: int) -> int:
        return next((block for block in self.output_block_e if E <= block), self.output_block_e[-1])


# 16-bit inputs run tensor-core dots; the forward's [64, 64] tile keeps the per-element Philox draws within
# the register file. fp32 inputs use exact IEEE products (docs/design.md §5: ~1e-5 relative), which run on CUDA
# cores with small tiles (larger ones spill).
HALF_TILES = Tiles(block_m=64, block_v=64, block_k=64, backward_block_k=32, output_block_e=(64, 128),
                   input_precision="ieee", num_warps=8, num_stages=3)
FLOAT_TILES = Tiles(block_m=32, block_v=32, block_k=32, backward_block_k=32, output_block_e=(64,),
                    input_precision="ieee", num_warps=4, num_stages=1)


def tiles_for(dtype: torch.dtype) -> Tiles:
    # The interpreter's cost is per program, not per element, and it has no registers to spill: there fp32
    # runs with the 16-bit tiles (the masking logic under test is the same for every tile size).
    if dtype == torch.float32 and not interpreted():
        return FLOAT_TILES
    return HALF_TILES


@triton.jit
def _logits_tile(hidden_ptr, weight_ptr, bias_ptr, offs_m, offs_v, in_m, in_v, E,
                 stride_hm, stride_he, stride_wv, stride_we,
                 DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 logits [BLOCK_M, BLOCK_V] = hidden[offs_m] @ weight[offs_v].T + bias; -inf past V."""
    # Every block is a tl.arange length (a power of two) and a tl.dot dimension (at least 16).
    tl.static_assert((BLOCK_M & (BLOCK_M - 1)) == 0 and BLOCK_M >= 16, "BLOCK_M must be a power of two >= 16")
    tl.static_assert((BLOCK_V & (BLOCK_V - 1)) == 0 and BLOCK_V >= 16, "BLOCK_V must be a power of two >= 16")
    tl.static_assert((BLOCK_K & (BLOCK_K - 1)) == 0 and BLOCK_K >= 16, "BLOCK_K must be a power of two >= 16")
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, E, BLOCK_K):
        in_k = (k0 + offs_k) < E
        h = tl.load(hidden_ptr + offs_m[:, None] * stride_hm + (k0 + offs_k)[None, :] * stride_he,
                    mask=in_m[:, None] & in_k[None, :], other=0.0).to(tl.float32)
        w = tl.load(weight_ptr + offs_v[None, :] * stride_wv + (k0 + offs_k)[:, None] * stride_we,
                    mask=in_v[None, :] & in_k[:, None], other=0.0).to(tl.float32)
        acc = tl.dot(h.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    acc += tl.load(bias_ptr + offs_v, mask=in_v, other=0.0).to(tl.float32)[None, :]
    return tl.where(in_v[None, :], acc, float("-inf"))


@triton.jit
def _vocab_split(split, v_per_split, V):
    """[start, end) of a vocabulary split: v_per_split ids (whole BLOCK_V tiles), the last split cut at V."""
    split_start = split * v_per_split
    return split_start, tl.minimum(split_start + v_per_split, V)


@triton.jit
def _split_logits_tile(v0, split_end, hidden_ptr, weight_ptr, bias_ptr, offs_m, in_m, E,
                       stride_hm, stride_he, stride_wv, stride_we,
                       DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """One step of the loop over a vocabulary split: the ids v0 + [0, BLOCK_V), which of them are in the split,
    and their fp32 logits (-inf past the split)."""
    offs_v = v0 + tl.arange(0, BLOCK_V)
    in_v = offs_v < split_end
    logits = _logits_tile(hidden_ptr, weight_ptr, bias_ptr, offs_m, offs_v, in_m, in_v, E,
                          stride_hm, stride_he, stride_wv, stride_we,
                          DOT_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
    return offs_v, in_v, logits


@triton.jit(do_not_specialize=["seed"])  # the seed changes every step: one compiled kernel for all of them
def generator_head_forward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr,
    partial_lse_ptr, partial_target_ptr, partial_score_ptr, partial_index_ptr,
    seed, temperature, disallow_correct, M, V, E, v_per_split,
    stride_hm, stride_he, stride_wv, stride_we,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (row tile, vocabulary split) writes per row: LSE, target logit, best score and its id."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = offs_m < M
    targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
    excluded = tl.where(disallow_correct != 0, targets, -1)  # the id disallow_correct removes (-1: none)
    row_base = offs_m.to(tl.int64) * V  # Gumbel element index = row * V + v (docs/design.md §4)

    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    best_score = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_M,), dtype=tl.int64)

    split_start, split_end = _vocab_split(split, v_per_split, V)
    for v0 in range(split_start, split_end, BLOCK_V):
        offs_v, in_v, logits = _split_logits_tile(v0, split_end, hidden_ptr, weight_ptr, bias_ptr, offs_m, in_m, E,
                                                  stride_hm, stride_he, stride_wv, stride_we,
                                                  DOT_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        # Online log-sum-exp in fp32 (every tile has at least one column < V, so tile_max is finite).
        tile_max = tl.max(logits, axis=1)
        new_max = tl.maximum(running_max, tile_max)
        running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(logits - new_max[:, None]), axis=1)
        running_max = new_max
        is_target = offs_v[None, :].to(tl.int64) == targets[:, None]
        target_logit += tl.sum(tl.where(is_target, logits, 0.0), axis=1)

        # Gumbel-max: argmax of logits / T - log(-log(u)); ties go to the lowest id, as torch.argmax.
        u = draw_uniform(seed, GUMBEL_STREAM, row_base[:, None] + offs_v[None, :])
        scores = logits / temperature - tl.log(-tl.log(u))
        allowed = in_v[None, :] & (offs_v[None, :].to(tl.int64) != excluded[:, None])
        scores = tl.where(allowed, scores, float("-inf"))
        tile_best = tl.max(scores, axis=1)
        tile_index = tl.argmax(scores, axis=1).to(tl.int64) + v0
        better = tile_best > best_score
        best_index = tl.where(better, tile_index, best_index)
        best_score = tl.where(better, tile_best, best_score)

    out = split * M + offs_m
    tl.store(partial_lse_ptr + out, running_max + tl.log(running_sum), mask=in_m)
    tl.store(partial_target_ptr + out, target_logit, mask=in_m)
    tl.store(partial_score_ptr + out, best_score, mask=in_m)
    tl.store(partial_index_ptr + out, best_index, mask=in_m)


@triton.jit
def _dlogits_tile(logits, lse, targets, row_scale, offs_v):
    """(softmax - onehot) * row_scale in fp32; exactly 0 for rows whose scale is 0 (padding slots).

    The target's p - 1 is formed in fp32 from the fp32 logits (no cancellation in 16-bit near p = 1); only the
    finished gradient is rounded to DOT_DTYPE for the tensor-core products.
    """
    probs = tl.exp(logits - lse[:, None])
    onehot = offs_v[None, :].to(tl.int64) == targets[:, None]
    grad = (probs - tl.where(onehot, 1.0, 0.0)) * row_scale[:, None]
    return tl.where(row_scale[:, None] != 0.0, grad, 0.0)


@triton.jit
def generator_head_backward_hidden_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, row_scale_ptr, partial_grad_hidden_ptr,
    M, V, E, v_per_split,
    stride_hm, stride_he, stride_wv, stride_we,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """fp32 partial dh[split, rows, e-tile] = sum over the split's vocabulary tiles of dlogits @ W[tile, e-tile]
    (logits recomputed). The host sums the few splits in a fixed order."""
    tl.static_assert((BLOCK_E & (BLOCK_E - 1)) == 0 and BLOCK_E >= 16, "BLOCK_E must be a power of two >= 16")
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    split = tl.program_id(2)
    in_m = offs_m < M
    in_e = offs_e < E
    targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)
    row_scale = tl.load(row_scale_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)

    acc = tl.zeros((BLOCK_M, BLOCK_E), dtype=tl.float32)
    split_start, split_end = _vocab_split(split, v_per_split, V)
    for v0 in range(split_start, split_end, BLOCK_V):
        offs_v, in_v, logits = _split_logits_tile(v0, split_end, hidden_ptr, weight_ptr, bias_ptr, offs_m, in_m, E,
                                                  stride_hm, stride_he, stride_wv, stride_we,
                                                  DOT_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        grad_logits = _dlogits_tile(logits, lse, targets, row_scale, offs_v)
        w = tl.load(weight_ptr + offs_v[:, None] * stride_wv + offs_e[None, :] * stride_we,
                    mask=in_v[:, None] & in_e[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(grad_logits.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    out = (split * M + offs_m[:, None]).to(tl.int64) * E + offs_e[None, :]
    tl.store(partial_grad_hidden_ptr + out, acc, mask=in_m[:, None] & in_e[None, :])


@triton.jit
def generator_head_backward_weight_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, row_scale_ptr, grad_weight_ptr, grad_bias_ptr,
    M, V, E,
    stride_hm, stride_he, stride_wv, stride_we, stride_gv,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
):
    """dW[v-tile, e-tile] = dlogits[:, tile]^T @ h[:, e-tile] over all rows (logits recomputed), accumulated
    in fp32 registers in row order and cast once; db[v-tile] is stored by the e-tile-0 program."""
    tl.static_assert((BLOCK_E & (BLOCK_E - 1)) == 0 and BLOCK_E >= 16, "BLOCK_E must be a power of two >= 16")
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    in_v = offs_v < V
    in_e = offs_e < E

    acc = tl.zeros((BLOCK_V, BLOCK_E), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
        lse = tl.load(lse_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)
        row_scale = tl.load(row_scale_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)
        logits = _logits_tile(hidden_ptr, weight_ptr, bias_ptr, offs_m, offs_v, in_m, in_v, E,
                              stride_hm, stride_he, stride_wv, stride_we,
                              DOT_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_V, BLOCK_K)
        grad_logits = _dlogits_tile(logits, lse, targets, row_scale, offs_v)
        bias_acc += tl.sum(grad_logits, axis=0)
        h = tl.load(hidden_ptr + offs_m[:, None] * stride_hm + offs_e[None, :] * stride_he,
                    mask=in_m[:, None] & in_e[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(tl.trans(grad_logits).to(DOT_DTYPE), h.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    tl.store(grad_weight_ptr + offs_v[:, None] * stride_gv + offs_e[None, :],
             acc.to(grad_weight_ptr.dtype.element_ty), mask=in_v[:, None] & in_e[None, :])
    if pid_e == 0:
        tl.store(grad_bias_ptr + offs_v, bias_acc, mask=in_v)


def _vocab_splits(other_programs: int, V: int, tiles: Tiles, device: torch.device) -> tuple[int, int]:
    """(number of vocabulary splits, columns per split): with ``other_programs`` programs per split, enough
    programs to fill the GPU when M is small (one split when M alone fills it). The interpreter runs programs
    one after another: there a few splits suffice."""
    vocab_tiles = triton.cdiv(V, tiles.block_v)
    wanted_programs = 4 if interpreted() else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    splits = min(vocab_tiles, max(1, triton.cdiv(wanted_programs, other_programs)))
    tiles_per_split = triton.cdiv(vocab_tiles, splits)
    return triton.cdiv(vocab_tiles, tiles_per_split), tiles_per_split * tiles.block_v


def _bias_or_zeros(bias, weight):
    """Kernels always add a bias; without one they add exact zeros (a [V] buffer, negligible next to W)."""
    return bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def forward(hidden, weight, bias, targets, *, temperature: float, disallow_correct: bool, seed: int):
    """Per-row (lse [M] fp32, target logit [M] fp32, samples [M] int64) of the generator head.

    ``targets`` is a contiguous int64 [M], ``bias`` None or contiguous [V]; hidden and weight may be strided.
    """
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype)
    splits, v_per_split = _vocab_splits(triton.cdiv(M, tiles.block_m), V, tiles, hidden.device)
    partial = torch.empty((3, splits, M), dtype=torch.float32, device=hidden.device)
    partial_index = torch.empty((splits, M), dtype=torch.int64, device=hidden.device)
    generator_head_forward_kernel[(triton.cdiv(M, tiles.block_m), splits)](
        hidden, weight, _bias_or_zeros(bias, weight), targets, partial[0], partial[1], partial[2], partial_index,
        seed, float(temperature), int(disallow_correct), M, V, E, v_per_split,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        DOT_DTYPE=TRITON_DTYPES[hidden.dtype],
        INPUT_PRECISION=tiles.input_precision, BLOCK_M=tiles.block_m, BLOCK_V=tiles.block_v, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    # Combine splits: LSE of LSEs, the one non-zero target logit, the best score (first split on ties).
    lse = torch.logsumexp(partial[0], dim=0)
    target_logit = partial[1].sum(dim=0)
    best_split = partial[2].argmax(dim=0, keepdim=True)
    samples = partial_index.gather(0, best_split).squeeze(0)
    return lse, target_logit, samples


def backward(hidden, weight, bias, targets, lse, row_scale):
    """(dh like hidden, dW [V, E] in weight's dtype, db [V] fp32) for dlogits = (softmax - onehot) * row_scale."""
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype)
    block_e = tiles.block_e(E)
    row_tiles, e_tiles = triton.cdiv(M, tiles.block_m), triton.cdiv(E, block_e)
    splits, v_per_split = _vocab_splits(row_tiles * e_tiles, V, tiles, hidden.device)
    partial_grad_hidden = torch.empty((splits, M, E), dtype=torch.float32, device=hidden.device)
    grad_weight = torch.empty((V, E), dtype=weight.dtype, device=weight.device)
    grad_bias = torch.empty((V,), dtype=torch.float32, device=weight.device)
    bias = _bias_or_zeros(bias, weight)
    constexprs = dict(
        DOT_DTYPE=TRITON_DTYPES[hidden.dtype], INPUT_PRECISION=tiles.input_precision,
        BLOCK_M=tiles.block_m, BLOCK_V=tiles.block_v, BLOCK_K=tiles.backward_block_k, BLOCK_E=block_e,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    strides = (hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1))
    generator_head_backward_hidden_kernel[(row_tiles, e_tiles, splits)](
        hidden, weight, bias, targets, lse, row_scale, partial_grad_hidden, M, V, E, v_per_split, *strides,
        **constexprs,
    )
    grad_hidden = partial_grad_hidden.sum(dim=0).to(hidden.dtype)  # fixed-order sum: deterministic
    generator_head_backward_weight_kernel[(triton.cdiv(V, tiles.block_v), e_tiles)](
        hidden, weight, bias, targets, lse, row_scale, grad_weight, grad_bias, M, V, E, *strides,
        grad_weight.stride(0), **constexprs,
    )
    return grad_hidden, grad_weight, grad_bias


def _register_launch_configs():
    """Every constexpr combination the launchers use, for the AOT compile check, in bf16 (fp16 compiles the
    same code) and fp32."""
    for dtype in (torch.bfloat16, torch.float32):
        tensor = pointer_type(dtype)
        tiles = FLOAT_TILES if dtype == torch.float32 else HALF_TILES
        options = dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages)
        inputs = {"hidden_ptr": tensor, "weight_ptr": tensor, "bias_ptr": tensor, "targets_ptr": "*i64"}
        strides = {"stride_hm": "i32", "stride_he": "i32", "stride_wv": "i32", "stride_we": "i32"}
        sizes = {"M": "i32", "V": "i32", "E": "i32"}
        common = {"DOT_DTYPE": TRITON_DTYPES[dtype], "INPUT_PRECISION": tiles.input_precision,
                  "BLOCK_M": tiles.block_m, "BLOCK_V": tiles.block_v}
        register(
            generator_head_forward_kernel,
            {**inputs, "partial_lse_ptr": "*fp32", "partial_target_ptr": "*fp32", "partial_score_ptr": "*fp32",
             "partial_index_ptr": "*i64", "seed": "i64", "temperature": "fp32", "disallow_correct": "i32", **sizes,
             "v_per_split": "i32", **strides},
            {**common, "BLOCK_K": tiles.block_k},
            **options,
        )
        backward_inputs = {**inputs, "lse_ptr": "*fp32", "row_scale_ptr": "*fp32"}
        for block_e in tiles.output_block_e:
            backward = {**common, "BLOCK_K": tiles.backward_block_k, "BLOCK_E": block_e}
            register(
                generator_head_backward_hidden_kernel,
                {**backward_inputs, "partial_grad_hidden_ptr": "*fp32", **sizes, "v_per_split": "i32", **strides},
                backward, **options,
            )
            register(
                generator_head_backward_weight_kernel,
                {**backward_inputs, "grad_weight_ptr": tensor, "grad_bias_ptr": "*fp32", **sizes, **strides,
                 "stride_gv": "i32"},
                backward, **options,
            )


_register_launch_configs()
