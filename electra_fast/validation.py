"""Argument checks shared by the public ops: each error names the argument and what was expected."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

INTEGER_DTYPES = (torch.int32, torch.int64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def tensor(name: str, value, *, dims: Optional[int] = None, dtypes=None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(value.shape)}")
    if dtypes is not None and value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {value.dtype}")
    return value


def non_empty(name: str, value: torch.Tensor) -> None:
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")


def same_shape(name: str, value: torch.Tensor, expected: Sequence[int], what: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {tuple(value.shape)}")


def same_device(name: str, value: torch.Tensor, reference: torch.Tensor, reference_name: str) -> None:
    if value.device != reference.device:
        raise ValueError(f"{name} is on {value.device} but {reference_name} is on {reference.device}; "
                         "put them on one device")


def probability(name: str, value: float, *, low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {interval}, got {value}")
    return float(value)


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def optional_positive_number(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")


def ids_in_vocab(name: str, ids: torch.Tensor, vocab_size: int, where: Optional[torch.Tensor] = None) -> None:
    """Ids outside [0, vocab_size) are an error (this synchronises with the device). Skipped while
    torch.compile traces: reading the values would split the graph."""
    if torch.compiler.is_compiling():
        return
    checked = ids if where is None else ids[where]
    if checked.numel() and (int(checked.min()) < 0 or int(checked.max()) >= vocab_size):
        raise ValueError(
            f"{name} has ids outside [0, {vocab_size}): min {int(checked.min())}, max {int(checked.max())}"
        )
