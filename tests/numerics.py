"""The tests' numerics rules, held once (docs/design.md §5.4).

Low precision (fp16, bf16): on the same inputs and device, an implementation's largest error against an fp64
ground truth is at most twice that of PyTorch's own implementation in the same dtype, plus a small slack
(``assert_parity``). A mean over tokens is held to PyTorch's mean per-token error carried through the mean
(``assert_reduction_parity``). ``assert_parity(..., negative=True)`` also shows that the check can fail on these
very values: it must reject a deliberately wrong result (``wrong_result``). ``tests/test_rtd_loss.py`` shows the
rule for means rejecting a loss that drops one token, and means that count the padding tokens too.
"""

import math
import re

import pytest
import torch

# How far wrong_result moves one element: 1/16 of the largest |truth|, 8 units in the last place of bf16 at that
# scale. PyTorch's own bf16 errors on the tests' inputs are 0.2 to 0.8 of a unit (CPU), so the rule's bound, two
# of them plus its slack, stays well below it.
WRONG_BY = 1 / 16


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


def wrong_result(value, truth, where=None):
    """A deliberately wrong ``value`` (in its dtype): the element where ``|truth|`` is largest (among ``where``)
    moved away from zero by ``WRONG_BY`` of that ``|truth|``, as a slip at one element (a tile edge, a key
    missed) would."""
    selected = (truth.double() if where is None else truth.double() * where).reshape(-1)
    index = int(selected.abs().argmax())
    wrong = value.detach().double().clone().reshape(-1)
    wrong[index] += WRONG_BY * selected[index].item()
    return wrong.reshape(value.shape).to(value.dtype)


def assert_parity(kernel, torch_same_dtype, truth, what, slack=None, where=None, negative=False):
    """docs/design.md §5.4: ``kernel``'s error against the fp64 ``truth`` is at most twice that of
    ``torch_same_dtype`` (PyTorch's own result in the same dtype, on the same inputs), plus ``slack``: by
    default one unit in the last place of ``kernel``'s dtype at the truth's scale (``ulp_slack``). With
    ``negative``, the same check must also reject ``wrong_result(kernel, ...)``: it can fail on these values."""
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
    if negative:
        wrong = wrong_result(kernel, truth, where)
        with pytest.raises(AssertionError, match=re.escape(f"{what}: kernel error")):
            assert_parity(wrong, torch_same_dtype, truth, what, slack, where)


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
