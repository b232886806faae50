"""Masking on the CPU: ``reference.mask_tokens`` as a custom op.

Its draws are one per token ([B, L], three streams), about a millisecond a batch, so the reference itself is
the CPU path. Wrapping it as a custom op keeps an outer ``torch.compile`` from tracing its Philox arithmetic
(inductor's C++ code generation fails on it) and its data-dependent sorting: the op runs as it is.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import reference
from ..contracts import MaskingOptions
from ..outputs import MaskedTokens


def supports(*call) -> Optional[str]:
    """None: the CPU path takes every call ``ops.mask_tokens`` accepts."""
    return None


@torch.library.custom_op("electra_fast::cpu_mask_tokens", mutates_args=())
def mask_tokens_op(
    input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], mask_token_id: int, special_token_ids: list[int],
    mask_prob: float, max_predictions: int, mask_token_prob: float, random_token_prob: float,
    vocab_size: Optional[int], mode: str, seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(reference.mask_tokens(
        input_ids, attention_mask, mask_token_id=mask_token_id, special_token_ids=special_token_ids,
        mask_prob=mask_prob, max_predictions=max_predictions, mask_token_prob=mask_token_prob,
        random_token_prob=random_token_prob, vocab_size=vocab_size, mode=mode, seed=seed,
    ))


@mask_tokens_op.register_fake
def _(input_ids, attention_mask, mask_token_id, special_token_ids, mask_prob, max_predictions, mask_token_prob,
      random_token_prob, vocab_size, mode, seed):
    batch = input_ids.shape[0]
    return (
        torch.empty_like(input_ids),
        input_ids.new_empty((batch, max_predictions), dtype=torch.int64),
        input_ids.new_empty((batch, max_predictions), dtype=torch.int64),
        input_ids.new_empty((batch, max_predictions), dtype=torch.float32),
        input_ids.new_empty(input_ids.shape, dtype=torch.bool),
    )


def mask_tokens(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                options: MaskingOptions) -> MaskedTokens:
    """``reference.mask_tokens``, opaque to torch.compile."""
    return MaskedTokens(*mask_tokens_op(
        input_ids, attention_mask, options.mask_token_id, list(options.special_ids), options.mask_prob,
        options.max_predictions, options.mask_token_prob, options.random_token_prob, options.vocab_size,
        options.mode, options.seed,
    ))
