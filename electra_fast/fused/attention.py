"""Flash attention as torch.library custom ops (opaque to torch.compile) with autograd, and the entry points
that turn masks into what kernels/attention.py reads.

Layouts. The padded entry takes q, k, v as [B, heads, L, D] tensors with any strides and a unit stride on D,
which is what transformers hands over: views of [B, L, heads, D] projections, read in place. It returns
[B, heads, Lq, D] as a view of a contiguous [B, Lq, heads, D] buffer, so ``out.transpose(1, 2)`` is the
contiguous [B, Lq, heads, D] tensor transformers reshapes to [B, Lq, hidden] without a copy. The gradients of
q, k, v have the same layout (views of contiguous [B, L, heads, D] buffers), matching the projections.

Masks. A [B, Lk] bool mask (True = real key) or an additive float mask of shape [B or 1, 1, 1, Lk] (or any
shape that broadcasts from [B, Lk] to [B, heads, Lq, Lk] without varying over heads and queries) becomes an
fp32 bias per (batch, key) with -inf for masked keys, plus the per-sequence count of key rows to visit (one
past the last real key), so right padding costs no work. A float mask gets no gradient.

Dtypes. fp16/bf16 on CUDA; fp32 (and everything) under the Triton interpreter.

``supports`` (``supports_varlen``) names what the kernels cannot take (masks that vary over heads or queries,
fp32 CUDA tensors, head dims above 128); ``electra_fast.ops`` then runs another path, with a one-time warning.

Variable length. ``attention_varlen`` takes packed [total, heads, D] tensors and ``cu_seqlens`` [B + 1]
(int32 or int64 offsets, as flash-attn's varlen API, one set shared by queries and keys: self-attention). Its
dropout mask is the one the padded entry draws for the same batch right-padded to ``max_seqlen``, so the two
entries agree exactly.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..contracts import AttentionOptions, additive_mask_allows, key_only
from ..kernels import attention as kernels

__all__ = ["attention", "attention_varlen", "key_bias_and_extent", "supports", "supports_varlen"]


@torch.library.custom_op("electra_fast::attention_forward", mutates_args=())
def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: torch.Tensor, bounds: torch.Tensor,
    q_len_padded: int, k_len_padded: int, scale: float, dropout_p: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    return kernels.forward(q, k, v, key_bias, bounds, q_len_padded, k_len_padded, scale, dropout_p, seed)


@attention_forward.register_fake
def _attention_forward_fake(q, k, v, key_bias, bounds, q_len_padded, k_len_padded, scale, dropout_p, seed):
    heads, head_dim = q.shape[1], q.shape[-1]
    if q.dim() == 4:
        out = q.new_empty(q.shape[0], q_len_padded, heads, head_dim)
        lse = q.new_empty(q.shape[0], heads, q_len_padded, dtype=torch.float32)
    else:
        out = q.new_empty(q.shape)
        lse = q.new_empty(heads, q.shape[0], dtype=torch.float32)
    return out, lse


@torch.library.custom_op("electra_fast::attention_backward", mutates_args=())
def attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    key_bias: torch.Tensor, bounds: torch.Tensor, q_len_padded: int, k_len_padded: int, scale: float,
    dropout_p: float, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernels.backward(
        dout, q, k, v, out, lse, key_bias, bounds, q_len_padded, k_len_padded, scale, dropout_p, seed
    )


def _gradient_like(t: torch.Tensor) -> torch.Tensor:
    if t.dim() == 4:  # a [B, heads, L, D] view of a [B, L, heads, D] buffer
        return t.new_empty(t.shape[0], t.shape[2], t.shape[1], t.shape[3]).transpose(1, 2)
    return t.new_empty(t.shape)


@attention_backward.register_fake
def _attention_backward_fake(dout, q, k, v, out, lse, key_bias, bounds, q_len_padded, k_len_padded, scale,
                             dropout_p, seed):
    return _gradient_like(q), _gradient_like(k), _gradient_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, key_bias, bounds, q_len_padded, k_len_padded, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_bias, bounds)
    ctx.arguments = (q_len_padded, k_len_padded, scale, dropout_p, seed)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, key_bias, bounds = ctx.saved_tensors
    if dout.stride(-1) != 1:  # e.g. the expanded gradient of a sum: the kernels need a unit stride on D
        dout = dout.contiguous()
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, key_bias, bounds, *ctx.arguments)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_forward.register_autograd(_backward, setup_context=_setup_context)


def _four_dims(mask: torch.Tensor) -> torch.Tensor:
    """An additive mask of up to 4 dims as [B or 1, heads or 1, Lq or 1, Lk] (leading dims of size 1 added)."""
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def padded_bounds(batch: int, q_len: int, k_len: int, extent: torch.Tensor) -> torch.Tensor:
    """The kernels' int32 bounds [4, B] of a padded batch: sequence start 0, Lq and Lk rows, and ``extent``
    key rows to visit."""
    int32 = dict(device=extent.device, dtype=torch.int32)
    return torch.stack([torch.zeros(batch, **int32), torch.full((batch,), q_len, **int32),
                        torch.full((batch,), k_len, **int32), extent])


def key_bias_and_extent(key_padding_mask: Optional[torch.Tensor], batch: int, k_len: int, device):
    """(fp32 key bias [B, Lk] or a single 0, int32 count of key rows to visit [B]) for a per-key mask."""
    if key_padding_mask is None:
        return torch.zeros(1, device=device), torch.full((batch,), k_len, device=device, dtype=torch.int32)
    if key_padding_mask.dtype == torch.bool:
        allowed = key_padding_mask
        bias = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))
    else:
        additive = _four_dims(key_padding_mask)[:, 0, 0, :].expand(batch, k_len).float()
        allowed = additive_mask_allows(additive, key_padding_mask.dtype)
        bias = torch.where(allowed, additive, torch.full_like(additive, float("-inf")))
    positions = torch.arange(1, k_len + 1, device=device, dtype=torch.int32)
    extent = torch.where(allowed, positions, torch.zeros_like(positions)).amax(dim=1).to(torch.int32)
    return bias.contiguous(), extent


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
             options: AttentionOptions) -> Optional[str]:
    """Why the kernels cannot take this call of ``attention`` (``ops`` then runs another path), or None."""
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        if not key_only(_four_dims(key_padding_mask)):
            return "the mask varies over heads or queries"
    if q.shape[-1] > kernels.HEAD_DIM_BLOCKS[-1]:
        return f"head_dim {q.shape[-1]} > {kernels.HEAD_DIM_BLOCKS[-1]}"
    if q.dtype == torch.float32 and q.device.type == "cuda":
        # Exact fp32 products have no tensor-core path and their tiles spill; TF32 would miss fp32 parity.
        return "fp32 on CUDA (the kernels run fp16/bf16 there; use autocast or half-precision activations)"
    return None


def supports_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                    options: AttentionOptions) -> Optional[str]:
    """Why the kernels cannot take this call of ``attention_varlen`` (no mask: only head_dim and dtype), or None."""
    return supports(q, k, v, None, options)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _padded_forward(q, k, v, key_bias, extent, scale: float, dropout_p: float, seed: int):
    batch, _, q_len, _ = q.shape
    k_len = k.shape[2]
    bounds = padded_bounds(batch, q_len, k_len, extent)
    out, lse = attention_forward(
        _unit_stride(q), _unit_stride(k), _unit_stride(v), key_bias, bounds, q_len, k_len, scale, float(dropout_p), seed
    )
    return out.transpose(1, 2), lse


def attention(q, k, v, key_padding_mask=None, options: AttentionOptions = AttentionOptions(), *,
              return_lse: bool = False):
    """Padded entry (arguments checked by electra_fast.ops.attention, ``supports`` true): [B, heads, Lq, D] view
    of a contiguous [B, Lq, heads, D] output; with ``return_lse`` also the natural-log LSE [B, heads, Lq] (fp32,
    -inf for rows without keys, no gradient)."""
    batch, heads, q_len, head_dim = q.shape
    scale = head_dim**-0.5 if options.scale is None else float(options.scale)
    masks = key_bias_and_extent(key_padding_mask, batch, k.shape[2], q.device)
    out, lse = _padded_forward(q, k, v, *masks, scale, options.dropout_p, options.seed)
    return (out, lse) if return_lse else out


def attention_varlen(q, k, v, cu_seqlens, max_seqlen: int, options: AttentionOptions = AttentionOptions()
                     ) -> torch.Tensor:
    """Packed entry (arguments checked by electra_fast.ops.attention_varlen, ``supports_varlen`` true): q, k, v
    [total, heads, D], returns [total, heads, D]."""
    scale = q.shape[-1]**-0.5 if options.scale is None else float(options.scale)
    starts = cu_seqlens[:-1].to(torch.int32)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(torch.int32)
    bounds = torch.stack([starts, lengths, lengths, lengths])
    no_mask = torch.zeros(1, device=q.device)
    out, _ = attention_forward(
        _unit_stride(q), _unit_stride(k), _unit_stride(v), no_mask, bounds, max_seqlen, max_seqlen, scale,
        float(options.dropout_p), options.seed,
    )
    return out
