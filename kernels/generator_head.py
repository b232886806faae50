"""Fused generator head, Triton only: LM-head matmul + cross-entropy + Gumbel-max sampling + the gradients, in
four GEMMs of work (the minimum is three: logits, dh, dW) and without [M, V] logits in memory.

E is held whole, never tiled: a program keeps its rows of ``hidden`` (forward) or its vocabulary rows of
``weight`` (backward) in registers as two power-of-two parts, E_HIGH + E_LOW >= E (768 = 512 + 256; E_LOW is 0
when E is a power of two), so every logit tile is computed exactly once per pass and no dot runs over padding
beyond the smaller part's rounding. Tiles shrink as E grows to keep the fp32 accumulators in registers.

Forward (one GEMM; two with ``COMPUTE_GRAD``): program (row tile, vocabulary split) walks the split's BLOCK_V
tiles: logits = h @ W[tile].T + b in fp32, an online log-sum-exp, the target logit and a running argmax of
``logits / T + gumbel``. With ``COMPUTE_GRAD`` it also accumulates, as FlashAttention does its output,
``sum_v exp(logit_v - running max) * W[v]`` over the non-target ids (rescaled when the max grows), so that at
the end ``g = softmax @ W - W[target]``, the gradient of a row's cross-entropy with respect to its hidden row,
is ``acc / sum + (p_target - 1) * W[target]``. The host forms that last term in fp32 from the final LSE (no
16-bit cancellation near p = 1) and combines the few splits in a fixed order. dh = row_scale * g later.

Backward (two GEMMs): program (vocabulary tile) walks all rows: recompute the logit tile once, form
``dlogits = (softmax - onehot) * row_scale`` in fp32 from the saved LSE, and accumulate ``dW[tile] +=
dlogits.T @ h`` and ``db[tile] += sum_rows dlogits`` in fp32 registers, cast once. Every output element is
written by one program after a fixed-order loop: no atomics, bitwise reproducible.

Every load is upcast to fp32 (bf16 arithmetic is wrong in the interpreter); operands are cast to ``DOT_DTYPE``
(the dtype of ``hidden``) just before ``tl.dot``, with IEEE fp32 products when it is fp32.
"""

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .constants import Stream
from .philox import draw_uniform
from .registry import TRITON_DTYPES, interpreted, pointer_type, register

GUMBEL_STREAM = tl.constexpr(int(Stream.GUMBEL))  # constants.Stream, as electra_fast.rng
# Generator-head widths the fused design is compiled and checked for (tiny's 64, small's 128, and 256). Base and
# large (E = 768, 1024) are wider than MAX_EMBEDDING: "auto" runs them chunked. Their 16-row tiles, which hold the
# whole E in registers, spill under Triton 3.6 (up to 376 bytes on sm_90a), and the roofline model never picked
# them; an explicit strategy="fused" still runs them (correct, untuned, uncompiled by the AOT check).
PRESET_EMBEDDINGS = (64, 128, 256)
MAX_EMBEDDING = 256


def embedding_parts(E: int) -> tuple[int, int]:
    """(E_HIGH, E_LOW): the largest power of two <= E (at least 16), and the rest rounded up to a power of two
    (at least 16; 0 when nothing is left)."""
    high = max(16, 1 << (E.bit_length() - 1))
    rest = E - high
    return high, (0 if rest <= 0 else max(16, 1 << (rest - 1).bit_length()))


@dataclass(frozen=True, kw_only=True)
class Tiles:
    """Launch configuration of one (precision, E): rows and vocabulary ids per tile of each pass."""

    forward_block_m: int
    forward_block_v: int
    backward_block_m: int
    backward_block_v: int
    num_warps: int
    num_stages: int


