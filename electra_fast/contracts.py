"""Each op's contract, written once: the names it accepts and how its arguments are normalised.

``ops`` validates a public call and normalises its non-tensor arguments into the op's options object here
(``MaskingOptions``, ``GeneratorHeadOptions``, ``RTDOptions``, ``AttentionOptions``); the kernels' wrappers
(``fused/``) and the CPU path (``cpu/``) take ``(tensors..., options)``, and ``options.as_keywords()`` gives the
reference's keyword arguments, so no implementation redoes the work or repeats the keyword list. The
Triton kernels and this module take their shared numbers (activation codes, ...) from ``kernels/constants.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import validation as check
from .kernels.constants import ACTIVATION_FUNCTIONS, RTD_ACTIVATIONS, activation_code  # noqa: F401 (the contract's)
from .rng import check_seed

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
        """The options of a call on sequences of ``seq_len`` tokens, checked (errors name the argument)."""
        check.positive_int("mask_token_id", mask_token_id, minimum=0)
        special_token_ids = tuple(special_token_ids)
        for special in special_token_ids:
            check.positive_int("special_token_ids[i]", special, minimum=0)
        check.probability("mask_prob", mask_prob, low_open=True)
        if max_predictions is not None:
            check.positive_int("max_predictions", max_predictions)
        check.probability("mask_token_prob", mask_token_prob)
        check.probability("random_token_prob", random_token_prob)
        if mask_token_prob + random_token_prob > 1 + 1e-9:
            raise ValueError(
                f"mask_token_prob + random_token_prob must be <= 1, got {mask_token_prob} + {random_token_prob}"
            )
        if mode not in MASKING_MODES:
            raise ValueError(f"mode must be one of {MASKING_MODES}, got {mode!r}")
        if vocab_size is not None:
            check.positive_int("vocab_size", vocab_size)
            if mask_token_id >= vocab_size:
                raise ValueError(f"mask_token_id must be < vocab_size ({vocab_size}), got {mask_token_id}")
        if random_token_prob > 0 and vocab_size is None:
            raise ValueError("vocab_size is required when random_token_prob > 0 (random ids are drawn from it)")
        special_ids = special_id_set(special_token_ids, mask_token_id)
        if random_token_prob > 0 and len([s for s in special_ids if s < vocab_size]) >= vocab_size:
            raise ValueError(f"random_token_prob > 0 needs a non-special id below vocab_size ({vocab_size}); "
                             "all are special")
        if max_predictions is None:
            max_predictions = default_max_predictions(seq_len, mask_prob, mode)
        return cls(int(mask_token_id), special_ids, float(mask_prob), int(max_predictions), float(mask_token_prob),
                   float(random_token_prob), vocab_size, mode == "bernoulli", check_seed(seed))

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


@dataclass(frozen=True)
class GeneratorHeadOptions:
    """The non-tensor arguments of ``generator_loss_and_sample``, checked and normalised when built. ``strategy``
    and ``chunk_rows`` choose the Triton path's design (docs/design.md §5.5); the CPU path and the reference have
    one each and ignore them."""

    temperature: float = 1.0
    disallow_correct: bool = False
    seed: int = 0
    strategy: str = "auto"
    chunk_rows: Optional[int] = None

    def __post_init__(self):
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        if self.strategy not in GENERATOR_HEAD_STRATEGIES:
            raise ValueError(f"strategy must be one of {GENERATOR_HEAD_STRATEGIES}, got {self.strategy!r}")
        if self.chunk_rows is not None:
            check.positive_int("chunk_rows", self.chunk_rows)
        object.__setattr__(self, "temperature", float(temperature))
        object.__setattr__(self, "disallow_correct", bool(self.disallow_correct))
        object.__setattr__(self, "seed", check_seed(self.seed))

    def as_keywords(self) -> dict:
        """The keyword arguments of ``reference.generator_loss_and_sample`` that mean the same."""
        return dict(temperature=self.temperature, disallow_correct=self.disallow_correct, seed=self.seed)


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


@dataclass(frozen=True)
class RTDOptions:
    """The non-tensor argument of ``rtd_loss``: the discriminator head's activation by its transformers name."""

    activation: str = "gelu"

    def __post_init__(self):
        activation_code(self.activation)  # raises for a name it does not know

    def as_keywords(self) -> dict:
        return dict(activation=self.activation)


# ---------------------------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class AttentionOptions:
    """The non-tensor arguments of ``attention`` and ``attention_varlen`` (``scale`` None: head_dim ** -0.5),
    checked and normalised when built."""

    dropout_p: float = 0.0
    scale: Optional[float] = None
    seed: int = 0

    def __post_init__(self):
        check.probability("dropout_p", self.dropout_p, high_open=True)
        check.optional_positive_number("scale", self.scale)
        object.__setattr__(self, "seed", check_seed(self.seed))

    def as_keywords(self) -> dict:
        return dict(dropout_p=self.dropout_p, scale=self.scale, seed=self.seed)


def additive_mask_allows(additive: torch.Tensor, mask_dtype: torch.dtype) -> torch.Tensor:
    """Which keys an additive float mask lets through: entries at or below half of the mask dtype's (or
    fp32's) minimum, and -inf, mask the key out, as transformers builds masks with ``finfo(dtype).min``."""
    additive = additive.float()
    return (additive > torch.finfo(torch.float32).min / 2) & (additive > torch.finfo(mask_dtype).min / 2)


def key_only(mask: torch.Tensor) -> bool:
    """Whether a 4-D mask [B or 1, heads or 1, Lq or 1, Lk] is the same for every head and query (a size-1 or
    broadcast dimension), so that it is a per-key mask [B, Lk]."""
    return all(mask.shape[d] == 1 or mask.stride(d) == 0 for d in (1, 2))
