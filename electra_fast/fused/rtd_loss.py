"""The replaced-token-detection loss on the Triton kernels of ``kernels/rtd_loss.py``, differentiable.

``projected = hidden @ dense_weight.T`` runs in torch (cuBLAS, and its backward too); the custom op
``electra_fast::rtd_loss_head`` does everything after it in one pass, and its backward, the custom op
``electra_fast::rtd_loss_head_backward``, recomputes the activation and returns the gradients of
``projected``, the dense bias and the prediction layer. Both ops are opaque to torch.compile
(``register_fake`` gives their output shapes), so ``torch.compile(fullgraph=True)`` works, also on the CPU
with the Triton interpreter.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..contracts import RTDOptions
from ..kernels import rtd_loss as kernels
from ..outputs import RTDOutput

VALID_COUNT = kernels.COUNT_NAMES.index("valid")


@torch.library.custom_op("electra_fast::rtd_loss_head", mutates_args=())
def rtd_loss_head(
    projected: torch.Tensor,
    dense_bias: torch.Tensor,
    prediction_weight: torch.Tensor,
    prediction_bias: torch.Tensor,
    corrupted_ids: torch.Tensor,
    original_ids: torch.Tensor,
    valid: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss (fp32, 0 when no token is valid), logits [N] fp32, labels [N] bool, counts [5] int64 (COUNT_NAMES).

    ``projected`` [N, H]; ``dense_bias``, ``prediction_weight`` [H] fp32; ``prediction_bias`` [1] fp32;
    ids [N] int64; ``valid`` [N] uint8.
    """
    logits, labels, loss_partials, count_partials = kernels.forward(
        projected, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids, valid, activation
    )
    # Partials are summed in a fixed order: the same inputs give the same bits on every run.
    counts = count_partials.sum(0, dtype=torch.int64)
    loss = loss_partials.sum() / counts[VALID_COUNT].clamp(min=1).to(torch.float32)
    return loss, logits, labels.view(torch.bool), counts


@rtd_loss_head.register_fake
def _(projected, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids, valid, activation):
    n_rows = projected.shape[0]
    return (
        projected.new_empty((), dtype=torch.float32),
        projected.new_empty((n_rows,), dtype=torch.float32),
        projected.new_empty((n_rows,), dtype=torch.bool),
        projected.new_empty((len(kernels.COUNT_NAMES),), dtype=torch.int64),
    )


@torch.library.custom_op("electra_fast::rtd_loss_head_backward", mutates_args=())
def rtd_loss_head_backward(
    projected: torch.Tensor,
    dense_bias: torch.Tensor,
    prediction_weight: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    valid: torch.Tensor,
    grad_logits: torch.Tensor,
    loss_scale: torch.Tensor,
    activation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of projected [N, H] (its dtype), dense bias [H], prediction weight [H], prediction bias [1] (fp32).

    ``grad_logits`` [N] fp32 is the gradient arriving at the logits output; ``loss_scale`` [1] fp32 holds
    d(loss) / max(n_valid, 1).
    """
    grad_projected, weight_partials, dense_bias_partials, prediction_bias_partials = kernels.backward(
        projected, dense_bias, prediction_weight, logits, labels.view(torch.uint8), valid, grad_logits, loss_scale,
        activation,
    )
    return (
        grad_projected,
        dense_bias_partials.sum(0),
        weight_partials.sum(0),
        prediction_bias_partials.sum().reshape(1),
    )


@rtd_loss_head_backward.register_fake
def _(projected, dense_bias, prediction_weight, logits, labels, valid, grad_logits, loss_scale, activation):
    width = projected.shape[1]
    return (
        torch.empty_like(projected),
        projected.new_empty((width,), dtype=torch.float32),
        projected.new_empty((width,), dtype=torch.float32),
        projected.new_empty((1,), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    projected, dense_bias, prediction_weight, _, _, _, valid, activation = inputs
    _, logits, labels, counts = output
    ctx.save_for_backward(projected, dense_bias, prediction_weight, logits, labels, valid, counts)
    ctx.activation = activation


def _backward(ctx, grad_loss, grad_logits, grad_labels, grad_counts):
    projected, dense_bias, prediction_weight, logits, labels, valid, counts = ctx.saved_tensors
    if grad_loss is None:
        grad_loss = logits.new_zeros(())
    if grad_logits is None:
        grad_logits = torch.zeros_like(logits)
    loss_scale = (grad_loss.to(torch.float32) / counts[VALID_COUNT].clamp(min=1).to(torch.float32)).reshape(1)
    grad_projected, grad_dense_bias, grad_weight, grad_prediction_bias = rtd_loss_head_backward(
        projected, dense_bias, prediction_weight, logits, labels, valid,
        grad_logits.to(torch.float32).contiguous(), loss_scale, ctx.activation,
    )
    return grad_projected, grad_dense_bias, grad_weight, grad_prediction_bias, None, None, None, None


rtd_loss_head.register_autograd(_backward, setup_context=_setup_context)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator in fp32, 0 when the denominator is 0."""
    return numerator.to(torch.float32) / denominator.clamp(min=1).to(torch.float32)


def supports(*call) -> Optional[str]:
    """None: the kernels take every call ``ops.rtd_loss`` accepts (any width, any leading shape)."""
    return None


def rtd_loss(hidden, dense_weight, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids,
             attention_mask=None, options: RTDOptions = RTDOptions()) -> RTDOutput:
    """``electra_fast.reference.rtd_loss`` on the fused kernels (arguments validated by ``electra_fast.ops``)."""
    width = hidden.shape[-1]
    leading = hidden.shape[:-1]
    # The H x H matmul stays in cuBLAS; its bias is added inside the kernel. The small parameters go to the
    # kernel in fp32 (a differentiable cast: their gradients come back in their own dtype).
    projected = F.linear(hidden, dense_weight).reshape(-1, width)
    fp32 = dict(dtype=torch.float32, device=hidden.device)
    dense_bias = dense_bias.to(torch.float32) if dense_bias is not None else torch.zeros(width, **fp32)
    if prediction_bias is None:
        prediction_bias = torch.zeros(1, **fp32)
    prediction_bias = prediction_bias.reshape(1).to(torch.float32)
    if attention_mask is None:
        valid = torch.ones(projected.shape[0], dtype=torch.uint8, device=hidden.device)
    else:
        valid = (attention_mask.reshape(-1) != 0).to(torch.uint8)
    loss, logits, labels, counts = rtd_loss_head(
        projected.contiguous(),
        dense_bias.contiguous(),
        prediction_weight.reshape(-1).to(torch.float32).contiguous(),
        prediction_bias,
        corrupted_ids.reshape(-1).to(torch.int64).contiguous(),
        original_ids.reshape(-1).to(torch.int64).contiguous(),
        valid,
        options.activation,
    )
    correct, predicted_replaced, true_positive, replaced, n_valid = counts.unbind()
    return RTDOutput(
        loss,
        logits.view(leading),
        labels.view(leading),
        accuracy=_ratio(correct, n_valid),
        precision=_ratio(true_positive, predicted_replaced),
        recall=_ratio(true_positive, replaced),
        replaced_fraction=_ratio(replaced, n_valid),
    )