def tiles_for(dtype: torch.dtype, E: int) -> Tiles:
    """Tiles for inputs of ``dtype`` and width E. A program holds an fp32 accumulator of [rows, E] and a whole
    [rows, E] operand in registers, so the rows per tile shrink as E grows. The AOT compile (sm_80 and sm_90a)
    builds these without spills at the presets' E (tests/test_aot_compile.py); the larger ones tried (64 x 64
    forward tiles up to E = 256, 32 vocabulary ids at E = 768 and 1024) spilled."""
    width = sum(embedding_parts(E))
    if dtype == torch.float32 and not interpreted():
        # IEEE fp32 products run on CUDA cores; the operands are twice as wide.
        rows = 32 if width <= 128 else 16
        return Tiles(forward_block_m=rows, forward_block_v=16, backward_block_m=16, backward_block_v=16,
                     num_warps=8, num_stages=1)
    # The interpreter's cost is per program, not per element: there fp32 runs the 16-bit tiles. The forward's
    # logit tile stays small: each of its elements holds a Philox draw in registers.
    if width <= 128:
        return Tiles(forward_block_m=64, forward_block_v=32, backward_block_m=32, backward_block_v=64,
                     num_warps=8, num_stages=1)
    if width <= 256:
        return Tiles(forward_block_m=32, forward_block_v=32, backward_block_m=32, backward_block_v=32,
                     num_warps=8, num_stages=1)
    return Tiles(forward_block_m=16, forward_block_v=16, backward_block_m=16, backward_block_v=16,
                 num_warps=8, num_stages=1)


@triton.jit
def gumbel_scores(logits, temperature, seed, index):
    """``logits / T - log(-log(u))``: Gumbel-max scores, u drawn from stream GUMBEL at ``index`` = row * V + v of
    the whole batch (docs/design.md §4), so every tiling draws the same number for an element."""
    return logits / temperature - tl.log(-tl.log(draw_uniform(seed, GUMBEL_STREAM, index)))


@triton.jit
def _load_rows(ptr, offs_r, in_r, stride_r, stride_e, E, E_OFFSET: tl.constexpr, E_BLOCK: tl.constexpr,
               DOT_DTYPE: tl.constexpr):
    """rows[offs_r][:, E_OFFSET + [0, E_BLOCK)] as DOT_DTYPE (zeros past E or outside the rows), via fp32."""
    offs_e = E_OFFSET + tl.arange(0, E_BLOCK)
    values = tl.load(ptr + offs_r[:, None].to(tl.int64) * stride_r + offs_e[None, :] * stride_e,
                     mask=in_r[:, None] & (offs_e < E)[None, :], other=0.0)
    return values.to(tl.float32).to(DOT_DTYPE)


@triton.jit
def _logits(h_high, h_low, w_high, w_low, bias, in_v, INPUT_PRECISION: tl.constexpr, E_LOW: tl.constexpr):
    """fp32 logits [rows, BLOCK_V] = h @ w.T + bias over both parts of E; -inf past V."""
    logits = tl.dot(h_high, tl.trans(w_high), input_precision=INPUT_PRECISION)
    if E_LOW > 0:
        logits = tl.dot(h_low, tl.trans(w_low), logits, input_precision=INPUT_PRECISION)
    return tl.where(in_v[None, :], logits + bias[None, :], float("-inf"))


