"""Generator head fwd+bwd (LM head + weighted cross-entropy + Gumbel-max sample at the masked slots).

Compared in the same run (time, peak memory, TFLOP/s counted as the 3 GEMMs 6 * M * V * E, GB/s as the least a
head moves: hidden, W and the bias read, their gradients written, targets, weights and samples; no logits):
- electra_fast: ``ef.generator_loss_and_sample`` as users call it (strategy "auto" on CUDA; the CPU path on CPU);
- electra_fast_fused / electra_fast_chunked (GPU only): each design forced (docs/design.md §5), so that the
  default's choice can be checked against both;
- torch_eager: F.linear + F.cross_entropy + Gumbel argmax on the materialised logits;
- torch_compile: torch.compile of torch_eager (GPU only, base shape only, not in the quick matrix: each shape
  costs a compilation);
- linear_cross_entropy+sample: F.linear_cross_entropy (when this torch has it) + a separate no-grad
  logits pass for the sample;
- liger+sample: Liger-Kernel's fused linear cross-entropy (when installed) + the same sampling pass;
- three_gemms: the three GEMMs alone (logits, dh, dW) in the input dtype, the target's lower bound.

GPU shapes are ELECTRA's base / small / large heads (bf16, V = 30522, M = 79*256 / 19*128 / 130*256 slots; the
quick matrix, common.QUICK, leaves out large); on the CPU the tiny preset's head at batch 16 (fp32, V = 30522,
M = 19*16, E = 64).
"""

import pytest
import torch
import torch.nn.functional as F
from common import DEVICE, ON_GPU, QUICK, measure

import electra_fast as ef

OP = "generator_head_fwd_bwd"
VOCAB = 30522
if ON_GPU:
    SHAPES = {"base": (79 * 256, 768), "small": (19 * 128, 128)}  # name: (M, E)
    if not QUICK:
        SHAPES["large"] = (130 * 256, 1024)
    DTYPE = torch.bfloat16
    ROUNDS = 10  # the large shape's baselines take tens of ms per call
else:  # the tiny preset's head in the README's CPU run: batch 16 x 19 slots, E = 64, the real vocabulary
    SHAPES = {"tiny": (19 * 16, 64)}
    DTYPE = torch.float32
    ROUNDS = 5


def make_case(M, E):
    generator = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(M, E, generator=generator).to(DEVICE, DTYPE).requires_grad_()
    weight = (torch.randn(VOCAB, E, generator=generator) * E**-0.5).to(DEVICE, DTYPE).requires_grad_()
    bias = torch.zeros(VOCAB, device=DEVICE, dtype=DTYPE, requires_grad=True)
    targets = torch.randint(0, VOCAB, (M,), generator=generator).to(DEVICE)
    weights = (torch.rand(M, generator=generator) > 0.05).float().to(DEVICE)  # a few padding slots
    return hidden, weight, bias, targets, weights


def gumbel_argmax(logits, temperature=1.0):
    """Sample of softmax(logits / T) with torch's generator (the baselines' sampling pass)."""
    with torch.no_grad():
        noise = -torch.log(-torch.log(torch.rand_like(logits, dtype=torch.float32)))
        return (logits.float() / temperature + noise).argmax(dim=-1)


def weighted_mean(per_row, weights):
    return (per_row * weights).sum() / weights.sum().clamp_min(1)


def torch_eager(hidden, weight, bias, targets, weights):
    logits = F.linear(hidden, weight, bias)
    loss = weighted_mean(F.cross_entropy(logits.float(), targets, reduction="none"), weights)
    return loss, gumbel_argmax(logits.detach())


def linear_cross_entropy_and_sample(hidden, weight, bias, targets, weights):
    per_row = F.linear_cross_entropy(hidden, weight, targets, linear_bias=bias, reduction="none")
    with torch.no_grad():
        samples = gumbel_argmax(F.linear(hidden, weight, bias))
    return weighted_mean(per_row.float(), weights), samples


def liger_and_sample(hidden, weight, bias, targets, weights):
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    # Liger takes no per-row weights: padding slots (weight 0) become ignore_index, the mean is over the rest.
    loss = LigerFusedLinearCrossEntropyLoss()(weight, hidden, torch.where(weights > 0, targets, -100), bias)
    with torch.no_grad():
        samples = gumbel_argmax(F.linear(hidden, weight, bias))
    return loss, samples


def electra_fast(hidden, weight, bias, targets, weights, strategy="auto"):
    return ef.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=0, strategy=strategy)


def electra_fast_fused(*case):
    return electra_fast(*case, strategy="fused")


def electra_fast_chunked(*case):
    return electra_fast(*case, strategy="chunked")


def _has_liger():
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return ON_GPU


IMPLS = {
    "electra_fast": electra_fast,
    "electra_fast_fused": electra_fast_fused if ON_GPU else None,
    "electra_fast_chunked": electra_fast_chunked if ON_GPU else None,
    "torch_eager": torch_eager,
    "torch_compile": (lambda: torch.compile(torch_eager)) if ON_GPU and not QUICK else None,
    "linear_cross_entropy+sample": linear_cross_entropy_and_sample if hasattr(F, "linear_cross_entropy") else None,
    "liger+sample": liger_and_sample if _has_liger() else None,
}


def least_bytes(M, E):
    """Hidden, W and the bias read and their gradients written; int64 targets and samples, fp32 weights."""
    element = torch.finfo(DTYPE).bits // 8
    return element * 2 * (M * E + VOCAB * E + VOCAB) + M * (8 + 4 + 8)


def fwd_bwd(impl, case):
    hidden, weight, bias, targets, weights = case

    def run():
        for leaf in (hidden, weight, bias):
            leaf.grad = None
        loss, _ = impl(hidden, weight, bias, targets, weights)
        loss.backward()

    return run


# Every implementation of one shape before the next shape: a time limit keeps whole comparisons.
@pytest.mark.parametrize("impl_name", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_generator_head(benchmark, impl_name, shape):
    impl = IMPLS[impl_name]
    if impl is None:
        pytest.skip(f"{impl_name} is not available here")
    if impl_name == "torch_compile":
        if shape != "base":
            pytest.skip("torch.compile is measured at the base shape only (compile time)")
        impl = impl()
    M, E = SHAPES[shape]
    measure(benchmark, fwd_bwd(impl, make_case(M, E)), op=OP, impl=impl_name, shape=f"{shape} M={M} V={VOCAB} E={E}",
            flops=6.0 * M * VOCAB * E, bytes_moved=least_bytes(M, E), rounds=ROUNDS)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_three_gemms_alone(benchmark, shape):
    """Logits = h @ W.T, dh = G @ W, dW = G.T @ h with a ready [M, V] G: the fused head's lower bound."""
    M, E = SHAPES[shape]
    hidden, weight = (t.detach() for t in make_case(M, E)[:2])
    grad_logits = torch.randn(M, VOCAB, device=DEVICE, dtype=DTYPE)

    def run():
        hidden @ weight.t()
        grad_logits @ weight
        grad_logits.t() @ hidden

    measure(benchmark, run, op=OP, impl="three_gemms", shape=f"{shape} M={M} V={VOCAB} E={E}",
            flops=6.0 * M * VOCAB * E, bytes_moved=least_bytes(M, E), rounds=ROUNDS)
