"""Philox draws ``(seed, stream, index)`` as traceable tensor expressions: the bits of ``electra_fast.rng``,
written to be compiled into the loops that consume them.

``rng.philox4x32`` spells each 32x32-bit product out in 16-bit halves with a dozen tensor ops, one tensor pass
each. Here a round is one 64-bit multiply per word: the product of two uint32 values wraps in int64 but its
low 64 bits are exact, so ``(p >> 32) & 0xffffffff`` and ``p & 0xffffffff`` are its high and low words.
The compiled consumers (``generator_head``, ``attention``) build the indices from ``arange`` inside the
compiled function, so no index tensor is made. Keys travel as tensors (``key_tensor``): a new seed every
step must not mean a new compilation.
"""

from __future__ import annotations

import torch

from .. import rng

_MASK32 = 0xFFFFFFFF


def key_tensor(seed: int) -> torch.Tensor:
    """The Philox key of ``seed`` as an int64 tensor [2] (low word, high word) on the CPU."""
    seed = rng.check_seed(seed)
    return torch.tensor([seed & _MASK32, seed >> 32], dtype=torch.int64)


def philox_first_word(key: torch.Tensor, stream, index: torch.Tensor) -> torch.Tensor:
    """First output word of Philox-4x32-10 at counter ``(index lo, index hi, stream, 0)`` (int64 in [0, 2**32)).

    Traceable: meant to be inlined in a compiled function. ``rng.draw(seed, stream, index)`` bit for bit.
    """
    k0, k1 = key[0], key[1]
    c0 = index & _MASK32
    c1 = (index >> 32) & _MASK32
    c2 = torch.zeros_like(index) + stream
    c3 = torch.zeros_like(index)
    for round_index in range(rng.N_ROUNDS):
        product_b = c2 * rng._ROUND_B  # < 2**64: wraps in int64, low 64 bits exact
        product_a = c0 * rng._ROUND_A
        if round_index == rng.N_ROUNDS - 1:  # only the first word of the last round is used
            return ((product_b >> 32) & _MASK32) ^ c1 ^ k0
        c0, c1, c2, c3 = (
            ((product_b >> 32) & _MASK32) ^ c1 ^ k0,
            product_b & _MASK32,
            ((product_a >> 32) & _MASK32) ^ c3 ^ k1,
            product_a & _MASK32,
        )
        k0 = (k0 + rng._KEY_A) & _MASK32
        k1 = (k1 + rng._KEY_B) & _MASK32
    raise AssertionError("unreachable")


def uniform(draws: torch.Tensor) -> torch.Tensor:
    """``rng.uint32_to_uniform`` (Triton's ``uint_to_uniform_float``), traceable."""
    signed = torch.where(draws >= 2**31, draws - 2**32, draws)
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * rng._UNIFORM_SCALE