@triton.jit(do_not_specialize=["seed"])  # the seed changes every step: one compiled kernel for all of them
def generator_head_forward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr,
    partial_lse_ptr, partial_target_ptr, partial_score_ptr, partial_index_ptr, partial_grad_ptr,
    seed, temperature, disallow_correct, M, V, E, v_per_split,
    stride_hm, stride_he, stride_wv, stride_we,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    E_HIGH: tl.constexpr, E_LOW: tl.constexpr, COMPUTE_GRAD: tl.constexpr,
):
    """Program (row tile, vocabulary split) writes per row: LSE, target logit, best score and its id, and with
    COMPUTE_GRAD the split's softmax-weighted sum of the non-target weight rows, normalised by the split's sum."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = offs_m < M
    targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
    excluded = tl.where(disallow_correct != 0, targets, -1)  # the id disallow_correct removes (-1: none)
    row_base = offs_m.to(tl.int64) * V  # Gumbel element index = row * V + v (docs/design.md §4)

    # The program's hidden rows, whole E, loaded once (E_LOW == 0: one part).
    h_high = _load_rows(hidden_ptr, offs_m, in_m, stride_hm, stride_he, E, 0, E_HIGH, DOT_DTYPE)
    h_low = h_high
    if E_LOW > 0:
        h_low = _load_rows(hidden_ptr, offs_m, in_m, stride_hm, stride_he, E, E_HIGH, E_LOW, DOT_DTYPE)

    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    target_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    best_score = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    best_index = tl.zeros((BLOCK_M,), dtype=tl.int64)
    acc_high = tl.zeros((BLOCK_M, E_HIGH), dtype=tl.float32)
    acc_low = tl.zeros((BLOCK_M, E_LOW if E_LOW > 0 else 16), dtype=tl.float32)

    split_start = split * v_per_split
    split_end = tl.minimum(split_start + v_per_split, V)
    for v0 in range(split_start, split_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        in_v = offs_v < split_end
        w_high = _load_rows(weight_ptr, offs_v, in_v, stride_wv, stride_we, E, 0, E_HIGH, DOT_DTYPE)
        w_low = w_high
        if E_LOW > 0:
            w_low = _load_rows(weight_ptr, offs_v, in_v, stride_wv, stride_we, E, E_HIGH, E_LOW, DOT_DTYPE)
        bias = tl.load(bias_ptr + offs_v, mask=in_v, other=0.0).to(tl.float32)
        logits = _logits(h_high, h_low, w_high, w_low, bias, in_v, INPUT_PRECISION, E_LOW)

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
            # softmax-weighted W rows, the target left out (the host adds (p - 1) * W[target] in fp32).
            weights = tl.where(is_target, 0.0, unnormalised).to(DOT_DTYPE)
            acc_high = tl.dot(weights, w_high, acc_high * rescale[:, None], input_precision=INPUT_PRECISION)
            if E_LOW > 0:
                acc_low = tl.dot(weights, w_low, acc_low * rescale[:, None], input_precision=INPUT_PRECISION)

    out = split * M + offs_m
    tl.store(partial_lse_ptr + out, running_max + tl.log(running_sum), mask=in_m)
    tl.store(partial_target_ptr + out, target_logit, mask=in_m)
    tl.store(partial_score_ptr + out, best_score, mask=in_m)
    tl.store(partial_index_ptr + out, best_index, mask=in_m)
    if COMPUTE_GRAD:
        grad_rows = partial_grad_ptr + out[:, None].to(tl.int64) * E
        offs_high = tl.arange(0, E_HIGH)
        tl.store(grad_rows + offs_high[None, :], acc_high / running_sum[:, None],
                 mask=in_m[:, None] & (offs_high < E)[None, :])
        if E_LOW > 0:
            offs_low = E_HIGH + tl.arange(0, E_LOW)
            tl.store(grad_rows + offs_low[None, :], acc_low / running_sum[:, None],
                     mask=in_m[:, None] & (offs_low < E)[None, :])


@triton.jit
def generator_head_backward_kernel(
    hidden_ptr, weight_ptr, bias_ptr, targets_ptr, lse_ptr, row_scale_ptr, grad_weight_ptr, grad_bias_ptr,
    M, V, E,
    stride_hm, stride_he, stride_wv, stride_we, stride_gv,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr,
    E_HIGH: tl.constexpr, E_LOW: tl.constexpr,
):
    """dW[tile] = dlogits[:, tile].T @ h and db[tile] = sum_rows dlogits[:, tile] over all rows, the logit
    tile recomputed once per row tile; fp32 accumulation in row order, cast once."""
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    in_v = offs_v < V
    w_high = _load_rows(weight_ptr, offs_v, in_v, stride_wv, stride_we, E, 0, E_HIGH, DOT_DTYPE)
    w_low = w_high
    if E_LOW > 0:
        w_low = _load_rows(weight_ptr, offs_v, in_v, stride_wv, stride_we, E, E_HIGH, E_LOW, DOT_DTYPE)
    bias = tl.load(bias_ptr + offs_v, mask=in_v, other=0.0).to(tl.float32)

    acc_high = tl.zeros((BLOCK_V, E_HIGH), dtype=tl.float32)
    acc_low = tl.zeros((BLOCK_V, E_LOW if E_LOW > 0 else 16), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        in_m = offs_m < M
        targets = tl.load(targets_ptr + offs_m, mask=in_m, other=-1).to(tl.int64)
        lse = tl.load(lse_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)
        row_scale = tl.load(row_scale_ptr + offs_m, mask=in_m, other=0.0).to(tl.float32)  # 0: padding slot
        h_high = _load_rows(hidden_ptr, offs_m, in_m, stride_hm, stride_he, E, 0, E_HIGH, DOT_DTYPE)
        h_low = h_high
        if E_LOW > 0:
            h_low = _load_rows(hidden_ptr, offs_m, in_m, stride_hm, stride_he, E, E_HIGH, E_LOW, DOT_DTYPE)
        logits = _logits(h_high, h_low, w_high, w_low, bias, in_v, INPUT_PRECISION, E_LOW)

        # (softmax - onehot) * row_scale in fp32: the target's p - 1 is formed from fp32 logits (no 16-bit
        # cancellation near p = 1); exactly 0 for padding rows whatever their logits. Only the finished
        # gradient is rounded to DOT_DTYPE for the product.
        onehot = offs_v[None, :].to(tl.int64) == targets[:, None]
        grad = (tl.exp(logits - lse[:, None]) - tl.where(onehot, 1.0, 0.0)) * row_scale[:, None]
        grad = tl.where(row_scale[:, None] != 0.0, grad, 0.0)
        bias_acc += tl.sum(grad, axis=0)
        grad_t = tl.trans(grad).to(DOT_DTYPE)
        acc_high = tl.dot(grad_t, h_high, acc_high, input_precision=INPUT_PRECISION)
        if E_LOW > 0:
            acc_low = tl.dot(grad_t, h_low, acc_low, input_precision=INPUT_PRECISION)

    grad_rows = grad_weight_ptr + offs_v[:, None].to(tl.int64) * stride_gv
    offs_high = tl.arange(0, E_HIGH)
    tl.store(grad_rows + offs_high[None, :], acc_high.to(grad_weight_ptr.dtype.element_ty),
             mask=in_v[:, None] & (offs_high < E)[None, :])
    if E_LOW > 0:
        offs_low = E_HIGH + tl.arange(0, E_LOW)
        tl.store(grad_rows + offs_low[None, :], acc_low.to(grad_weight_ptr.dtype.element_ty),
                 mask=in_v[:, None] & (offs_low < E)[None, :])
    tl.store(grad_bias_ptr + offs_v, bias_acc, mask=in_v)


def _vocab_splits(row_programs: int, V: int, block_v: int, device: torch.device) -> tuple[int, int]:
    """(number of vocabulary splits, columns per split) of the forward: enough programs to fill the GPU when
    M is small (one split once M alone fills it). The interpreter runs programs one after another: there a few
    splits suffice."""
    vocab_tiles = triton.cdiv(V, block_v)
    wanted_programs = 4 if interpreted() else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    splits = min(vocab_tiles, max(1, triton.cdiv(wanted_programs, row_programs)))
    tiles_per_split = triton.cdiv(vocab_tiles, splits)
    return triton.cdiv(vocab_tiles, tiles_per_split), tiles_per_split * block_v


def _bias_or_zeros(bias, weight):
    """Kernels always add a bias; without one they add exact zeros (a [V] buffer, negligible next to W)."""
    return bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)


def forward(hidden, weight, bias, targets, *, temperature: float, disallow_correct: bool, seed: int,
            compute_grad: bool):
    """Per row: (lse [M] fp32, target logit [M] fp32, samples [M] int64, and with ``compute_grad`` the fp32
    [M, E] gradient of the row's cross-entropy with respect to its hidden row, else None).

    ``targets`` is a contiguous int64 [M], ``bias`` None or contiguous [V]; hidden and weight may be strided.
    """
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype, E)
    e_high, e_low = embedding_parts(E)
    row_programs = triton.cdiv(M, tiles.forward_block_m)
    splits, v_per_split = _vocab_splits(row_programs, V, tiles.forward_block_v, hidden.device)
    partial = torch.empty((3, splits, M), dtype=torch.float32, device=hidden.device)
    partial_index = torch.empty((splits, M), dtype=torch.int64, device=hidden.device)
    partial_grad = torch.empty((splits, M, E) if compute_grad else (1,), dtype=torch.float32, device=hidden.device)
    generator_head_forward_kernel[(row_programs, splits)](
        hidden, weight, _bias_or_zeros(bias, weight), targets, partial[0], partial[1], partial[2], partial_index,
        partial_grad, seed, float(temperature), int(disallow_correct), M, V, E, v_per_split,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        DOT_DTYPE=TRITON_DTYPES[hidden.dtype], INPUT_PRECISION="ieee", BLOCK_M=tiles.forward_block_m,
        BLOCK_V=tiles.forward_block_v, E_HIGH=e_high, E_LOW=e_low, COMPUTE_GRAD=compute_grad,
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
    ``row_scale * grad_rows`` from ``forward``."""
    M, E = hidden.shape
    V = weight.shape[0]
    tiles = tiles_for(hidden.dtype, E)
    e_high, e_low = embedding_parts(E)
    grad_weight = torch.empty((V, E), dtype=weight.dtype, device=weight.device)
    grad_bias = torch.empty((V,), dtype=torch.float32, device=weight.device)
    generator_head_backward_kernel[(triton.cdiv(V, tiles.backward_block_v),)](
        hidden, weight, _bias_or_zeros(bias, weight), targets, lse, row_scale, grad_weight, grad_bias, M, V, E,
        hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1), grad_weight.stride(0),
        DOT_DTYPE=TRITON_DTYPES[hidden.dtype], INPUT_PRECISION="ieee", BLOCK_M=tiles.backward_block_m,
        BLOCK_V=tiles.backward_block_v, E_HIGH=e_high, E_LOW=e_low,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )
    return grad_weight, grad_bias


