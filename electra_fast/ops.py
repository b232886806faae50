"""The public, differentiable ops of electra-fast (docs/design.md §3).

Each op validates its arguments (errors name the argument), gathers its non-tensor arguments into its options
object (``electra_fast.contracts``) and hands both to ``dispatch``, which runs the first implementation that
takes the call: the Triton kernels (``fused/<module>``), the CPU path (``cpu/<module>``), the literal PyTorch
reference (``reference``), as ``electra_fast.backend`` allows for the inputs' device.
"""

from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from . import reference
from . import validation as check
from .backend import use_cpu_path, use_triton
from .contracts import (
    AttentionOptions,
    GeneratorHeadOptions,
    MaskingOptions,
    RTDOptions,
)
from .outputs import MaskedTokens, RTDOutput

__all__ = [
    "mask_tokens", "generator_loss_and_sample", "rtd_loss", "attention", "attention_varlen", "MaskedTokens",
    "RTDOutput",
]

# op -> (its module under fused/ and cpu/, whether cpu/ has the op, the name of the module's check for it).
ROUTES = {
    "mask_tokens": ("masking", True, "supports"),
    "generator_loss_and_sample": ("generator_head", True, "supports"),
    "rtd_loss": ("rtd_loss", False, "supports"),
    "attention": ("attention", True, "supports"),
    "attention_varlen": ("attention", False, "supports_varlen"),
}
PATH_NAMES = {"fused": "Triton kernels", "cpu": "CPU path"}
_warned_fallbacks: set = set()


def warn_fallback_once(op: str, path: str, reason: str, stacklevel: int) -> None:
    """One warning per (op, reason) when a path that would run a call cannot take it."""
    if (op, reason) not in _warned_fallbacks:
        _warned_fallbacks.add((op, reason))
        warnings.warn(f"electra_fast.{op} does not run on its {PATH_NAMES[path]}: {reason}", stacklevel=stacklevel)


def implementations(path: str) -> dict:
    """The modules of ``fused/`` or ``cpu/`` by name, imported on first use (Triton may not be installed)."""
    if path == "fused":
        from .fused import attention, generator_head, masking, rtd_loss

        return dict(masking=masking, generator_head=generator_head, rtd_loss=rtd_loss, attention=attention)
    from .cpu import attention, generator_head, masking

    return dict(masking=masking, generator_head=generator_head, attention=attention)


def route(op: str, device: torch.device, args: tuple, options, _helpers: int = 0) -> tuple:
    """(path, thunk): where ``op(*args, options)`` runs, "fused", "cpu" or "reference", and a call that runs it.

    The Triton kernels where ``backend`` runs Triton on ``device``, then the CPU path on CPU tensors, then the
    reference; a path whose ``supports(*args, options)`` gives a reason is passed over, warning once per reason
    at the line that called the public op (``_helpers``: the frames between that op and this function).
    """
    module_name, has_cpu_path, check_name = ROUTES[op]
    for path, allowed in (("fused", use_triton(device)), ("cpu", has_cpu_path and use_cpu_path(device))):
        if allowed:
            module = implementations(path)[module_name]
            reason = getattr(module, check_name)(*args, options)
            if reason is None:
                return path, lambda: getattr(module, op)(*args, options)
            warn_fallback_once(op, path, reason, stacklevel=4 + _helpers)
    return "reference", lambda: getattr(reference, op)(*args, **options.as_keywords())


