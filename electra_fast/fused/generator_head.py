"""The generator head's two Triton-path designs as torch.library custom ops with autograd (opaque to
torch.compile). Arguments are assumed validated by ``electra_fast.ops``.

* ``electra_fast::generator_head_forward`` (strategy "fused", kernels/generator_head.py) returns (loss, samples,
  lse, grad_rows); with gradients on, grad_rows [M, E] fp32 is each row's cross-entropy gradient with respect
  to its hidden row, made in the forward kernel. ``electra_fast::generator_head_backward`` recomputes the logits
  once for (dW, db); dh = row_scale * grad_rows.
* ``electra_fast::generator_head_chunked`` (strategy "chunked") runs the three GEMMs with torch (cuBLAS on a GPU)
  a chunk of rows at a time and kernels/generator_head_chunked.py's epilogue between them; with gradients on
  it returns the loss's (dh, dW, db) for a unit upstream gradient, and the backward only scales them.

Both draw the same Philox numbers, so the samples are the reference's (up to near-ties in the logits).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from .. import gradients_in_forward
from ..contracts import GeneratorHeadOptions, generator_head_slots, slot_row_weights, weighted_slot_loss
from ..kernels import generator_head as fused_kernel
from ..kernels import generator_head_chunked as chunk_kernel
from . import generator_head_strategy as strategies

# --------------------------------------------------------------------------------------- fused (Triton only)


@torch.library.custom_op("electra_fast::generator_head_forward", mutates_args=())
def generator_head_forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    weights: torch.Tensor, temperature: float, disallow_correct: bool, seed: int, compute_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, int64 samples [M], fp32 LSE [M], fp32 grad_rows [M, E] or [0, E] without gradients)."""
    lse, target_logit, samples, grad_rows = fused_kernel.forward(
        hidden, weight, bias, targets, temperature=temperature, disallow_correct=disallow_correct, seed=seed,
        compute_grad=compute_grad,
    )
    if grad_rows is None:
        grad_rows = hidden.new_empty((0, hidden.shape[1]), dtype=torch.float32)
    return weighted_slot_loss(lse, target_logit, slot_row_weights(weights)), samples, lse, grad_rows


@generator_head_forward.register_fake
def _(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed, compute_grad):
    rows, width = hidden.shape
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty((rows,), dtype=torch.int64),
            hidden.new_empty((rows,), dtype=torch.float32),
            hidden.new_empty((rows if compute_grad else 0, width), dtype=torch.float32))


