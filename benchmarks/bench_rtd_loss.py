"""Replaced-token-detection head + loss, forward and backward: electra-fast against the Hugging Face head.

Baselines (same run, same inputs): transformers' ``ElectraDiscriminatorPredictions`` (dense, activation,
dense_prediction) + ``BCEWithLogitsLoss`` over the valid tokens, eager and ``torch.compile``d. Implementations:

* ``electra_fast``: ``ef.rtd_loss`` (cuBLAS H x H matmul + the fused kernels), the whole head and loss; its
  GB/s are against the least the head moves: hidden read and its gradient written, the fp32 dense weight read
  and its gradient written, and the per-token ids and mask;
* ``electra_fast_epilogue``: the fused kernels alone (everything after the matmul) against
  ``torch_compile_epilogue``, the same epilogue in PyTorch compiled by inductor. Their GB/s are against the
  bytes the epilogue must move: read ``projected`` in the forward, read it again and write its gradient in the
  backward (3 N H elements), plus the per-token ids, mask, logits and labels.

On a GPU: bf16 autocast with fp32 parameters (as in pre-training) at the ELECTRA shapes small (128 x 128
tokens, H 256), base (256 x 512, H 768) and large (2048 x 512 split into micro-batches of 256 x 512, H 1024);
the quick matrix (common.QUICK) keeps small and base and leaves out the cold ``torch.compile`` baselines.
On the CPU: fp32, one small shape, eager only (the kernels would run in the interpreter, which says nothing
about speed, so ``electra_fast`` there is the reference path that ``ef.rtd_loss`` dispatches to).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from common import DEVICE, ON_GPU, QUICK, measure

import electra_fast as ef

transformers = pytest.importorskip("transformers")
from transformers.models.electra.modeling_electra import ElectraDiscriminatorPredictions  # noqa: E402

# name: (tokens, H)
GPU_SHAPES = {"base": (256 * 512, 768), "small": (128 * 128, 256)}
if not QUICK:
    GPU_SHAPES["large"] = (256 * 512, 1024)
CPU_SHAPES = {"cpu_small": (8 * 128, 256)}
SHAPES = GPU_SHAPES if ON_GPU else CPU_SHAPES
COMPILED_IMPLS = ("hf_compile", "torch_compile_epilogue")
IMPLS = tuple(impl for impl in ("electra_fast", "hf_eager", "hf_compile", "electra_fast_epilogue",
                                "torch_compile_epilogue") if not (QUICK and impl in COMPILED_IMPLS))
GPU_ONLY_IMPLS = {"hf_compile", "electra_fast_epilogue", "torch_compile_epilogue"}
ACTIVATION = "gelu"


def autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if ON_GPU else contextlib.nullcontext()


def make_problem(tokens: int, width: int):
    config = transformers.ElectraConfig(hidden_size=width, hidden_act=ACTIVATION)
    head = ElectraDiscriminatorPredictions(config).to(DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    hidden = torch.randn(tokens, width, device=DEVICE, generator=generator,
                         dtype=torch.bfloat16 if ON_GPU else torch.float32).requires_grad_()
    original = torch.randint(5, 30000, (tokens,), device=DEVICE, generator=generator)
    replaced = torch.rand(tokens, device=DEVICE, generator=generator) < 0.15
    corrupted = torch.where(replaced, torch.randint_like(original, 5, 30000), original)
    mask = (torch.rand(tokens, device=DEVICE, generator=generator) < 0.9).long()  # ~10 % padding
    return head, hidden, corrupted, original, mask


def hf_head_and_loss(head, hidden, corrupted, original, mask):
    """HF's head, its labels and BCEWithLogitsLoss averaged over valid tokens (mask-weighted: no host sync)."""
    logits = head(hidden)
    valid = mask.bool()
    labels = ((corrupted != original) & valid).to(logits.dtype)
    weights = valid.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
    return loss / weights.sum().clamp(min=1)


