"""Fused generator head, Triton only: LM-head matmul + cross-entropy + Gumbel-max sampling + the gradients, in
four GEMMs of work (the minimum is three: logits, dh, dW) and without [M, V] logits in memory.

Tiling, as Cut Cross-Entropy's kernels do it: a logit tile has at least 64 rows and 64-128 vocabulary ids and is
accumulated over E in chunks of BLOCK_E (16-64) with several pipeline stages, so on sm_90a every ``tl.dot`` is a
wgmma at any E (64, 128, 256, 768, 1024 alike); E is never held whole. What spans E is an accumulator of
[rows, E] (forward) or [vocabulary ids, E] (backward), too big for registers at E = 768 with such tiles: the one
program that owns those output rows keeps it in global memory, fp32 (L2-resident: a program's slice is
BLOCK_M x E x 4 bytes), and updates it chunk by chunk after each logit tile (read, add, write). A barrier
after each tile's updates makes them visible to every thread of the program before the next tile reads them
(threads of a program may hold an element in different layouts for the load and the store). The price of
tiles that fit wgmma without atomics is that traffic: 8 * E bytes per row and tile, read and written.

Forward (one GEMM; two with ``COMPUTE_GRAD``): program (row tile, vocabulary split) walks the split's BLOCK_V
tiles: logits = h @ W[tile].T + b in fp32 over the E chunks, an online log-sum-exp, the target logit and a
running argmax of ``logits / T + gumbel``. With ``COMPUTE_GRAD`` it also accumulates, as FlashAttention does its
output, ``g = sum_v exp(logit_v - running max) * W[v]`` over the non-target ids: per E chunk
``g[split, rows, chunk] = g * rescale + p @ W[tile, chunk]`` (fp32, in the split's own slice of the partial
buffer), then divides by the split's sum at the end. So ``g = softmax @ W - W[target]``, the gradient of a row's
cross-entropy with respect to its hidden row, is the splits' combination ``+ (p_target - 1) * W[target]``, which
the host forms in fp32 from the final LSE (no 16-bit cancellation near p = 1), combining the few splits in a
fixed order. dh = row_scale * g later.

Backward (two GEMMs): program (vocabulary tile) walks all rows: recompute the transposed logit tile
``W[tile] @ h[rows].T`` over the E chunks, form ``dlogits = (softmax - onehot) * row_scale`` in fp32 from the
saved LSE, then per E chunk ``dW32[tile, chunk] += dlogits.T @ h[rows, chunk]`` in an fp32 [V, E] buffer (the
gradient itself for fp32 weights; for 16-bit weights a scratch buffer cast once by the host) and ``db[tile] +=
sum_rows dlogits`` in registers. Every output element is written by one program after a fixed-order loop: no
atomics, bitwise reproducible.

Operands reach ``tl.dot`` in ``DOT_DTYPE``, the input dtype (fp16/bf16 tensor cores, fp32 with IEEE products, no
TF32), straight from the load so that the compiler can stream them into shared memory asynchronously; under
the interpreter, which computes bf16 wrongly, bf16 runs its products on fp32 copies (DOT_DTYPE = fp32).
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import tiles as tile_table
from .constants import Stream
from .philox import draw_uniform
from .registry import (
    SIGNATURE_TYPES,
    TRITON_DTYPES,
    current_geometry,
    gpu_tiles,
    interpreted,
    multiprocessors,
    register_launches,
    target_arch,
)

GUMBEL_STREAM = tl.constexpr(int(Stream.GUMBEL))  # constants.Stream, as electra_fast.rng


@dataclass(frozen=True, kw_only=True)
class Tiles:
    """Launch configuration of one precision: rows and vocabulary ids per logit tile of each pass, the E chunk,
    warps and pipeline stages."""

    forward_block_m: int
    forward_block_v: int
    backward_block_m: int
    backward_block_v: int
    block_e: int
    num_warps: int
    num_stages: int


# GPU tiles: the tile table's "generator_head" entries (kernels/tile_table.json, keyed by architecture and dtype;
# E-independent, since E is a loop bound walked in chunks), pruned on the CPU by ``python -m electra_fast.tune
# prune-head`` (docs/design.md §7.5). fp16/bf16: logit tiles whose dot M side is at least 64 (wgmma on sm_90a)
# in whole warpgroups, E streamed in chunks with several stages (cp.async). fp32: IEEE products on CUDA cores,
# no wgmma to shape the tiles for; small tiles keep every build under ptxas's register caps.
# The interpreter's cost is per program and per loop step, not per element: few large tiles, a 64-wide E chunk
# (so E = 80 or 300 still runs the chunk loop with a partial last chunk).
INTERPRETER_TILES = Tiles(forward_block_m=64, forward_block_v=64, backward_block_m=64, backward_block_v=64,
                          block_e=64, num_warps=4, num_stages=1)


def tiles_for_gpu(dtype: torch.dtype, arch: str | None = None) -> Tiles:
    """The GPU tiles for inputs of ``dtype`` on the table architecture ``arch`` (default: the one a launch here
    targets, registry.target_arch; sm_90 where no GPU is present, as the counted work and the auto rule model an
    H100), the same at every E: one compiled kernel per pass and dtype serves every width, which the AOT compile
    (sm_80 and sm_90a) builds without spills (tests/test_aot_compile.py)."""
    if arch is None:
        try:
            arch = target_arch(None)
        except (AssertionError, RuntimeError):  # no CUDA here: torch.cuda cannot name a device
            arch = "sm_90"
    return Tiles(**tile_table.lookup("generator_head", arch, dtype=SIGNATURE_TYPES[dtype]))


def tiles_for(dtype: torch.dtype) -> Tiles:
    """The tiles the launchers use here: the GPU's (registry.gpu_tiles) or the interpreter's."""
    return tiles_for_gpu(dtype) if gpu_tiles() else INTERPRETER_TILES


def has_wgmma(tiles: Tiles, dtype: torch.dtype) -> bool:
    """Whether sm_90a can run every tl.dot of these tiles as wgmma: 16-bit operands, warps in whole warpgroups
    and an M side of at least 64 per dot (forward: the row tile; backward: the vocabulary tile)."""
    return (dtype in (torch.float16, torch.bfloat16) and tiles.num_warps % 4 == 0
            and min(tiles.forward_block_m, tiles.backward_block_v) >= 64 and tiles.block_e >= 16)


@triton.jit
def gumbel_scores(logits, temperature, seed, index):
    """``logits / T - log(-log(u))``: Gumbel-max scores, u drawn from stream GUMBEL at ``index`` = row * V + v of
    the whole batch (docs/design.md §4), so every tiling draws the same number for an element."""
    return logits / temperature - tl.log(-tl.log(draw_uniform(seed, GUMBEL_STREAM, index)))


@triton.jit
def _load_chunk(ptr, offs_r, in_r, stride_r, stride_e, offs_e, E, DOT_DTYPE: tl.constexpr):
    """rows[offs_r][:, offs_e] as DOT_DTYPE (zeros past E or outside the rows)."""
    values = tl.load(ptr + offs_r[:, None].to(tl.int64) * stride_r + offs_e[None, :] * stride_e,
                     mask=in_r[:, None] & (offs_e < E)[None, :], other=0.0)
    return values.to(DOT_DTYPE)


@triton.jit(do_not_specialize=["seed"])  # the seed changes every step: one compiled kernel for all of them
def generator_head_forward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr,
    partial_lse_ptr, partial_target_ptr, partial_score_ptr, partial_index_ptr, partial_grad_ptr,
    seed, temperature, disallow_correct, M, V, E, v_per_split,
    stride_hm, stride_he, stride_wv, stride_we,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_E: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    """Program (row tile, vocabulary split) writes per row: LSE, target logit, best score and its id, and with
    COMPUTE_GRAD the split's softmax-weighted sum of the non-target weight rows, normalised by the split's sum,
    into partial_grad[split, rows, :] (contiguous [splits, M, E] fp32; accumulated there, see the docstring)."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = offs_m < M
    offs_e = tl.arange(0, BLOCK_E)
    targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
    excluded = tl.where(disallow_correct != 0, targets, -1)  # the id disallow_correct removes (-1: none)
    row_base = offs_m.to(tl.int64) * V  # Gumbel element index = row * V + v (docs/design.md §4)
    grad_rows = partial_grad_ptr + (split * M + offs_m).to(tl.int64)[:, None] * E  # this program's slice

    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    best_score = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_M,), dtype=tl.int64)

    split_start = split * v_per_split
    split_end = tl.minimum(split_start + v_per_split, V)
    for v0 in range(split_start, split_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        in_v = offs_v < split_end
        # logits = h @ W[tile].T over the E chunks, fp32 accumulation.
        logits = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            h = _load_chunk(hidden_ptr, offs_m, in_m, stride_hm, stride_he, e0 + offs_e, E, DOT_DTYPE)
            w = _load_chunk(weight_ptr, offs_v, in_v, stride_wv, stride_we, e0 + offs_e, E, DOT_DTYPE)
            logits = tl.dot(h, tl.trans(w), logits, input_precision=INPUT_PRECISION)
        bias = tl.load(bias_ptr + offs_v, mask=in_v, other=0.0).to(tl.float32)
        logits = tl.where(in_v[None, :], logits + bias[None, :], float("-inf"))

        # Online log-sum-exp in fp32 (every tile has at least one column < V, so new_max is finite).
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        rescale = tl.exp(running_max - new_max)  # 0 on the first tile (running_max = -inf)
        unnormalised = tl.exp(logits - new_max[:, None])  # 0 past V
        running_sum = running_sum * rescale + tl.sum(unnormalised, axis=1)
        running_max = new_max
        is_target = offs_v[None, :].to(tl.int64) == targets[:, None]
        target_logit += tl.sum(tl.where(is_target, logits, 0.0), axis=1)

        # Gumbel-max: argmax of logits / T - log(-log(u)); ties go to the lowest id, as torch.argmax.
        scores = gumbel_scores(logits, temperature, seed, row_base[:, None] + offs_v[None, :])
        allowed = in_v[None, :] & (offs_v[None, :].to(tl.int64) != excluded[:, None])
        scores = tl.where(allowed, scores, float("-inf"))
        tile_best = tl.max(scores, axis=1)
        tile_index = tl.argmax(scores, axis=1).to(tl.int64) + v0
        better = tile_best > best_score
        best_index = tl.where(better, tile_index, best_index)
        best_score = tl.where(better, tile_best, best_score)

        if COMPUTE_GRAD:
            # g = g * rescale + p @ W[tile] per E chunk, p the softmax weights without the target (the host adds
            # (p - 1) * W[target] in fp32). The first tile reads nothing: g starts at 0.
            weights = tl.where(is_target, 0.0, unnormalised).to(DOT_DTYPE)
            started = in_m & (offs_m * 0 + v0 > split_start)  # per row: the interpreter's masks take no bool
            for e0 in range(0, E, BLOCK_E):
                in_e = (e0 + offs_e) < E
                w = _load_chunk(weight_ptr, offs_v, in_v, stride_wv, stride_we, e0 + offs_e, E, DOT_DTYPE)
                g_ptrs = grad_rows + (e0 + offs_e)[None, :]
                g = tl.load(g_ptrs, mask=started[:, None] & in_e[None, :], other=0.0)
                g = tl.dot(weights, w, g * rescale[:, None], input_precision=INPUT_PRECISION)
                tl.store(g_ptrs, g, mask=in_m[:, None] & in_e[None, :])
            tl.debug_barrier()  # this tile's g visible to every thread before the next tile reads it

    out = split * M + offs_m
    tl.store(partial_lse_ptr + out, running_max + tl.log(running_sum), mask=in_m)
    tl.store(partial_target_ptr + out, target_logit, mask=in_m)
    tl.store(partial_score_ptr + out, best_score, mask=in_m)
    tl.store(partial_index_ptr + out, best_index, mask=in_m)
    if COMPUTE_GRAD:
        for e0 in range(0, E, BLOCK_E):
            g_ptrs = grad_rows + (e0 + offs_e)[None, :]
            in_g = in_m[:, None] & ((e0 + offs_e) < E)[None, :]
            tl.store(g_ptrs, tl.load(g_ptrs, mask=in_g, other=0.0) / running_sum[:, None], mask=in_g)


@triton.jit
def generator_head_backward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, row_scale_ptr, grad_weight_ptr, grad_bias_ptr,
    M, V, E,
    stride_hm, stride_he, stride_wv, stride_we, stride_gv,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """dW[tile] = dlogits[:, tile].T @ h and db[tile] = sum_rows dlogits[:, tile] over all rows, the logit
    tile recomputed once per row tile; fp32 accumulation in row order: dW in ``grad_weight_ptr`` (fp32 [V, E]
    with row stride ``stride_gv``), db in registers."""
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_v = offs_v < V
    offs_e = tl.arange(0, BLOCK_E)
    bias = tl.load(bias_ptr + offs_v, mask=in_v, other=0.0).to(tl.float32)
    grad_rows = grad_weight_ptr + offs_v[:, None].to(tl.int64) * stride_gv

    bias_acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
        lse = tl.load(lse_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)
        row_scale = tl.load(row_scale_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)  # 0: padding slot
        # The logit tile transposed, [vocabulary ids, rows] = W[tile] @ h.T over the E chunks: the vocabulary
        # side is the dots' M side here and in dW's product below.
        logits = tl.zeros((BLOCK_V, BLOCK_M), dtype=tl.float32)
        for e0 in range(0, E, BLOCK_E):
            w = _load_chunk(weight_ptr, offs_v, in_v, stride_wv, stride_we, e0 + offs_e, E, DOT_DTYPE)
            h = _load_chunk(hidden_ptr, offs_m, in_m, stride_hm, stride_he, e0 + offs_e, E, DOT_DTYPE)
            logits = tl.dot(w, tl.trans(h), logits, input_precision=INPUT_PRECISION)
        logits += bias[:, None]

        # (softmax - onehot) * row_scale in fp32: the target's p - 1 is formed from fp32 logits (no 16-bit
        # cancellation near p = 1); exactly 0 for padding rows whatever their logits. Only the finished
        # gradient is rounded to DOT_DTYPE for the product.
        onehot = offs_v[:, None].to(tl.int64) == targets[None, :]
        grad = (tl.exp(logits - lse[None, :]) - tl.where(onehot, 1.0, 0.0)) * row_scale[None, :]
        grad = tl.where((row_scale[None, :] != 0.0) & in_v[:, None], grad, 0.0)
        bias_acc += tl.sum(grad, axis=1)
        grad = grad.to(DOT_DTYPE)
        # dW[tile, chunk] += grad @ h[rows, chunk] in the fp32 buffer; the first row tile reads nothing.
        for e0 in range(0, E, BLOCK_E):
            in_e = (e0 + offs_e) < E
            h = _load_chunk(hidden_ptr, offs_m, in_m, stride_hm, stride_he, e0 + offs_e, E, DOT_DTYPE)
            dw_ptrs = grad_rows + (e0 + offs_e)[None, :]
            started = in_v & (offs_v * 0 + m0 > 0)  # per id: the interpreter's masks take no Python bool
            dw = tl.load(dw_ptrs, mask=started[:, None] & in_e[None, :], other=0.0)
            dw = tl.dot(grad, h, dw, input_precision=INPUT_PRECISION)
            tl.store(dw_ptrs, dw, mask=in_v[:, None] & in_e[None, :])
        tl.debug_barrier()  # this row tile's dW visible to every thread before the next one reads it
    tl.store(grad_bias_ptr + offs_v, bias_acc, mask=in_v)


def _vocab_splits(row_programs: int, V: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(number of vocabulary splits, columns per split) of the forward: enough programs to fill the GPU when
    M is small (one split once M alone fills it). The interpreter runs programs one after another: there a few
    splits suffice."""
    vocab_tiles = triton.cdiv(V, block_v)
    wanted_programs = 4 * multiprocessors(device) if gpu_tiles() else 4
    splits = min(vocab_tiles, max(1, triton.cdiv(wanted_programs, row_programs)))
    tiles_per_split = triton.cdiv(vocab_tiles, splits)
    return triton.cdiv(vocab_tiles, tiles_per_split), tiles_per_split * block_v


def _bias_or_zeros(bias, weight):
    """Kernels always add a bias; without one they add exact zeros (a [V] buffer, negligible next to W)."""
    return bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def _dot_dtype(dtype: torch.dtype):
    """The products' operand dtype: the input's; fp32 for bf16 under the interpreter (which computes bf16
    wrongly)."""
    return tl.float32 if dtype == torch.bfloat16 and interpreted() else TRITON_DTYPES[dtype]


def forward(hidden, weight, bias, targets, *, temperature: float, disallow_correct: bool, seed: int,
            compute_grad: bool):
    """Per row: (lse [M] fp32, target logit [M] fp32, samples [M] int64, and with ``compute_grad`` the fp32
    [M, E] gradient of the row's cross-entropy with respect to its hidden row, else None).

    ``targets`` is a contiguous int64 [M], ``bias`` None or contiguous [V]; hidden and weight may be strided.
    """
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype)
    row_programs = triton.cdiv(M, tiles.forward_block_m)
    geometry = current_geometry()  # a scaled-down counted launch splits the vocabulary as its real M does
    split_rows = geometry.generator_head_split_rows if geometry and geometry.generator_head_split_rows else M
    splits, v_per_split = _vocab_splits(triton.cdiv(split_rows, tiles.forward_block_m), V, tiles.forward_block_v,
                                        hidden.device)
    partial = torch.empty((3, splits, M), dtype=torch.float32, device=hidden.device)
    partial_index = torch.empty((splits, M), dtype=torch.int64, device=hidden.device)
    # Each program accumulates its rows' g in its split's [M, E] slice (fp32; every element is written).
    partial_grad = torch.empty((splits, M, E) if compute_grad else (1,), dtype=torch.float32, device=hidden.device)
    generator_head_forward_kernel[(row_programs, splits)](
        hidden, weight, _bias_or_zeros(bias, weight), targets, partial[0], partial[1], partial[2], partial_index,
        partial_grad, seed, float(temperature), int(disallow_correct), M, V, E, v_per_split,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        DOT_DTYPE=_dot_dtype(hidden.dtype), INPUT_PRECISION="ieee", BLOCK_M=tiles.forward_block_m,
        BLOCK_V=tiles.forward_block_v, BLOCK_E=tiles.block_e, COMPUTE_GRAD=compute_grad,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    # Combine splits in a fixed order: LSE of LSEs, the one non-zero target logit, the best score (first split
    # on ties).
    lse = torch.logsumexp(partial[0], dim=0)
    target_logit = partial[1].sum(dim=0)
    best_split = partial[2].argmax(dim=0, keepdim=True)
    samples = partial_index.gather(0, best_split).squeeze(0)
    if not compute_grad:
        return lse, target_logit, samples, None
    # Splits' normalised sums weighted by their share of the row's total, in split order, in place (one split:
    # the share is exactly 1 and the buffer is the result).
    grad_rows = partial_grad[0]
    if splits > 1:
        shares = torch.exp(partial[0] - lse)[..., None]
        grad_rows.mul_(shares[0])
        for split in range(1, splits):
            grad_rows.addcmul_(partial_grad[split], shares[split])
        grad_rows = grad_rows.clone()  # saved for backward: [M, E], not the [splits, M, E] buffer it is a view of
    # + (p_target - 1) * W[target] in fp32 (targets of padding rows may be anything: clamped to gather).
    grad_rows.addcmul_((torch.exp(target_logit - lse) - 1.0)[:, None], weight[targets.clamp(0, V - 1)])
    return lse, target_logit, samples, grad_rows


def backward(hidden, weight, bias, targets, lse, row_scale):
    """(dW [V, E] in weight's dtype, db [V] fp32) for dlogits = (softmax - onehot) * row_scale; dh is
    ``row_scale * grad_rows`` from ``forward``. M >= 1 (the op refuses an empty ``hidden``): the first row tile
    writes every element of dW."""
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype)
    # dW accumulates in fp32: in the result itself for fp32 weights, else in a scratch buffer cast once.
    grad_weight32 = torch.empty((V, E), dtype=torch.float32, device=weight.device)
    grad_bias = torch.empty((V,), dtype=torch.float32, device=weight.device)
    generator_head_backward_kernel[(triton.cdiv(V, tiles.backward_block_v),)](
        hidden, weight, _bias_or_zeros(bias, weight), targets, lse, row_scale, grad_weight32, grad_bias, M, V, E,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), grad_weight32.stride(0),
        DOT_DTYPE=_dot_dtype(hidden.dtype), INPUT_PRECISION="ieee", BLOCK_M=tiles.backward_block_m,
        BLOCK_V=tiles.backward_block_v, BLOCK_E=tiles.block_e,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return grad_weight32.to(weight.dtype), grad_bias


# The AOT's representative launches (docs/design.md §6): ELECTRA generator widths (tiny 64, small 128 at 1/4 of
# the discriminator, base 768 and large 1024 at their full hidden size), 16 x 79 masked slots (15.5 % of 512
# tokens at batch 16; a multiple of 16 as the slot layout pads it), BERT's 30522-id vocabulary with a bias.
AOT_WIDTHS = (64, 128, 768, 1024)
AOT_ROWS = 16 * 79
AOT_VOCAB = 30522
AOT_SEED = 0x2545F4914F6CDD1D  # a step seed of 62 bits, as electra_fast.rng draws them (do_not_specialize)


def representative_launch(dtype: torch.dtype, width: int, *, compute_grad: bool, rows: int = AOT_ROWS,
                          vocab: int = AOT_VOCAB):
    """The forward (with or without gradients) and, with gradients, the backward as the model calls them on a
    GPU, on CPU tensors (the AOT compile records the launches instead of running them, as a GPU of the recorded
    architecture makes them: registry.capture_launches): contiguous hidden rows of the masked slots, the tied
    [V, E] embedding as weight, a [V] bias, int64 targets, fp32 LSE and row scales. torch.empty: only shapes,
    strides, dtypes and addresses matter to the recorder."""
    hidden = torch.empty(rows, width, dtype=dtype)
    weight = torch.empty(vocab, width, dtype=dtype)
    bias = torch.empty(vocab, dtype=dtype)
    targets = torch.zeros(rows, dtype=torch.int64)
    lse, *_ = forward(hidden, weight, bias, targets, temperature=1.0, disallow_correct=True, seed=AOT_SEED,
                      compute_grad=compute_grad)
    if compute_grad:
        backward(hidden, weight, bias, targets, lse, torch.ones(rows))


def _register_launch_configs():
    """The launches of a GPU at ELECTRA's widths, with and without gradients. In bf16 and fp16 the GEMM loops
    must issue wgmma on sm_90a and stream h/W chunks with 16-byte asynchronous copies; fp32 runs IEEE products
    on CUDA cores with tiles too narrow for 16-byte copies (4-byte cp.async), so only the common checks."""
    def launches(dtypes):
        def run(arch):  # the launchers pick arch's tiles through registry.target_arch while it records
            for dtype in dtypes:
                for width in AOT_WIDTHS:
                    for compute_grad in (True, False):
                        representative_launch(dtype, width, compute_grad=compute_grad)
        return run

    register_launches(launches((torch.bfloat16, torch.float16)), expect=("wgmma", "async_copy"))
    register_launches(launches((torch.float32,)))

_register_launch_configs()
