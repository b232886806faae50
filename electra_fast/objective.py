"""``ElectraObjective``: every knob of the ELECTRA objective, written once (docs/design.md §1).

Each field carries its own description in its metadata (``setting``): help text, the default as the help shows
it, the values it takes (``choices``, or a ``valid`` test with its words ``wanted``), and whether
``electra-fast pretrain`` has a flag for it. ``PretrainConfig`` and the command line's objective flags are
derived from this table (``run_config``, ``cli``), so an option added here gets its flag, its check and its
help at once.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Optional, Sequence

from .contracts import GENERATOR_HEAD_STRATEGIES, MASKING_MODES

EMBEDDING_SHARING = ("tied", "gdes", "none")


def setting(default, help: str, *, shown: Optional[str] = None, choices: Optional[tuple] = None,
            valid=None, wanted: str = "", flag: bool = True, no_flag_because: str = ""):
    """A field of ``ElectraObjective`` with its description: ``help`` and ``shown`` (the default in the help's
    words, by default ``default`` itself; a preset's own value is added where one differs, as ``mask_prob``'s
    0.25 for large); ``choices`` or ``valid(value)`` with ``wanted`` (what valid values
    are, in words). A field without a flag (``flag=False``) says why in ``no_flag_because``."""
    if not flag and not no_flag_because:
        raise ValueError("a setting without a flag must say why")
    return dataclasses.field(default=default, metadata=dict(
        help=help, shown=str(default) if shown is None else shown, choices=choices, valid=valid, wanted=wanted,
        flag=flag, no_flag_because=no_flag_because))


@dataclass
class ElectraObjective:
    """Every knob of the ELECTRA objective (docs/design.md §1); defaults are the official recipe."""

    mask_token_id: Optional[int] = setting(
        None, "the id of [MASK]; required (ElectraPretrainer.from_preset and pretrain take it from the tokenizer)",
        flag=False, no_flag_because="the tokenizer's")
    special_token_ids: Sequence[int] = setting(
        (), "ids never chosen for masking ([CLS], [SEP], [PAD], ...)", flag=False,
        no_flag_because="the tokenizer's")
    mask_prob: float = setting(0.15, "fraction of tokens to corrupt",
                               valid=lambda value: 0 < value <= 1, wanted="in (0, 1]")
    max_predictions: Optional[int] = setting(None, "slots per sequence", shown="int((mask_prob + 0.005) * length)",
                                             valid=lambda value: value >= 1, wanted="at least 1")
    mask_token_prob: float = setting(0.85, "chosen tokens replaced by [MASK]",
                                     valid=lambda value: 0 <= value <= 1, wanted="in [0, 1]")
    random_token_prob: float = setting(0.0, "chosen tokens replaced by a random id",
                                       valid=lambda value: 0 <= value <= 1, wanted="in [0, 1]")
    mode: str = setting("exact", "how positions are chosen", choices=MASKING_MODES)
    temperature: float = setting(1.0, "generator sampling temperature", valid=lambda value: value > 0, wanted="> 0")
    disallow_correct: bool = setting(False, "never sample the original token", shown="off")
    gen_weight: float = setting(1.0, "weight of the MLM loss", valid=lambda value: value >= 0, wanted=">= 0")
    disc_weight: float = setting(50.0, "weight of the RTD loss", valid=lambda value: value >= 0, wanted=">= 0")
    embedding_sharing: str = setting(
        "tied", "generator/discriminator embeddings: tied (official), gdes (DeBERTa-v3) or none",
        choices=EMBEDDING_SHARING)
    # How, not what: the Triton path's generator-head design (docs/design.md §5.5).
    generator_head: str = setting(
        "auto", "the Triton path's generator-head design", choices=GENERATOR_HEAD_STRATEGIES, flag=False,
        no_flag_because="how the head is computed, not what: chosen by shape (benchmarks set it in code)")

    def __post_init__(self):
        if self.mask_token_id is None:
            raise ValueError("mask_token_id is required (the id of [MASK] in your tokenizer)")
        for field in dataclasses.fields(self):
            value, choices = getattr(self, field.name), field.metadata["choices"]
            if choices is not None and value not in choices:
                raise ValueError(f"{field.name} must be one of {choices}, got {value!r}")
        for name in ("gen_weight", "disc_weight"):  # the masking and the head check the others when they run
            if not bound_holds(name, getattr(self, name)):
                raise ValueError(f"{name} must be {field_named(name).metadata['wanted']}, got {getattr(self, name)}")
        self.special_token_ids = tuple(int(s) for s in self.special_token_ids)


def field_named(name: str) -> dataclasses.Field:
    return {field.name: field for field in dataclasses.fields(ElectraObjective)}[name]


def bound_holds(name: str, value) -> bool:
    """Whether ``value`` passes the field ``name``'s ``valid`` test (True when it has none)."""
    valid = field_named(name).metadata["valid"]
    return valid is None or valid(value)


def flag_fields() -> list:
    """The fields ``electra-fast pretrain`` has a flag for, in the table's order."""
    return [field for field in dataclasses.fields(ElectraObjective) if field.metadata["flag"]]


def value_type(field: dataclasses.Field) -> type:
    """The field's value type without Optional (int for ``Optional[int]``)."""
    hint = typing.get_type_hints(ElectraObjective)[field.name]
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    return arguments[0] if typing.get_origin(hint) is typing.Union else hint