def epilogue_in_torch(projected, dense_bias, prediction_weight, prediction_bias, corrupted, original, mask):
    """What the fused kernels compute, in plain PyTorch (for torch.compile to fuse)."""
    logits = F.linear(F.gelu(projected.float() + dense_bias), prediction_weight, prediction_bias).squeeze(-1)
    valid = mask.bool()
    labels = ((corrupted != original) & valid).float()
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=valid.float(), reduction="sum")
    return loss / valid.sum().clamp(min=1)


def head_bytes(tokens: int, width: int, element_size: int) -> int:
    per_token = 8 + 8 + 8  # two int64 ids and the mask
    return 2 * tokens * width * element_size + 2 * width * width * 4 + tokens * per_token


def epilogue_bytes(tokens: int, width: int, element_size: int) -> int:
    per_token = 8 + 8 + 8 + 4 + 4 + 1 + 1  # two int64 ids, the mask, logits written and read, labels
    return 3 * tokens * width * element_size + tokens * per_token


# Every implementation of one shape before the next shape: a time limit keeps whole comparisons.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape_name", list(SHAPES))
def test_rtd_loss_forward_backward(benchmark, shape_name, impl):
    if impl in GPU_ONLY_IMPLS and not ON_GPU:
        pytest.skip("GPU-only implementation")
    tokens, width = SHAPES[shape_name]
    head, hidden, corrupted, original, mask = make_problem(tokens, width)
    params = [head.dense.weight, head.dense.bias, head.dense_prediction.weight, head.dense_prediction.bias]
    matmul_flops = 3 * 2 * tokens * width * width  # forward, d(hidden), d(weight)

    if impl in ("hf_eager", "hf_compile", "electra_fast"):
        if impl == "electra_fast":
            def loss_fn(hidden):
                return ef.rtd_loss(hidden, *params, corrupted, original, mask, activation=ACTIVATION).loss
        else:
            def loss_fn(hidden):
                return hf_head_and_loss(head, hidden, corrupted, original, mask)
            if impl == "hf_compile":
                loss_fn = torch.compile(loss_fn)
        inputs = [hidden, *params]

        def step():
            with autocast():
                loss = loss_fn(hidden)
            return torch.autograd.grad(loss, inputs)

        measure(benchmark, step, op="rtd_loss", impl=impl, shape=f"{shape_name} N={tokens} H={width}",
                flops=matmul_flops, bytes_moved=head_bytes(tokens, width, hidden.element_size()))
        return

    # The epilogue alone, from a given projected = hidden @ dense_weight.T.
    with torch.no_grad(), autocast():
        projected = F.linear(hidden, head.dense.weight).reshape(tokens, width)
    projected.requires_grad_()
    dense_bias = head.dense.bias.detach().float().requires_grad_()
    prediction_weight = head.dense_prediction.weight.detach().float().requires_grad_()
    prediction_bias = head.dense_prediction.bias.detach().float().requires_grad_()
    inputs = [projected, dense_bias, prediction_weight, prediction_bias]
    if impl == "electra_fast_epilogue":
        from electra_fast.fused.rtd_loss import rtd_loss_head

        valid = mask.to(torch.uint8)

        def step():
            loss, _, _, _ = rtd_loss_head(projected, dense_bias, prediction_weight.reshape(-1), prediction_bias,
                                          corrupted, original, valid, ACTIVATION)
            return torch.autograd.grad(loss, inputs)
    else:
        compiled = torch.compile(epilogue_in_torch)

        def step():
            loss = compiled(projected, dense_bias, prediction_weight, prediction_bias, corrupted, original, mask)
            return torch.autograd.grad(loss, inputs)

    measure(benchmark, step, op="rtd_loss_epilogue", impl=impl, shape=f"{shape_name} N={tokens} H={width}",
            bytes_moved=epilogue_bytes(tokens, width, projected.element_size()))
