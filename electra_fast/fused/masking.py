"""``electra_fast::mask_tokens``: the fused masking kernel as a torch.library custom op.

The op is opaque to torch.compile (``register_fake`` gives its static output shapes), so a compiled training
step keeps one launch for the whole masking step. There is no autograd: every output is integer or constant.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..contracts import MaskingOptions
from ..kernels import masking as kernel
from ..outputs import MaskedTokens

KERNEL_MASK_DTYPES = (torch.bool, torch.int32, torch.int64)


def supports(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], options: MaskingOptions) -> Optional[str]:
    """Why the kernel cannot take this call (``ops.mask_tokens`` then runs another path), or None."""
    seq_len = input_ids.shape[1]
    if seq_len > kernel.MAX_SEQ_LEN:
        return f"sequence length {seq_len} > {kernel.MAX_SEQ_LEN}"
    if len(options.special_ids) > kernel.SPECIAL_SLOTS:
        return f"{len(options.special_ids)} special ids (with [MASK]) > {kernel.SPECIAL_SLOTS}"
    return None


@torch.library.custom_op("electra_fast::mask_tokens", mutates_args=())
def mask_tokens_op(
    input_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    seed: int,
    mask_token_id: int,
    special_ids: list[int],
    vocab_size: Optional[int],
    mask_prob: float,
    max_predictions: int,
    t_mask: float,
    t_random: float,
    use_random: bool,
    bernoulli: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return kernel.forward(
        input_ids, attention_mask, seed=seed, mask_token_id=mask_token_id, special_ids=special_ids,
        vocab_size=vocab_size, mask_prob=mask_prob, max_predictions=max_predictions, t_mask=t_mask,
        t_random=t_random, use_random=use_random, bernoulli=bernoulli,
    )


@mask_tokens_op.register_fake
def _(input_ids, attention_mask, seed, mask_token_id, special_ids, vocab_size, mask_prob, max_predictions,
      t_mask, t_random, use_random, bernoulli):
    batch, seq_len = input_ids.shape
    slots = (batch, max_predictions)
    return (
        torch.empty_like(input_ids),
        input_ids.new_empty(slots, dtype=torch.int64),
        input_ids.new_empty(slots, dtype=torch.int64),
        input_ids.new_empty(slots, dtype=torch.float32),
        input_ids.new_empty((batch, seq_len), dtype=torch.bool),
    )


def mask_tokens(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                options: MaskingOptions) -> MaskedTokens:
    """``reference.mask_tokens`` in one kernel launch, bit for bit (arguments validated by ``ops.mask_tokens``)."""
    if attention_mask is not None and attention_mask.dtype not in KERNEL_MASK_DTYPES:
        attention_mask = attention_mask != 0
    t_mask, t_random = options.thresholds
    outputs = mask_tokens_op(
        input_ids, attention_mask, options.seed, options.mask_token_id, list(options.special_ids),
        options.vocab_size, options.mask_prob, options.max_predictions, t_mask, t_random,
        options.random_token_prob > 0, options.bernoulli,
    )
    return MaskedTokens(*outputs)
