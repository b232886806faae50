"""Each op's contract, written once: the names it accepts and how its arguments are normalised.

``ops`` validates a public call and normalises it here; the reference (``reference``), the kernels' wrappers
(``fused/``) and the CPU path (``cpu/``) then read the normalised values instead of redoing the work, and the
Triton kernels and this module take their shared numbers (activation codes, ...) from ``kernels/constants.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .kernels.constants import ACTIVATION_FUNCTIONS, RTD_ACTIVATIONS, activation_code  # noqa: F401 (the contract's)

# ------------------------------------------------------------------------------------------------ masking

MASKING_MODES = ("exact", "bernoulli")


def special_id_set(special_token_ids: Sequence[int], mask_token_id: int) -> tuple:
    """The ids never chosen for masking: the special tokens and [MASK], sorted, each once."""
    return tuple(sorted({int(s) for s in special_token_ids} | {int(mask_token_id)}))


def default_max_predictions(seq_len: int, mask_prob: float, mode: str = "exact") -> int:
    """The official recipe's ``P = int((mask_prob + 0.005) * seq_len)`` (19 at 128, 79 at 512); at least 1.

    In Bernoulli mode the number chosen per row is random, so by default every position may be chosen.
    """
    if mode == "bernoulli":
        return seq_len
    return max(1, int((mask_prob + 0.005) * seq_len))


def action_thresholds(mask_token_prob: float, random_token_prob: float) -> tuple:
    """float32 thresholds on the action uniform u: u < t_mask -> [MASK], t_mask <= u < t_random -> random id."""
    t_mask = float(torch.tensor(mask_token_prob, dtype=torch.float32))
    t_random = float(torch.tensor(mask_token_prob + random_token_prob, dtype=torch.float32))
    return t_mask, t_random


@dataclass(frozen=True)
class MaskingOptions:
    """The non-tensor arguments of ``mask_tokens`` for one sequence length, resolved and normalised."""

    mask_token_id: int
    special_ids: tuple  # special_id_set(...): includes [MASK]
    mask_prob: float
    max_predictions: int  # P, resolved
    mask_token_prob: float
    random_token_prob: float
    vocab_size: Optional[int]
    bernoulli: bool
    seed: int

    @classmethod
    def resolve(cls, seq_len: int, *, mask_token_id: int, special_token_ids: Sequence[int], mask_prob: float,
                max_predictions: Optional[int], mask_token_prob: float, random_token_prob: float,
                vocab_size: Optional[int], mode: str, seed: int) -> "MaskingOptions":
        if max_predictions is None:
            max_predictions = default_max_predictions(seq_len, mask_prob, mode)
        return cls(int(mask_token_id), special_id_set(special_token_ids, mask_token_id), float(mask_prob),
                   int(max_predictions), float(mask_token_prob), float(random_token_prob), vocab_size,
                   mode == "bernoulli", int(seed))

    @property
    def mode(self) -> str:
        return MASKING_MODES[int(self.bernoulli)]

    @property
    def thresholds(self) -> tuple:
        return action_thresholds(self.mask_token_prob, self.random_token_prob)

    def as_keywords(self) -> dict:
        """The keyword arguments of ``reference.mask_tokens`` that mean the same."""
        return dict(mask_token_id=self.mask_token_id, special_token_ids=self.special_ids, mask_prob=self.mask_prob,
                    max_predictions=self.max_predictions, mask_token_prob=self.mask_token_prob,
                    random_token_prob=self.random_token_prob, vocab_size=self.vocab_size, mode=self.mode,
                    seed=self.seed)


# ------------------------------------------------------------------------------------------ generator head


GENERATOR_HEAD_STRATEGIES = ("auto", "fused", "chunked")  # the Triton path's designs (docs/design.md §5.5)


def generator_head_slots(hidden: torch.Tensor, targets: torch.Tensor, weights: Optional[torch.Tensor]) -> tuple:
    """(targets as contiguous int64, weights as contiguous fp32, all 1 when None): the slot tensors as the
    generator head's implementations read them."""
    if weights is None:
        weights = torch.ones(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    return targets.to(torch.int64).contiguous(), weights.to(torch.float32).contiguous()


def slot_row_weights(weights: torch.Tensor) -> torch.Tensor:
    """w / sum(w) in fp32, all zeros when the weights sum to 0 (the loss is then 0): each slot's share of the
    weighted-mean loss, and the scale of its logits' gradient."""
    weights = weights.float()
    total = weights.sum()
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def weighted_slot_loss(lse: torch.Tensor, target_logit: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """sum over slots of (lse - target logit) * w / sum(w); padding slots add exactly 0, even if their logits
    were not finite."""
    return torch.where(row_weights != 0, (lse - target_logit) * row_weights, torch.zeros_like(lse)).sum()


# ----------------------------------------------------------------------------------------------- RTD head

# RTD_ACTIVATIONS (transformers name -> function) and activation_code are kernels/constants.py's, imported above.


# ---------------------------------------------------------------------------------------------- attention


def additive_mask_allows(additive: torch.Tensor, mask_dtype: torch.dtype) -> torch.Tensor:
    """Which keys an additive float mask lets through: entries at or below half of the mask dtype's (or
    fp32's) minimum, and -inf, mask the key out, as transformers builds masks with ``finfo(dtype).min``."""
    additive = additive.float()
    return (additive > torch.finfo(torch.float32).min / 2) & (additive > torch.finfo(mask_dtype).min / 2)


def key_only(mask: torch.Tensor) -> bool:
    """Whether a 4-D mask [B or 1, heads or 1, Lq or 1, Lk] is the same for every head and query (a size-1 or
    broadcast dimension), so that it is a per-key mask [B, Lk]."""
    return all(mask.shape[d] == 1 or mask.stride(d) == 0 for d in (1, 2))
