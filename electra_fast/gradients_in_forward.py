"""Autograd for ops that form their inputs' gradients in the forward (the chunked generator heads).

Such an op's forward returns ``(loss, samples, dh, dW, db)``: the fp32 gradients of the loss with respect to
``hidden``, ``weight`` and ``bias`` (its first three inputs) for an upstream gradient of 1, or empty tensors when
it ran without gradients. The backward scales them by the real upstream gradient and casts each to its input's
dtype, once (docs/design.md §5.1).
"""

from __future__ import annotations

import torch


def gradients_needed(*tensors) -> bool:
    """Whether a backward can follow the call: grad mode is on and some input (None allowed) requires grad. The
    generator heads form gradients in their forward only then (not in evaluation)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_formed(gradient_rows: int, rows: int) -> None:
    """A backward of a forward that formed no gradients (its [0, ...] placeholders) is an error, not zeros."""
    if gradient_rows != rows:
        raise RuntimeError("generator head: the forward ran without gradients (under no_grad, or with inputs that "
                           "did not require them)")


def setup_context(ctx, inputs, output):
    hidden, weight, bias = inputs[:3]
    _, samples, grad_hidden, grad_weight, grad_bias = output
    ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
    ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
    ctx.rows, ctx.inputs = hidden.shape[0], len(inputs)
    ctx.mark_non_differentiable(samples)


def backward(ctx, grad_loss, *_unused):
    grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
    check_formed(grad_hidden.shape[0], ctx.rows)
    hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
    scale = grad_loss.float()
    return ((grad_hidden * scale).to(hidden_dtype), (grad_weight * scale).to(weight_dtype),
            None if bias_dtype is None else (grad_bias * scale).to(bias_dtype), *([None] * (ctx.inputs - 3)))
