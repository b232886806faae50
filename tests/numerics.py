"""The tests' numerics rules, held once (docs/design.md §5.4).

Low precision (fp16, bf16): on the same inputs and device, an implementation's largest error against an fp64
ground truth is at most twice that of PyTorch's own implementation in the same dtype, plus a small slack
(``assert_parity``). A mean over tokens is held to PyTorch's mean per-token error carried through the mean
(``assert_reduction_parity``). ``tests/test_rtd_loss.py`` shows that the rule fails a wrong result.
"""

import math

import torch


def max_error(value, truth, where=None):
    """The largest ``|value - truth|``, computed in fp64; with ``where`` (bool or 0/1, broadcastable), only the
    elements it selects count."""
    error = value.double() - truth.double()
    if where is not None:
        error = error * where
    return error.abs().max().item()


def ulp_slack(dtype, scale):
    """One unit in the last place of ``dtype`` at ``scale`` (at least 1e-5 relative), plus 1e-7: rounding a
    result to its dtype is unavoidable, and PyTorch's error on a scalar can happen to be almost zero."""
    return max(torch.finfo(dtype).eps, 1e-5) * scale + 1e-7


def assert_parity(kernel, torch_same_dtype, truth, what, slack=None, where=None):
    """docs/design.md §5.4: ``kernel``'s error against the fp64 ``truth`` is at most twice that of
    ``torch_same_dtype`` (PyTorch's own result in the same dtype, on the same inputs), plus ``slack``: by
    default one unit in the last place of ``kernel``'s dtype at the truth's scale (``ulp_slack``)."""
    scale = truth.double().abs().max().item()
    if slack is None:
        slack = ulp_slack(kernel.dtype, scale)
    kernel_error = max_error(kernel, truth, where)
    torch_error = max_error(torch_same_dtype, truth, where)
    assert math.isfinite(kernel_error), f"{what}: kernel error {kernel_error}"
    assert kernel_error <= 2 * torch_error + slack, (
        f"{what}: kernel error {kernel_error:.3g} vs PyTorch error {torch_error:.3g} (scale {scale:.3g}, "
        f"slack {slack:.3g})"
    )


def assert_reduction_parity(kernel, torch_logits, truth_logits, valid, slope, truth, what):
    """docs/design.md §5.4 for a mean over the valid tokens of a function of each token's logit with slope <=
    ``slope`` (the BCE loss: 1; its gradient in the prediction bias: 1/4).

    Its error is at most ``slope`` times the mean logit error, plus rounding the mean. How much of PyTorch's
    per-token error happens to cancel in its own mean depends on its matmul's rounding order, which differs
    between CPUs; so the kernel's error is held to twice what PyTorch's per-token errors allow, on the same
    inputs, plus one unit in the last place of the result's dtype.
    """
    per_token_error = (torch_logits.double() - truth_logits.double()).abs()[valid].mean().item()
    slack = ulp_slack(kernel.dtype, truth.double().abs().max().item())
    kernel_error = max_error(kernel, truth)
    assert math.isfinite(kernel_error), what
    assert kernel_error <= 2 * slope * per_token_error + slack, (
        f"{what}: kernel error {kernel_error:.3g} vs {slope} x PyTorch's mean logit error {per_token_error:.3g}"
    )