def dispatch(op: str, device: torch.device, args: tuple, options):
    """``op(*args, options)`` on the first implementation that takes it (``route``)."""
    return route(op, device, args, options, _helpers=1)[1]()


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    mask_token_id: int,
    special_token_ids: Sequence[int] = (),
    mask_prob: float = 0.15,
    max_predictions: Optional[int] = None,
    mask_token_prob: float = 0.85,
    random_token_prob: float = 0.0,
    vocab_size: Optional[int] = None,
    mode: str = "exact",
    seed: int = 0,
    check_ids: Optional[bool] = None,
) -> MaskedTokens:
    """Choose positions to corrupt and corrupt them (docs/design.md §1.1); fixed-shape outputs, see ``MaskedTokens``.

    ``check_ids`` verifies that ids lie in [0, vocab_size) (a device synchronisation); by default it is on
    for the reference path and off for the kernel path.
    """
    check.tensor("input_ids", input_ids, dims=2, dtypes=check.INTEGER_DTYPES)
    check.non_empty("input_ids", input_ids)
    if attention_mask is not None:
        check.tensor("attention_mask", attention_mask, dims=2)
        if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
            raise TypeError(f"attention_mask must be bool or integer (1 = real token), got {attention_mask.dtype}")
        check.same_shape("attention_mask", attention_mask, input_ids.shape, "the shape of input_ids")
        check.same_device("attention_mask", attention_mask, input_ids, "input_ids")
    options = MaskingOptions.resolve(
        input_ids.shape[1], mask_token_id=mask_token_id, special_token_ids=special_token_ids, mask_prob=mask_prob,
        max_predictions=max_predictions, mask_token_prob=mask_token_prob, random_token_prob=random_token_prob,
        vocab_size=vocab_size, mode=mode, seed=seed,
    )
    path, run = route("mask_tokens", input_ids.device, (input_ids, attention_mask), options)
    if vocab_size is not None and (check_ids if check_ids is not None else path != "fused"):
        check.ids_in_vocab("input_ids", input_ids, vocab_size)
    return run()


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
    strategy: str = "auto",
    chunk_rows: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generator LM head + weighted-mean cross-entropy + Gumbel-max sample at the slots (docs/design.md §1.2-1.3).

    ``hidden`` [M, E], ``weight`` [V, E] (the tied word embeddings), ``bias`` [V] or None, ``targets`` [M]
    ids, ``weights`` [M] (1 real slot, 0 padding). Returns the fp32 loss and int64 samples [M]; the samples
    carry no gradient.

    ``strategy`` picks the Triton path's design (docs/design.md §5.5): "fused" (Triton only, four GEMMs of work,
    O(M * E) memory), "chunked" (the three GEMMs by cuBLAS ``chunk_rows`` rows at a time, default 2 % of M,
    with a Triton epilogue between them) or "auto" (by shape, ``fused.generator_head_strategy.choose``). The
    CPU path and the reference have one implementation each and ignore it.
    """
    check.tensor("hidden", hidden, dims=2, dtypes=check.FLOAT_DTYPES)
    check.non_empty("hidden", hidden)
    check.tensor("weight", weight, dims=2, dtypes=check.FLOAT_DTYPES)
    check.non_empty("weight", weight)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"weight must have shape [V, {hidden.shape[1]}] (E of hidden), got {tuple(weight.shape)}")
    check.same_device("weight", weight, hidden, "hidden")
    vocab_size = weight.shape[0]
    if bias is not None:
        check.tensor("bias", bias, dims=1, dtypes=check.FLOAT_DTYPES)
        check.same_shape("bias", bias, (vocab_size,), "[V], V = weight.shape[0]")
        check.same_device("bias", bias, hidden, "hidden")
    check.tensor("targets", targets, dims=1, dtypes=check.INTEGER_DTYPES)
    check.same_shape("targets", targets, (hidden.shape[0],), "[M], M = hidden.shape[0]")
    check.same_device("targets", targets, hidden, "hidden")
    if weights is not None:
        check.tensor("weights", weights, dims=1)
        check.same_shape("weights", weights, (hidden.shape[0],), "[M], M = hidden.shape[0]")
        check.same_device("weights", weights, hidden, "hidden")
    options = GeneratorHeadOptions(temperature, disallow_correct, seed, strategy, chunk_rows)
    path, run = route("generator_loss_and_sample", hidden.device, (hidden, weight, bias, targets, weights), options)
    if path != "fused":  # as masking's check_ids: checked off the kernel path, where a GPU would synchronise
        check.ids_in_vocab("targets", targets, vocab_size)
    return run()


def rtd_loss(
    hidden: torch.Tensor,
    dense_weight: torch.Tensor,
    dense_bias: Optional[torch.Tensor],
    prediction_weight: torch.Tensor,
    prediction_bias: Optional[torch.Tensor],
    corrupted_ids: torch.Tensor,
    original_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor] = None,
    *,
    activation: str = "gelu",
) -> RTDOutput:
    """Discriminator head + replaced-token-detection loss and metrics (docs/design.md §1.4-1.5).

    ``hidden`` [..., H] is the discriminator's sequence output; ``dense_*`` the head's H x H layer,
    ``prediction_*`` its H -> 1 layer (weight [1, H]); ids and ``attention_mask`` have hidden's leading shape.
    """
    check.tensor("hidden", hidden, dtypes=check.FLOAT_DTYPES)
    if hidden.dim() < 2:
        raise ValueError(f"hidden must have shape [..., H], got {tuple(hidden.shape)}")
    check.non_empty("hidden", hidden)
    width = hidden.shape[-1]
    check.tensor("dense_weight", dense_weight, dims=2, dtypes=check.FLOAT_DTYPES)
    check.same_shape("dense_weight", dense_weight, (width, width), "[H, H], H = hidden.shape[-1]")
    if dense_bias is not None:
        check.tensor("dense_bias", dense_bias, dims=1, dtypes=check.FLOAT_DTYPES)
        check.same_shape("dense_bias", dense_bias, (width,), "[H]")
    check.tensor("prediction_weight", prediction_weight, dtypes=check.FLOAT_DTYPES)
    if prediction_weight.numel() != width:
        raise ValueError(f"prediction_weight must have shape [1, {width}], got {tuple(prediction_weight.shape)}")
    if prediction_bias is not None:
        check.tensor("prediction_bias", prediction_bias, dtypes=check.FLOAT_DTYPES)
        if prediction_bias.numel() != 1:
            raise ValueError(f"prediction_bias must have one element, got shape {tuple(prediction_bias.shape)}")
    leading = hidden.shape[:-1]
    for name, ids in (("corrupted_ids", corrupted_ids), ("original_ids", original_ids)):
        check.tensor(name, ids, dtypes=check.INTEGER_DTYPES)
        check.same_shape(name, ids, leading, "the leading shape of hidden")
        check.same_device(name, ids, hidden, "hidden")
    if attention_mask is not None:
        check.tensor("attention_mask", attention_mask)
        check.same_shape("attention_mask", attention_mask, leading, "the leading shape of hidden")
        check.same_device("attention_mask", attention_mask, hidden, "hidden")
    for name, param in (("dense_weight", dense_weight), ("prediction_weight", prediction_weight)):
        check.same_device(name, param, hidden, "hidden")
    args = (hidden, dense_weight, dense_bias, prediction_weight, prediction_bias, corrupted_ids, original_ids,
            attention_mask)
    return dispatch("rtd_loss", hidden.device, args, RTDOptions(activation))


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    seed: int = 0,
) -> torch.Tensor:
    """Bidirectional attention on ``[B, heads, L, D]`` tensors with an optional key-padding mask.

    ``key_padding_mask`` is ``[B, Lk]`` bool with True for a real key (transformers' attention_mask
    convention), or an additive float mask broadcastable to ``[B, heads, Lq, Lk]``. Returns ``[B, heads, Lq, D]``;
    on the kernel path it is a view of a contiguous ``[B, Lq, heads, D]`` tensor (``out.transpose(1, 2)`` is what
    transformers reshapes, without a copy). Masks that vary over heads or queries run the reference.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check.tensor(name, t, dims=4, dtypes=check.FLOAT_DTYPES)
        check.non_empty(name, t)
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q [B, heads, Lq, D] and k [B, heads, Lk, D] disagree: {tuple(q.shape)} vs {tuple(k.shape)}")
    for name, t in (("k", k), ("v", v)):
        check.same_device(name, t, q, "q")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    batch, heads, q_len, _ = q.shape
    k_len = k.shape[2]
    if key_padding_mask is not None:
        check.tensor("key_padding_mask", key_padding_mask)
        check.same_device("key_padding_mask", key_padding_mask, q, "q")
        if key_padding_mask.dtype == torch.bool:
            check.same_shape("key_padding_mask", key_padding_mask, (batch, k_len), "[B, Lk] bool")
        elif key_padding_mask.dtype.is_floating_point:
            try:
                torch.broadcast_shapes(key_padding_mask.shape, (batch, heads, q_len, k_len))
            except RuntimeError:
                raise ValueError(
                    f"key_padding_mask (additive) must broadcast to {(batch, heads, q_len, k_len)}, "
                    f"got {tuple(key_padding_mask.shape)}"
                ) from None
        else:
            raise TypeError("key_padding_mask must be bool [B, Lk] or an additive float mask, "
                            f"got {key_padding_mask.dtype}")
    return dispatch("attention", q.device, (q, k, v, key_padding_mask), AttentionOptions(dropout_p, scale, seed))


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    seed: int = 0,
) -> torch.Tensor:
    """Attention within each of the packed sequences of ``q, k, v`` [total, heads, D] (flash-attn's varlen API).

    ``cu_seqlens`` [B + 1] int32/int64 holds the sequence offsets (0, ..., total), shared by queries and keys;
    ``max_seqlen`` >= every sequence length. Returns [total, heads, D]. The dropout mask is the one
    ``attention`` draws for the same batch right-padded to ``max_seqlen``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check.tensor(name, t, dims=3, dtypes=check.FLOAT_DTYPES)
        check.non_empty(name, t)
        check.same_shape(name, t, q.shape, "the shape of q, [total, heads, D]")
        check.same_device(name, t, q, "q")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
    check.tensor("cu_seqlens", cu_seqlens, dims=1, dtypes=check.INTEGER_DTYPES)
    check.same_device("cu_seqlens", cu_seqlens, q, "q")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have B + 1 >= 2 entries, got {cu_seqlens.numel()}")
    check.positive_int("max_seqlen", max_seqlen)
    return dispatch("attention_varlen", q.device, (q, k, v, cu_seqlens, max_seqlen),
                    AttentionOptions(dropout_p, scale, seed))
