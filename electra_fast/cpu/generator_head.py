"""The generator head on the CPU: the chunked design (docs/design.md §5.5) in torch ops, with compiled loops
between the GEMMs: ``reference.generator_loss_and_sample``'s results at its minimum work.

Rows go in chunks whose fp32 logits hold about ``LOGITS_CHUNK_ELEMENTS`` values (16 MiB; 137 rows at
V = 30522), so no [M, V] tensor is made: a chunk fits the allocator's reusable heap instead of fresh pages
every step, and is still in cache for the passes after its GEMM. Per chunk:

1. ``logits = hidden @ weight.T + bias`` in fp32;
2. ``_lse_and_sample`` over sub-chunks of rows: log-sum-exp and ``argmax(logits / T + g)``, the Gumbel noise ``g``
   of every (row, vocab id) drawn inside the loop (stream GUMBEL at ``row * V + v``, as the reference draws it),
   so the draws' temporaries stay sub-chunk-sized;
3. with gradients on, ``dlogits = (softmax - onehot(target)) * w / sum(w)`` in one compiled pass, then
   ``dh = dlogits @ weight`` for the chunk's rows, ``dW += dlogits.T @ hidden`` and ``db += dlogits.sum(0)`` into
   fp32 accumulators.

The forward thus returns the loss's gradients for a unit upstream gradient and the backward only scales them
(``electra_fast.gradients_in_forward``), as the Triton path's chunked design does.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import gradients_in_forward
from ..contracts import GeneratorHeadOptions, generator_head_slots, slot_row_weights, weighted_slot_loss
from ..rng import Stream
from .compiler import CHUNK_ELEMENTS, compiled
from .draws import key_tensor, philox_first_word, uniform

LOGITS_CHUNK_ELEMENTS = 1 << 22  # fp32 logits per GEMM chunk: 16 MiB


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


def _row_chunks(rows: int, vocab: int, elements: int):
    step = max(1, elements // vocab)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


# A custom op (as the Triton path's): opaque to an outer torch.compile, which runs it as it is.
@torch.library.custom_op("electra_fast::cpu_generator_head", mutates_args=())
def generator_head(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    weights: torch.Tensor, temperature: float, disallow_correct: bool, seed: int, compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, int64 samples [M], and with gradients the loss's fp32 dh [M, E], dW [V, E], db [V] for a unit
    upstream gradient; without them, empty tensors)."""
    # An outer autocast would run the fp32 GEMMs below in 16 bits: the custom op does not stop it.
    with torch.autocast("cpu", enabled=False):
        return _generator_head(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed,
                               compute_grad)


def _generator_head(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed, compute_grad):
    (rows, width), vocab = hidden.shape, weight.shape[0]
    hidden32, weight32 = hidden.float(), weight.float()
    bias32 = None if bias is None else bias.float()
    key, temperature_tensor = key_tensor(seed), torch.tensor(temperature, dtype=torch.float32)
    row_weights = slot_row_weights(weights)
    lse, target_logit = torch.empty(rows), torch.empty(rows)
    samples = torch.empty(rows, dtype=torch.int64)
    grad_hidden = torch.empty((rows, width) if compute_grad else (0, width))
    grad_weight = torch.zeros((vocab, width) if compute_grad else (0, width))
    grad_bias = torch.zeros(vocab if compute_grad else 0)
    for start, end in _row_chunks(rows, vocab, LOGITS_CHUNK_ELEMENTS):
        chunk_hidden = hidden32[start:end]
        logits = chunk_hidden @ weight32.t() if bias32 is None else torch.addmm(bias32, chunk_hidden, weight32.t())
        for first, last in _row_chunks(end - start, vocab, CHUNK_ELEMENTS):
            lse[start + first:start + last], samples[start + first:start + last] = _lse_and_sample(
                logits[first:last], key, torch.tensor(start + first), temperature_tensor,
                targets[start + first:start + last], disallow_correct,
            )
        target_logit[start:end] = logits.gather(1, targets[start:end, None]).squeeze(1)
        if compute_grad:
            grad_logits = _grad_logits(logits, lse[start:end], targets[start:end], row_weights[start:end])
            grad_hidden[start:end] = grad_logits @ weight32
            grad_weight.addmm_(grad_logits.t(), chunk_hidden)
            grad_bias += grad_logits.sum(0)
    return weighted_slot_loss(lse, target_logit, row_weights), samples, grad_hidden, grad_weight, grad_bias


@generator_head.register_fake
def _(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed, compute_grad):
    (rows, width), vocab = hidden.shape, weight.shape[0]
    grad_rows, grad_vocab = (rows, vocab) if compute_grad else (0, 0)
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty((rows,), dtype=torch.int64),
            hidden.new_empty((grad_rows, width), dtype=torch.float32),
            hidden.new_empty((grad_vocab, width), dtype=torch.float32),
            hidden.new_empty((grad_vocab,), dtype=torch.float32))


generator_head.register_autograd(gradients_in_forward.backward, setup_context=gradients_in_forward.setup_context)


def supports(*call) -> Optional[str]:
    """None: the CPU path takes every call ``ops.generator_loss_and_sample`` accepts."""
    return None


def generator_loss_and_sample(hidden, weight, bias, targets, weights=None,
                              options: GeneratorHeadOptions = GeneratorHeadOptions()) -> tuple:
    """CPU version of ``electra_fast.reference.generator_loss_and_sample``: (fp32 loss, int64 samples [M]);
    ``options.strategy`` and ``chunk_rows`` are the Triton path's and are ignored here."""
    targets, weights = generator_head_slots(hidden, targets, weights)
    loss, samples, *_ = generator_head(
        hidden, weight, bias, targets, weights, float(options.temperature), bool(options.disallow_correct),
        int(options.seed),
        gradients_in_forward.gradients_needed(hidden, weight, bias),
    )
    return loss, samples
