"""The generator head on the CPU: one logits GEMM, one fused pass for the loss statistics and the Gumbel-max
sample, and the two gradient GEMMs: ``reference.generator_loss_and_sample``'s results at its minimum work.

Forward: ``logits = hidden @ weight.T + bias`` in fp32 ([M, V], the only [M, V] buffer, kept for backward),
then ``_lse_and_sample`` reads it once per row: log-sum-exp, and ``argmax(logits / T + g)`` with the Gumbel
noise ``g`` of every (row, vocab id) drawn inside that loop (stream GUMBEL at ``row * V + v``, as the
reference draws it), so no index, draw or noise tensor of size [M, V] is ever made.
Backward: ``dlogits = (softmax - onehot(target)) * w / sum(w)`` in fp32, then ``dh = dlogits @ weight``,
``dW = dlogits.T @ hidden``, ``db = dlogits.sum(0)``, cast to the inputs' dtypes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..rng import Stream
from .compiler import compiled
from .draws import key_tensor, philox_first_word, uniform


@compiled
def _lse_and_sample(logits, key, temperature, targets, disallow_correct: bool):
    rows, vocab = logits.shape
    index = torch.arange(rows, dtype=torch.int64)[:, None] * vocab + torch.arange(vocab, dtype=torch.int64)[None, :]
    noise = -torch.log(-torch.log(uniform(philox_first_word(key, int(Stream.GUMBEL), index))))
    scores = logits / temperature + noise
    if disallow_correct:
        scores = torch.where(torch.arange(vocab)[None, :] == targets[:, None], float("-inf"), scores)
    return torch.logsumexp(logits, dim=1), scores.argmax(dim=1)


def _row_weights(weights: torch.Tensor) -> torch.Tensor:
    """w / sum(w) in fp32, all zeros when the weights sum to 0 (the loss is then 0)."""
    weights = weights.float()
    total = weights.sum()
    return weights / torch.where(total > 0, total, torch.ones_like(total))


class _GeneratorHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, temperature, disallow_correct, seed):
        hidden32, weight32 = hidden.float(), weight.float()
        logits = hidden32 @ weight32.t() if bias is None else torch.addmm(bias.float(), hidden32, weight32.t())
        lse, samples = _lse_and_sample(
            logits, key_tensor(seed), torch.tensor(temperature, dtype=torch.float32), targets, disallow_correct
        )
        row_weights = _row_weights(weights)
        target_logit = logits.gather(1, targets[:, None]).squeeze(1)
        # Padding rows contribute exactly 0, whatever their logits.
        loss = torch.where(row_weights != 0, (lse - target_logit) * row_weights, torch.zeros_like(lse)).sum()
        ctx.save_for_backward(hidden32, weight32, logits, lse, targets, row_weights)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(samples)
        return loss, samples

    @staticmethod
    def backward(ctx, grad_loss, _grad_samples):
        hidden32, weight32, logits, lse, targets, row_weights = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad_logits = torch.exp(logits - lse[:, None])
        grad_logits.scatter_add_(1, targets[:, None], torch.full_like(lse[:, None], -1.0))
        grad_logits.mul_((grad_loss * row_weights)[:, None])
        grad_hidden = (grad_logits @ weight32).to(hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_logits.t() @ hidden32).to(weight_dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0).to(bias_dtype) if bias_dtype is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


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
    """CPU version of ``electra_fast.reference.generator_loss_and_sample``: (fp32 loss, int64 samples [M])."""
    if weights is None:
        weights = torch.ones(hidden.shape[0], dtype=torch.float32)
    return _GeneratorHead.apply(
        hidden, weight, bias, targets.long(), weights, float(temperature), bool(disallow_correct), int(seed)
    )