def _register_launch_configs():
    """Every constexpr combination the launchers use at the presets' E, for the AOT compile check, in bf16
    (fp16 compiles the same code) and fp32."""
    for dtype in (torch.bfloat16, torch.float32):
        tensor = pointer_type(dtype)
        inputs = {"hidden_ptr": tensor, "weight_ptr": tensor, "bias_ptr": tensor, "targets_ptr": "*i64"}
        strides = {"stride_hm": "i32", "stride_he": "i32", "stride_wv": "i32", "stride_we": "i32"}
        sizes = {"M": "i32", "V": "i32", "E": "i32"}
        for E in PRESET_EMBEDDINGS:
            tiles = tiles_for(dtype, E)
            e_high, e_low = embedding_parts(E)
            options = dict(num_warps=tiles.num_warps, num_stages=tiles.num_stages)
            common = {"DOT_DTYPE": TRITON_DTYPES[dtype], "INPUT_PRECISION": "ieee", "E_HIGH": e_high,
                      "E_LOW": e_low}
            for compute_grad in (True, False):
                register(
                    generator_head_forward_kernel,
                    {**inputs, "partial_lse_ptr": "*fp32", "partial_target_ptr": "*fp32",
                     "partial_score_ptr": "*fp32", "partial_index_ptr": "*i64", "partial_grad_ptr": "*fp32",
                     "seed": "i64", "temperature": "fp32", "disallow_correct": "i32", **sizes, "v_per_split": "i32",
                     **strides},
                    {**common, "BLOCK_M": tiles.forward_block_m, "BLOCK_V": tiles.forward_block_v,
                     "COMPUTE_GRAD": compute_grad},
                    **options,
                )
            register(
                generator_head_backward_kernel,
                {**inputs, "lse_ptr": "*fp32", "row_scale_ptr": "*fp32", "grad_weight_ptr": tensor,
                 "grad_bias_ptr": "*fp32", **sizes, **strides, "stride_gv": "i32"},
                {**common, "BLOCK_M": tiles.backward_block_m, "BLOCK_V": tiles.backward_block_v},
                **options,
            )


_register_launch_configs()
