"""``electra_fast::mask_tokens``: the fused masking kernel as a torch.library custom op.

The op is opaque to torch.compile (``register_fake`` gives its static output shapes), so a compiled training
step keeps one launch for the whole masking step. There is no autograd: every output is integer or constant.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .. import reference
from ..kernels import masking as kernel
from ..reference import MaskedTokens

KERNEL_MASK_DTYPES = (torch.bool, torch.int32, torch.int64)


def kernel_supports(seq_len: int, special_token_ids: Sequence[int], mask_token_id: int) -> bool:
    """Whether the kernel handles this call; otherwise ``ops.mask_tokens`` runs the reference."""
    n_specials = len(set(int(s) for s in special_token_ids) | {int(mask_token_id)})
    return seq_len <= kernel.MAX_SEQ_LEN and n_specials <= kernel.SPECIAL_SLOTS


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
    return kernel.mask_tokens(
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
) -> MaskedTokens:
    """``reference.mask_tokens`` in one kernel launch, bit for bit (arguments validated by ``ops.mask_tokens``)."""
    seq_len = input_ids.shape[1]
    if max_predictions is None:
        max_predictions = reference.default_max_predictions(seq_len, mask_prob, mode)
    if attention_mask is not None and attention_mask.dtype not in KERNEL_MASK_DTYPES:
        attention_mask = attention_mask != 0
    special_ids = sorted(set(int(s) for s in special_token_ids) | {int(mask_token_id)})
    t_mask, t_random = reference.action_thresholds(mask_token_prob, random_token_prob)
    outputs = mask_tokens_op(
        input_ids, attention_mask, seed, int(mask_token_id), special_ids, vocab_size, float(mask_prob),
        int(max_predictions), t_mask, t_random, random_token_prob > 0, mode == "bernoulli",
    )
    return MaskedTokens(*outputs)
