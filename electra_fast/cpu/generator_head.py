"""The generator head on the CPU: one logits GEMM, one fused pass for the loss statistics and the Gumbel-max
sample, and the two gradient GEMMs: ``reference.generator_loss_and_sample``'s results at its minimum work.

Forward: ``logits = hidden @ weight.T + bias`` in fp32 ([M, V], kept for backward), then ``_lse_and_sample``
reads it in chunks of rows: log-sum-exp, and ``argmax(logits / T + g)`` with the Gumbel noise ``g`` of every
(row, vocab id) drawn inside that loop (stream GUMBEL at ``row * V + v``, as the reference draws it), so no
index, draw or noise tensor of size [M, V] is made; the draws' temporaries are chunk-sized.
Backward: ``dlogits = (softmax - onehot(target)) * w / sum(w)`` in fp32 in one pass (the second [M, V]
buffer), then ``dh = dlogits @ weight``, ``dW = dlogits.T @ hidden``, ``db = dlogits.sum(0)``, cast to the
inputs' dtypes.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..contracts import generator_head_slots
from ..rng import Stream
from .compiler import CHUNK_ELEMENTS, compiled
from .draws import key_tensor, philox_first_word, uniform


@compiled
def _lse_and_sample(logits, key, row_start, temperature, targets, disallow_correct: bool):
    """Per row of a chunk: log-sum-exp of the fp32 logits and the Gumbel-max sample, noise drawn in the loop."""
    rows, vocab = logits.shape
    vocab_ids = torch.arange(vocab, dtype=torch.int64)[None, :]
    index = (torch.arange(rows, dtype=torch.int64)[:, None] + row_start) * vocab + vocab_ids
    noise = -torch.log(-torch.log(uniform(philox_first_word(key, int(Stream.GUMBEL), index))))
    scores = logits / temperature + noise
    if disallow_correct:
        scores = torch.where(vocab_ids == targets[:, None], float("-inf"), scores)
    return torch.logsumexp(logits, dim=1), scores.argmax(dim=1)


@compiled
def _grad_logits(logits, lse, targets, row_scale):
    """``(softmax(logits) - onehot(target)) * row_scale`` in fp32, one pass."""
    vocab_ids = torch.arange(logits.shape[1], dtype=torch.int64)[None, :]
    onehot = (vocab_ids == targets[:, None]).to(torch.float32)
    return (torch.exp(logits - lse[:, None]) - onehot) * row_scale[:, None]


def _row_chunks(rows: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // vocab)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _row_weights(weights: torch.Tensor) -> torch.Tensor:
    """w / sum(w) in fp32, all zeros when the weights sum to 0 (the loss is then 0)."""
    weights = weights.float()
    total = weights.sum()
    return weights / torch.where(total > 0, total, torch.ones_like(total))


# Custom ops (as the Triton path's): opaque to an outer torch.compile, which runs them as they are.
@torch.library.custom_op("electra_fast::cpu_generator_head_forward", mutates_args=())
def generator_head_forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    weights: torch.Tensor, temperature: float, disallow_correct: bool, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, int64 samples [M], fp32 logits [M, V] kept for backward, fp32 LSE [M])."""
    hidden32, weight32 = hidden.float(), weight.float()
    logits = hidden32 @ weight32.t() if bias is None else torch.addmm(bias.float(), hidden32, weight32.t())
    key, temperature_tensor = key_tensor(seed), torch.tensor(temperature, dtype=torch.float32)
    lse = torch.empty(len(logits))
    samples = torch.empty(len(logits), dtype=torch.int64)
    for start, end in _row_chunks(*logits.shape):
        lse[start:end], samples[start:end] = _lse_and_sample(
            logits[start:end], key, torch.tensor(start), temperature_tensor, targets[start:end], disallow_correct
        )
    row_weights = _row_weights(weights)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    # Padding rows contribute exactly 0, whatever their logits.
    loss = torch.where(row_weights != 0, (lse - target_logit) * row_weights, torch.zeros_like(lse)).sum()
    return loss, samples, logits, lse


@generator_head_forward.register_fake
def _(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed):
    rows, vocab = hidden.shape[0], weight.shape[0]
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty((rows,), dtype=torch.int64),
            hidden.new_empty((rows, vocab), dtype=torch.float32), hidden.new_empty((rows,), dtype=torch.float32))


@torch.library.custom_op("electra_fast::cpu_generator_head_backward", mutates_args=())
def generator_head_backward(
    grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, lse: torch.Tensor,
    targets: torch.Tensor, weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh, dW, db fp32) of the loss."""
    grad_logits = _grad_logits(logits, lse, targets, grad_loss.float() * _row_weights(weights))
    return grad_logits @ weight.float(), grad_logits.t() @ hidden.float(), grad_logits.sum(0)


@generator_head_backward.register_fake
def _(grad_loss, hidden, weight, logits, lse, targets, weights):
    return (hidden.new_empty(hidden.shape, dtype=torch.float32), weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty((weight.shape[0],), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, weights, *_ = inputs
    _, samples, logits, lse = output
    ctx.save_for_backward(hidden, weight, logits, lse, targets, weights)
    ctx.bias_dtype = None if bias is None else bias.dtype
    # Only the loss has a gradient: without this, autograd would make (and copy) a [M, V] tensor of zeros for
    # the logits output in every backward.
    ctx.mark_non_differentiable(samples, logits, lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _grad_samples, _grad_logits_output, _grad_lse):
    hidden, weight, logits, lse, targets, weights = ctx.saved_tensors
    grad_hidden, grad_weight, grad_bias = generator_head_backward(grad_loss, hidden, weight, logits, lse, targets,
                                                                  weights)
    grad_bias = None if ctx.bias_dtype is None else grad_bias.to(ctx.bias_dtype)
    return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), grad_bias, None, None, None, None, None


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
    """CPU version of ``electra_fast.reference.generator_loss_and_sample``: (fp32 loss, int64 samples [M])."""
    targets, weights = generator_head_slots(hidden, targets, weights)
    loss, samples, _, _ = generator_head_forward(
        hidden, weight, bias, targets, weights, float(temperature), bool(disallow_correct), int(seed)
    )
    return loss, samples