@torch.library.custom_op("electra_fast::generator_head_backward", mutates_args=())
def generator_head_backward(
    grad_loss: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    targets: torch.Tensor, weights: torch.Tensor, lse: torch.Tensor, grad_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dh like hidden, dW like weight, db fp32); dlogits of row m are scaled by grad_loss * w_m / sum(w)."""
    row_scale = (grad_loss.float() * slot_row_weights(weights)).contiguous()
    grad_weight, grad_bias = fused_kernel.backward(hidden, weight, bias, targets, lse, row_scale)
    # dh = row_scale * g, exactly 0 for padding rows whatever their g; one [M, E] buffer.
    grad_hidden = (grad_rows * row_scale[:, None]).masked_fill_(row_scale[:, None] == 0, 0.0).to(hidden.dtype)
    return grad_hidden, grad_weight, grad_bias


@generator_head_backward.register_fake
def _(grad_loss, hidden, weight, bias, targets, weights, lse, grad_rows):
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format), weight.new_empty(weight.shape),
            weight.new_empty((weight.shape[0],), dtype=torch.float32))


def _fused_setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, weights, *_ = inputs
    _, samples, lse, grad_rows = output
    ctx.save_for_backward(hidden, weight, bias, targets, weights, lse, grad_rows)
    ctx.mark_non_differentiable(samples)


def _fused_backward(ctx, grad_loss, _grad_samples, _grad_lse, _grad_grad_rows):
    hidden, weight, bias, targets, weights, lse, grad_rows = ctx.saved_tensors
    gradients_in_forward.check_formed(grad_rows.shape[0], hidden.shape[0])
    grad_hidden, grad_weight, grad_bias = generator_head_backward(
        grad_loss, hidden, weight, bias, targets, weights, lse, grad_rows
    )
    grad_bias = None if bias is None else grad_bias.to(bias.dtype)
    return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


generator_head_forward.register_autograd(_fused_backward, setup_context=_fused_setup_context)


# ------------------------------------------------------------------------------------- chunked (GEMM library)


_HAS_FP32_OUTPUT_GEMMS = hasattr(torch.ops.aten.mm, "dtype")  # torch.mm(..., out_dtype=) exists in this torch
# Whether mm / addmm take out_dtype=float32, per (op, device type, dtype, CUDA capability): None, or why not.
# Each key is probed once; one refusal never switches the other keys (or the whole process) to the upcast.
_fp32_output_probes: dict = {}
_warned_refusals: set = set()


def _wants_fp32_output_gemm(a: torch.Tensor) -> bool:
    """Whether a GEMM of ``a`` tries the library's 16-bit kernels with an fp32 result: 16-bit operands on CUDA,
    in a torch that has them. (A predicate of its own so that tests can send CPU tensors down this branch.)"""
    return _HAS_FP32_OUTPUT_GEMMS and a.is_cuda and a.dtype != torch.float32


def _fp32_output_gemm(a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.addmm(out, a, b, out_dtype=torch.float32, out=out)


def _fp32_output_refusal(op: str, a: torch.Tensor) -> Optional[str]:
    """None where ``op`` ("mm" or "addmm") takes a's dtype with out_dtype=float32 on a's device, else the
    refusal: learnt once per (op, device type, dtype, capability) from 16 x 16 operands, not from a real call
    (whose failure may be its own: its shape, its memory)."""
    capability = torch.cuda.get_device_capability(a.device) if a.is_cuda else None
    key = (op, a.device.type, a.dtype, capability)
    if key not in _fp32_output_probes:
        probe = torch.ones(16, 16, dtype=a.dtype, device=a.device)
        try:
            _fp32_output_gemm(probe, probe, None if op == "mm" else torch.zeros(16, 16, device=a.device))
            _fp32_output_probes[key] = None
        except (RuntimeError, TypeError) as error:
            _fp32_output_probes[key] = f"{op} with out_dtype=float32 on {a.device.type} {a.dtype}: {error}"
    return _fp32_output_probes[key]


def _matmul_fp32(a: torch.Tensor, b: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a @ b with fp32 accumulation and an fp32 result (added into ``out`` when given): 16-bit operands run the
    GEMM library's 16-bit kernels with an fp32 output on CUDA (``out_dtype``), and are upcast elsewhere, or for
    a call (or key, ``_fp32_output_refusal``) the library refuses, with one warning per refusal."""
    if _wants_fp32_output_gemm(a):
        refusal = _fp32_output_refusal("mm" if out is None else "addmm", a)
        if refusal is None:
            try:
                return _fp32_output_gemm(a, b, out)
            except torch.OutOfMemoryError:
                raise  # the upcast would need more memory still
            except (RuntimeError, TypeError) as error:  # this call only: the next one tries again
                refusal = f"{'mm' if out is None else 'addmm'} with out_dtype=float32 failed: {error}"
        if refusal not in _warned_refusals:
            _warned_refusals.add(refusal)
            warnings.warn(f"electra-fast: the chunked generator head's 16-bit GEMMs with an fp32 result are "
                          f"refused ({refusal}); they upcast their operands instead (same results, slower)",
                          RuntimeWarning, stacklevel=2)
    a, b = a.float(), b.float()
    return a @ b if out is None else out.addmm_(a, b)


