"""The fused generator head as torch.library custom ops with autograd (opaque to torch.compile).

``electra_fast::generator_head_forward`` returns (loss, samples, lse); only the inputs and the per-row LSE
are saved for backward. ``electra_fast::generator_head_backward`` recomputes the logits in the kernels and
returns (dh, dW, db). Arguments are assumed validated by ``electra_fast.ops``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..contracts import generator_head_slots
from ..kernels import generator_head as kernel


def _row_weights(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 slot weights and their normaliser sum(w) (1 when every weight is 0, so the loss is then 0)."""
    weights = weights.float()
    total = weights.sum()
    return weights, torch.where(total > 0, total, torch.ones_like(total))


@torch.library.custom_op("electra_fast::generator_head_forward", mutates_args=())
def generator_head_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    disallow_correct: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 weighted-mean loss, int64 samples [M], fp32 per-row LSE [M]); targets int64, weights [M]."""
    lse, target_logit, samples = kernel.forward(
        hidden, weight, bias, targets, temperature=temperature, disallow_correct=disallow_correct, seed=seed
    )
    row_weights, total = _row_weights(weights)
    # Padding rows contribute exactly 0, even if their logits were not finite.
    per_row = torch.where(row_weights != 0, (lse - target_logit) * row_weights, torch.zeros_like(lse))
    return per_row.sum() / total, samples, lse


@generator_head_forward.register_fake
def _(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed):
    rows = hidden.shape[0]
    return (
        hidden.new_empty((), dtype=torch.float32),
        hidden.new_empty((rows,), dtype=torch.int64),
        hidden.new_empty((rows,), dtype=torch.float32),
    )


@torch.library.custom_op("electra_fast::generator_head_backward", mutates_args=())
def generator_head_backward(
    grad_loss: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    weights: torch.Tensor,
    lse: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dW, db fp32) of the loss; dlogits of row m are scaled by grad_loss * w_m / sum(w)."""
    row_weights, total = _row_weights(weights)
    row_scale = (grad_loss.float() * row_weights / total).contiguous()
    return kernel.backward(hidden, weight, bias, targets, lse, row_scale)


@generator_head_backward.register_fake
def _(grad_loss, hidden, weight, bias, targets, weights, lse):
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format),
        weight.new_empty(weight.shape),
        weight.new_empty((weight.shape[0],), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, weights, *_ = inputs
    ctx.save_for_backward(hidden, weight, bias, targets, weights, output[2])


def _backward(ctx, grad_loss, grad_samples, grad_lse):
    hidden, weight, bias, targets, weights, lse = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias = generator_head_backward(
        grad_loss, hidden, weight, bias, targets, weights, lse
    )
    grad_bias = None if bias is None else grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


generator_head_forward.register_autograd(_backward, setup_context=_setup_context)


def generator_loss_and_sample(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    targets: torch.Tensor,
    weights: Optional[torch.Tensor] = None,
    *,
    temperature: float = 1.0,
    disallow_correct: bool = False,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel version of ``electra_fast.reference.generator_loss_and_sample``: (fp32 loss, int64 samples)."""
    targets, weights = generator_head_slots(hidden, targets, weights)
    loss, samples, _ = generator_head_forward(
        hidden, weight, None if bias is None else bias.contiguous(), targets, weights, float(temperature),
        bool(disallow_correct), int(seed),
    )
    return loss, samples
