"""Replaced-token-detection loss: the discriminator head after its H x H matmul, fused (docs/design.md §1.4-1.5).

The H x H matmul ``projected = hidden @ dense_weight.T`` stays in cuBLAS. These kernels do everything after it:

* forward, one pass over ``projected`` [N, H]: + dense bias, activation, dot with the prediction weight
  + its bias (one logit per token), label = (corrupted != original) & valid, numerically stable BCE with
  logits, and per-program partial sums of the loss and of the metric counts. The partials are reduced by the
  caller in a fixed order (no atomics), so results are bitwise reproducible.
* backward, one more pass: recomputes the activation from ``projected`` (nothing [N, H] is kept from the
  forward) and writes d(projected) [N, H], plus per-program partial sums of d(prediction weight),
  d(dense bias) and d(prediction bias).

Every load is upcast to fp32 and all arithmetic and accumulation is fp32; only d(projected) is rounded to the
input dtype when stored (torch's matmul backward consumes it in that dtype).
"""

import torch
import triton
import triton.language as tl

from .constants import ACTIVATION_FUNCTIONS, RTD_COUNT_NAMES, activation_code
from .registry import current_geometry, register_launches

# Activation codes (constexpr): the index of the function in constants.ACTIVATION_FUNCTIONS, which also maps
# the transformers names onto them.
GELU_ERF = tl.constexpr(ACTIVATION_FUNCTIONS.index("gelu_erf"))  # "gelu": x * Phi(x), exact erf
GELU_TANH = tl.constexpr(ACTIVATION_FUNCTIONS.index("gelu_tanh"))  # "gelu_new" / "gelu_pytorch_tanh"
RELU = tl.constexpr(ACTIVATION_FUNCTIONS.index("relu"))

# Metric counts per program, in this order, in the int32 count partials.
COUNT_NAMES = RTD_COUNT_NAMES
NUM_COUNTS = tl.constexpr(len(RTD_COUNT_NAMES))

# (Constants go to the right of tensors: constexpr * tensor is not a tensor in the interpreter.)
SQRT_HALF = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
TANH_CUBIC = tl.constexpr(0.044715)

# Tiles: BLOCK_ROWS tokens x BLOCK_COLS features per step; both kernels loop over H in BLOCK_COLS chunks,
# so any H (64..2048, powers of two or not) runs with the same configuration.
# Chosen from the AOT register counts (no GPU was available to time them): ~8 tile elements per thread keeps
# both kernels near 76 / 117 registers on sm_90a, i.e. 2-3 resident blocks of 8 warps per SM.
FORWARD_BLOCK_ROWS = 16
FORWARD_BLOCK_COLS = 128
FORWARD_WARPS = 8
BACKWARD_BLOCK_ROWS = 16
BACKWARD_BLOCK_COLS = 128
BACKWARD_WARPS = 8
NUM_STAGES = 1  # no tl.dot to pipeline
# The backward splits the rows into at most this many groups; each group writes one row of weight-gradient
# partials, so the partials stay small ([groups, H]) and their reduction order depends only on N.
MAX_BACKWARD_GROUPS = 512


