"""What the ops return, shared by the reference, the kernels' wrappers, the CPU path and the model."""

from __future__ import annotations

from typing import NamedTuple

import torch


class MaskedTokens(NamedTuple):
    """What ``mask_tokens`` returns. ``P`` is ``max_predictions``; slots past a row's count are padding."""

    input_ids: torch.Tensor  # [B, L] generator input: chosen positions corrupted ([MASK] / kept / random id)
    positions: torch.Tensor  # [B, P] int64, chosen positions in ascending order; 0 in padding slots
    targets: torch.Tensor  # [B, P] int64, original ids at the positions; 0 in padding slots
    weights: torch.Tensor  # [B, P] float32, 1 for a real slot, 0 for a padding slot
    is_masked: torch.Tensor  # [B, L] bool, True where a position was chosen


class RTDOutput(NamedTuple):
    """What ``rtd_loss`` returns; metrics are fp32 scalars over the valid (non-padding) tokens."""

    loss: torch.Tensor  # BCE-with-logits averaged over valid tokens (0 when there is none)
    logits: torch.Tensor  # [...] one logit per token
    labels: torch.Tensor  # [...] bool, True where the token was replaced (always False on padding)
    accuracy: torch.Tensor  # fraction of valid tokens with (logit > 0) == label
    precision: torch.Tensor  # true positives / predicted replaced (0 when nothing is predicted replaced)
    recall: torch.Tensor  # true positives / replaced (0 when nothing was replaced)
    replaced_fraction: torch.Tensor  # replaced / valid
