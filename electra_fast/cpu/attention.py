"""Attention on the CPU with the reference's semantics and dropout mask (``reference.attention``).

Without dropout it is PyTorch's ``scaled_dot_product_attention`` (a fused CPU kernel). With dropout the
probabilities are materialised as the reference does, in fp32, but the keep/drop decision of every (b, h, i, j)
is drawn inside one compiled loop (stream ATTENTION_DROPOUT at the element's flat index, as the reference
draws it) that also applies it; backward draws the same decisions again instead of saving them.
A query row of a sequence with no real key gets output 0 and zero gradients, as in the reference: such rows
attend to every key (finite softmax) and their output is zeroed.
Only boolean ``[B, Lk]`` key masks (or none) come here; ``ops.attention`` sends additive masks to the reference.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..contracts import AttentionOptions
from ..rng import Stream
from .compiler import CHUNK_ELEMENTS, compiled
from .draws import key_tensor, philox_first_word, uniform


@compiled
def _dropout_chunk(x, key, start, dropout_p, keep_scale):
    """``x * keep / (1 - p)`` for a flat chunk starting at element ``start``, with keep =
    uniform(draw(seed, ATTENTION_DROPOUT, flat index)) >= p."""
    index = torch.arange(x.numel(), dtype=torch.int64) + start
    keep = uniform(philox_first_word(key, int(Stream.ATTENTION_DROPOUT), index)) >= dropout_p
    return torch.where(keep, x, torch.zeros_like(x)) / keep_scale


def _apply_dropout(x, key, dropout_p, keep_scale):
    """Dropout of a [B, heads, Lq, Lk] tensor; the draw's index is the element's flat index."""
    flat = x.contiguous().view(-1)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        end = min(flat.numel(), start + CHUNK_ELEMENTS)
        out[start:end] = _dropout_chunk(flat[start:end], key, torch.tensor(start), dropout_p, keep_scale)
    return out.view(x.shape)


@torch.library.custom_op("electra_fast::cpu_attention_dropout", mutates_args=())
def attention_dropout(x: torch.Tensor, seed: int, dropout_p: float) -> torch.Tensor:
    """Dropout of attention probabilities [B, heads, Lq, Lk] (a custom op: opaque to an outer torch.compile)."""
    return _apply_dropout(x, key_tensor(seed), torch.tensor(dropout_p, dtype=torch.float32),
                          torch.tensor(1.0 - dropout_p, dtype=torch.float32))


@attention_dropout.register_fake
def _(x, seed, dropout_p):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _dropout_setup_context(ctx, inputs, output):
    ctx.seed, ctx.dropout_p = inputs[1], inputs[2]


def _dropout_backward(ctx, grad):
    # The same keep/drop decisions, drawn again rather than saved.
    return attention_dropout(grad, ctx.seed, ctx.dropout_p), None, None


attention_dropout.register_autograd(_dropout_backward, setup_context=_dropout_setup_context)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
             options: AttentionOptions) -> Optional[str]:
    """Why this path does not take the call (``ops`` then runs the reference, as fast for such masks), or None."""
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        return "an additive float mask"
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    options: AttentionOptions = AttentionOptions(),
) -> torch.Tensor:
    """``reference.attention`` for [B, heads, L, D] tensors and a [B, Lk] bool key mask (True = real key)."""
    dropout_p, seed = options.dropout_p, options.seed
    scale = q.shape[-1] ** -0.5 if options.scale is None else options.scale
    has_key = None
    attn_mask = None
    if key_padding_mask is not None:
        has_key = key_padding_mask.any(dim=1)
        attn_mask = (key_padding_mask | ~has_key[:, None])[:, None, None, :]
    if dropout_p == 0:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    else:
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        probs = attention_dropout(torch.softmax(scores, dim=-1), int(seed), float(dropout_p))
        out = (probs @ v.float()).to(q.dtype)
    if has_key is not None:
        out = torch.where(has_key[:, None, None, None], out, torch.zeros_like(out))
    return out