@torch.library.custom_op("electra_fast::generator_head_chunked", mutates_args=())
def generator_head_chunked(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], targets: torch.Tensor,
    weights: torch.Tensor, temperature: float, disallow_correct: bool, seed: int, compute_grad: bool,
    chunk_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fp32 loss, int64 samples [M], and with gradients the loss's fp32 dh [M, E], dW [V, E] and db [V] for a
    unit upstream gradient; without them, empty tensors)."""
    # An outer autocast would run the GEMMs below in 16 bits with 16-bit results: the custom op does not stop it.
    with torch.autocast(hidden.device.type, enabled=False):
        return _chunked_loss_and_gradients(hidden, weight, bias, targets, weights, temperature, disallow_correct,
                                           seed, compute_grad, chunk_rows)


def _chunked_loss_and_gradients(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed,
                                compute_grad, chunk_rows):
    M, E = hidden.shape
    V = weight.shape[0]
    device = hidden.device
    row_weights = slot_row_weights(weights)
    lse = torch.empty(M, dtype=torch.float32, device=device)
    target_logit = torch.empty(M, dtype=torch.float32, device=device)
    samples = torch.empty(M, dtype=torch.int64, device=device)
    grad_hidden = torch.empty((M, E) if compute_grad else (0, E), dtype=torch.float32, device=device)
    # dW and db accumulate in fp32 across chunks and are cast once (docs/design.md §5.1).
    grad_weight = torch.zeros((V, E) if compute_grad else (0, E), dtype=torch.float32, device=device)
    grad_bias = torch.zeros(V if compute_grad else 0, dtype=torch.float32, device=device)
    for start in range(0, M, chunk_rows):
        end = min(M, start + chunk_rows)
        chunk_hidden = hidden[start:end]
        logits = _matmul_fp32(chunk_hidden, weight.t())
        if bias is not None:
            logits += bias.float()
        # fp32 inputs: the gradient overwrites the logits; 16-bit inputs: a 16-bit copy feeds the 16-bit GEMMs.
        grad_logits = None
        if compute_grad:
            grad_logits = logits if hidden.dtype == torch.float32 else torch.empty_like(logits, dtype=hidden.dtype)
        chunk_kernel.forward(
            logits, targets[start:end], row_weights[start:end], lse[start:end], target_logit[start:end],
            samples[start:end], grad_logits=grad_logits, temperature=temperature, disallow_correct=disallow_correct,
            seed=seed, row_offset=start,
        )
        if compute_grad:
            grad_hidden[start:end] = _matmul_fp32(grad_logits, weight)
            _matmul_fp32(grad_logits.t(), chunk_hidden, out=grad_weight)
            grad_bias += grad_logits.sum(dim=0, dtype=torch.float32)
    return weighted_slot_loss(lse, target_logit, row_weights), samples, grad_hidden, grad_weight, grad_bias


@generator_head_chunked.register_fake
def _(hidden, weight, bias, targets, weights, temperature, disallow_correct, seed, compute_grad, chunk_rows):
    (rows, width), vocab = hidden.shape, weight.shape[0]
    if not compute_grad:
        rows = vocab = 0
    return (hidden.new_empty((), dtype=torch.float32), hidden.new_empty((hidden.shape[0],), dtype=torch.int64),
            hidden.new_empty((rows, width), dtype=torch.float32), hidden.new_empty((vocab, width), dtype=torch.float32),
            hidden.new_empty((vocab,), dtype=torch.float32))


generator_head_chunked.register_autograd(gradients_in_forward.backward,
                                         setup_context=gradients_in_forward.setup_context)


# ------------------------------------------------------------------------------------------------- entry


def supports(*call) -> Optional[str]:
    """None: both designs take every call ``ops.generator_loss_and_sample`` accepts."""
    return None


def generator_loss_and_sample(hidden, weight, bias, targets, weights=None,
                              options: GeneratorHeadOptions = GeneratorHeadOptions()) -> tuple:
    """Kernel version of ``electra_fast.reference.generator_loss_and_sample``: (fp32 loss, int64 samples)."""
    targets, weights = generator_head_slots(hidden, targets, weights)
    bias = None if bias is None else bias.contiguous()
    M, E = hidden.shape
    chunk_rows = options.chunk_rows or strategies.default_chunk_rows(M)
    strategy = options.strategy
    if strategy == "auto":
        strategy = strategies.choose(M, weight.shape[0], E, hidden.element_size(), chunk_rows)
    # Gradients are formed in the forward (both designs) only when a backward can follow.
    scalars = (float(options.temperature), bool(options.disallow_correct), int(options.seed),
               gradients_in_forward.gradients_needed(hidden, weight, bias))
    if strategy == "chunked":
        loss, samples, *_ = generator_head_chunked(hidden, weight, bias, targets, weights, *scalars, int(chunk_rows))
    else:
        loss, samples, *_ = generator_head_forward(hidden, weight, bias, targets, weights, *scalars)
    return loss, samples