@triton.jit
def _check_tiles(BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    tl.static_assert((BLOCK_ROWS & (BLOCK_ROWS - 1)) == 0, "BLOCK_ROWS must be a power of two")
    # Any width runs: both kernels step over H in BLOCK_COLS chunks with a column mask.
    tl.static_assert((BLOCK_COLS & (BLOCK_COLS - 1)) == 0, "BLOCK_COLS must be a power of two")


@triton.jit
def _tanh(x):
    # tanh via exp, saturating correctly: exp(2x) -> inf gives 1, exp(2x) -> 0 gives -1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _activation(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == GELU_ERF:
        return x * 0.5 * (1.0 + tl.math.erf(x * SQRT_HALF))
    elif ACTIVATION == GELU_TANH:
        return 0.5 * x * (1.0 + _tanh((x + x * x * x * TANH_CUBIC) * SQRT_2_OVER_PI))
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def _activation_and_derivative(x, ACTIVATION: tl.constexpr):
    """act(x) and act'(x), recomputed in the backward from the pre-activation."""
    if ACTIVATION == GELU_ERF:
        cdf = 0.5 * (1.0 + tl.math.erf(x * SQRT_HALF))
        pdf = tl.exp(-0.5 * x * x) * INV_SQRT_2PI
        return x * cdf, cdf + x * pdf
    elif ACTIVATION == GELU_TANH:
        t = _tanh((x + x * x * x * TANH_CUBIC) * SQRT_2_OVER_PI)
        inner_derivative = (1.0 + x * x * (3.0 * TANH_CUBIC)) * SQRT_2_OVER_PI
        return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * inner_derivative
    else:
        return tl.maximum(x, 0.0), tl.where(x > 0.0, 1.0, 0.0)


@triton.jit
def rtd_loss_forward_kernel(
    projected_ptr, dense_bias_ptr, prediction_weight_ptr, prediction_bias_ptr,
    corrupted_ptr, original_ptr, valid_ptr,
    logits_ptr, labels_ptr, loss_partials_ptr, count_partials_ptr,
    n_rows, width,
    ACTIVATION: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """One program = BLOCK_ROWS tokens: logits, labels, and this block's loss sum and metric counts."""
    _check_tiles(BLOCK_ROWS, BLOCK_COLS)
    program = tl.program_id(0)
    rows = program * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_in = rows < n_rows
    row_offsets = rows.to(tl.int64) * width  # int64: N * H may exceed 2**31

    # Per-feature products are accumulated as a tile and reduced once at the end (fp32).
    products = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    for col_start in range(0, width, BLOCK_COLS):
        cols = col_start + tl.arange(0, BLOCK_COLS)
        col_in = cols < width
        x = tl.load(projected_ptr + row_offsets[:, None] + cols[None, :], mask=row_in[:, None] & col_in[None, :],
                    other=0.0)
        bias = tl.load(dense_bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)
        weight = tl.load(prediction_weight_ptr + cols, mask=col_in, other=0.0).to(tl.float32)
        # Out-of-range entries are 0 and act(0) = 0 with weight 0: they add nothing.
        products += _activation(x.to(tl.float32) + bias[None, :], ACTIVATION) * weight[None, :]
    logits = tl.sum(products, axis=1) + tl.load(prediction_bias_ptr).to(tl.float32)

    valid = (tl.load(valid_ptr + rows, mask=row_in, other=0) != 0) & row_in
    corrupted = tl.load(corrupted_ptr + rows, mask=row_in, other=0)
    original = tl.load(original_ptr + rows, mask=row_in, other=0)
    labels = (corrupted != original) & valid
    target = tl.where(labels, 1.0, 0.0)

    # BCE with logits, stable for any z: max(z, 0) - z * y + log1p(exp(-|z|)); log1p(t) ~ t - t^2 / 2 for
    # small t keeps the tiny losses of confident tokens accurate where 1 + t rounds to 1.
    decay = tl.exp(-tl.abs(logits))
    softplus_tail = tl.where(decay < 1e-4, decay - 0.5 * decay * decay, tl.log(1.0 + decay))
    per_token = tl.maximum(logits, 0.0) - logits * target + softplus_tail
    # where, not a multiply: a non-finite value in a padding row must not reach the sum.
    per_token = tl.where(valid, per_token, 0.0)

    tl.store(logits_ptr + rows, logits, mask=row_in)
    tl.store(labels_ptr + rows, labels.to(tl.uint8), mask=row_in)
    tl.store(loss_partials_ptr + program, tl.sum(per_token, axis=0))

    predicted = (logits > 0.0) & valid
    correct = (predicted == labels) & valid
    counts_ptr = count_partials_ptr + program * NUM_COUNTS
    tl.store(counts_ptr + 0, tl.sum(correct.to(tl.int32), axis=0))
    tl.store(counts_ptr + 1, tl.sum(predicted.to(tl.int32), axis=0))
    tl.store(counts_ptr + 2, tl.sum((predicted & labels).to(tl.int32), axis=0))
    tl.store(counts_ptr + 3, tl.sum(labels.to(tl.int32), axis=0))
    tl.store(counts_ptr + 4, tl.sum(valid.to(tl.int32), axis=0))


@triton.jit
def rtd_loss_backward_kernel(
    projected_ptr, dense_bias_ptr, prediction_weight_ptr,
    logits_ptr, labels_ptr, valid_ptr, grad_logits_ptr, loss_scale_ptr,
    grad_projected_ptr, grad_weight_partials_ptr, grad_dense_bias_partials_ptr, grad_prediction_bias_partials_ptr,
    n_rows, width, rows_per_group,
    ACTIVATION: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):
    """Program (group, chunk): the rows of ``group``, features of ``chunk``.

    d(logit) = loss_scale * (sigmoid(z) - y) on valid tokens (loss_scale = d(loss) / n_valid) + d(logits);
    d(projected) = d(logit) * w * act'(x + b); d(w) = sum_rows d(logit) * act(x + b);
    d(dense bias) = sum_rows d(projected); d(prediction bias) = sum_rows d(logit).
    """
    _check_tiles(BLOCK_ROWS, BLOCK_COLS)
    group = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_in = cols < width
    bias = tl.load(dense_bias_ptr + cols, mask=col_in, other=0.0).to(tl.float32)
    weight = tl.load(prediction_weight_ptr + cols, mask=col_in, other=0.0).to(tl.float32)
    loss_scale = tl.load(loss_scale_ptr).to(tl.float32)

    group_start = group * rows_per_group
    group_end = tl.minimum(group_start + rows_per_group, n_rows)
    grad_weight_tile = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    grad_bias_tile = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=tl.float32)
    grad_logit_sum = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for row_start in range(group_start, group_end, BLOCK_ROWS):
        rows = row_start + tl.arange(0, BLOCK_ROWS)
        row_in = rows < group_end
        logits = tl.load(logits_ptr + rows, mask=row_in, other=0.0).to(tl.float32)
        target = tl.load(labels_ptr + rows, mask=row_in, other=0).to(tl.float32)
        valid = (tl.load(valid_ptr + rows, mask=row_in, other=0) != 0) & row_in
        grad_logit = tl.where(valid, loss_scale * (tl.sigmoid(logits) - target), 0.0)
        grad_logit += tl.load(grad_logits_ptr + rows, mask=row_in, other=0.0).to(tl.float32)

        offsets = rows.to(tl.int64)[:, None] * width + cols[None, :]
        tile_in = row_in[:, None] & col_in[None, :]
        x = tl.load(projected_ptr + offsets, mask=tile_in, other=0.0).to(tl.float32) + bias[None, :]
        activated, slope = _activation_and_derivative(x, ACTIVATION)
        grad_projected = grad_logit[:, None] * weight[None, :] * slope
        tl.store(grad_projected_ptr + offsets, grad_projected.to(grad_projected_ptr.dtype.element_ty), mask=tile_in)
        # Out-of-range rows have grad_logit 0 and contribute nothing to the fp32 sums.
        grad_weight_tile += grad_logit[:, None] * activated
        grad_bias_tile += grad_projected
        grad_logit_sum += grad_logit

    partial_offsets = group.to(tl.int64) * width + cols
    tl.store(grad_weight_partials_ptr + partial_offsets, tl.sum(grad_weight_tile, axis=0), mask=col_in)
    tl.store(grad_dense_bias_partials_ptr + partial_offsets, tl.sum(grad_bias_tile, axis=0), mask=col_in)
    if chunk == 0:
        tl.store(grad_prediction_bias_partials_ptr + group, tl.sum(grad_logit_sum, axis=0))


def forward(projected, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids, valid,
            activation: str):
    """Launch the forward on flat, contiguous inputs.

    ``projected`` [N, H] fp32/fp16/bf16 (hidden @ dense_weight.T, no bias); ``dense_bias`` and
    ``prediction_weight`` [H] fp32; ``prediction_bias`` [1] fp32; ids [N] int64; ``valid`` [N] uint8.
    Returns logits [N] fp32, labels [N] uint8, loss partials [programs] fp32, count partials
    [programs, 5] int32 (columns as COUNT_NAMES).
    """
    n_rows, width = projected.shape
    programs = triton.cdiv(n_rows, FORWARD_BLOCK_ROWS)
    device = projected.device
    logits = torch.empty(n_rows, dtype=torch.float32, device=device)
    labels = torch.empty(n_rows, dtype=torch.uint8, device=device)
    loss_partials = torch.empty(programs, dtype=torch.float32, device=device)
    count_partials = torch.empty(programs, len(COUNT_NAMES), dtype=torch.int32, device=device)
    rtd_loss_forward_kernel[(programs,)](
        projected, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids, valid,
        logits, labels, loss_partials, count_partials, n_rows, width,
        ACTIVATION=activation_code(activation), BLOCK_ROWS=FORWARD_BLOCK_ROWS, BLOCK_COLS=FORWARD_BLOCK_COLS,
        num_warps=FORWARD_WARPS, num_stages=NUM_STAGES,
    )
    return logits, labels, loss_partials, count_partials


def backward(projected, dense_bias, prediction_weight, logits, labels, valid, grad_logits, loss_scale,
             activation: str):
    """Launch the backward; returns d(projected) [N, H] (projected's dtype) and the fp32 partial sums
    d(prediction weight) [groups, H], d(dense bias) [groups, H], d(prediction bias) [groups].

    ``grad_logits`` [N] fp32 is the incoming gradient of the logits output (zeros when unused);
    ``loss_scale`` is a 1-element fp32 tensor holding d(loss) / max(n_valid, 1).
    """
    n_rows, width = projected.shape
    row_blocks = triton.cdiv(n_rows, BACKWARD_BLOCK_ROWS)
    geometry = current_geometry()  # a scaled-down counted launch keeps the real launch's rows per group
    max_groups = geometry.rtd_backward_groups if geometry and geometry.rtd_backward_groups else MAX_BACKWARD_GROUPS
    groups = min(row_blocks, max_groups)
    rows_per_group = triton.cdiv(row_blocks, groups) * BACKWARD_BLOCK_ROWS
    groups = triton.cdiv(n_rows, rows_per_group)
    chunks = triton.cdiv(width, BACKWARD_BLOCK_COLS)
    device = projected.device
    grad_projected = torch.empty_like(projected)
    grad_weight_partials = torch.empty(groups, width, dtype=torch.float32, device=device)
    grad_dense_bias_partials = torch.empty(groups, width, dtype=torch.float32, device=device)
    grad_prediction_bias_partials = torch.empty(groups, dtype=torch.float32, device=device)
    rtd_loss_backward_kernel[(groups, chunks)](
        projected, dense_bias, prediction_weight, logits, labels, valid, grad_logits, loss_scale,
        grad_projected, grad_weight_partials, grad_dense_bias_partials, grad_prediction_bias_partials,
        n_rows, width, rows_per_group,
        ACTIVATION=activation_code(activation), BLOCK_ROWS=BACKWARD_BLOCK_ROWS, BLOCK_COLS=BACKWARD_BLOCK_COLS,
        num_warps=BACKWARD_WARPS, num_stages=NUM_STAGES,
    )
    return grad_projected, grad_weight_partials, grad_dense_bias_partials, grad_prediction_bias_partials


def _register_launch_configs():
    """Both kernels for every input dtype and activation, launched as the discriminator head calls them at
    ELECTRA-Base's 16 x 512 tokens (hidden 768), on contiguous tensors (docs/design.md §6)."""

    def run(arch):
        del arch  # one configuration serves every architecture
        n_rows, width = 16 * 512, 768
        fp32 = dict(dtype=torch.float32)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for activation in ("gelu", "gelu_new", "relu"):  # one name per code of ACTIVATION_FUNCTIONS
                projected = torch.empty(n_rows, width, dtype=dtype)
                dense_bias, prediction_weight = torch.empty(width, **fp32), torch.empty(width, **fp32)
                ids = [torch.empty(n_rows, dtype=torch.int64) for _ in range(2)]
                valid = torch.empty(n_rows, dtype=torch.uint8)
                logits, labels, _, _ = forward(projected, dense_bias, prediction_weight, torch.empty(1, **fp32), *ids,
                                               valid, activation)
                backward(projected, dense_bias, prediction_weight, logits, labels, valid,
                         torch.empty(n_rows, **fp32), torch.empty(1, **fp32), activation)

    register_launches(run)


_register_launch_configs()
