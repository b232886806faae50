"""The numbers the kernels and the PyTorch side must agree on, written once.

``kernels/`` imports nothing from ``electra_fast`` (docs/design.md §2); ``electra_fast.rng``, ``contracts`` and
``backend`` read these instead, so a Philox stream, an activation code or a count's position cannot differ
between a kernel, the CPU path and the reference. Plain Python: importing this module does not import Triton.
"""

from __future__ import annotations

import enum
import os


class Stream(enum.IntEnum):
    """Independent random streams (the third Philox counter word, docs/design.md §4)."""

    MASK_KEYS = 1  # masking: one priority key per (row, col); the k smallest are chosen
    MASK_ACTIONS = 2  # masking: [MASK] / keep / random-token decision per chosen position
    RANDOM_TOKENS = 3  # masking: the replacement id when the action is "random token"
    GUMBEL = 4  # generator sampling: noise per (slot row, vocab id)
    ATTENTION_DROPOUT = 5  # attention: keep/drop per (batch, head, query, key)


# The discriminator head's activation by its transformers name -> the function computed.
RTD_ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
ACTIVATION_FUNCTIONS = ("gelu_erf", "gelu_tanh", "relu")  # a kernel's constexpr code is the index here


def activation_code(name: str) -> int:
    """A kernel's constexpr code for the activation called ``name`` in transformers."""
    if name not in RTD_ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(RTD_ACTIVATIONS)}, got {name!r}")
    return ACTIVATION_FUNCTIONS.index(RTD_ACTIVATIONS[name])


# The RTD kernel's metric counts, in the order of the columns of its count partials.
RTD_COUNT_NAMES = ("correct", "predicted_replaced", "true_positive", "replaced", "valid")


def interpreter_enabled() -> bool:
    """Whether TRITON_INTERPRET is set: @triton.jit kernels then run in the interpreter (on CPU tensors). Triton
    reads it when it is imported, so it is fixed for the process's life."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
