"""Counter-based Philox in PyTorch, bit-identical to Triton's ``tl.philox`` / ``tl.randint`` / ``tl.rand``.

Every random draw in electra-fast is named by ``(seed, stream, index)`` (docs/design.md §4) and computed as one
Philox-4x32 block with 10 rounds:

    key     = (seed & 0xffffffff, seed >> 32)
    counter = (index & 0xffffffff, index >> 32, stream, 0)
    draw    = first output word (uint32)

In a Triton kernel that is ``tl.philox(seed, idx_lo, idx_hi, stream, zero)`` with uint32 counters
(``kernels/philox.py`` wraps it). Because the element index alone names the draw, kernel tiling never changes
which number an element gets, and this module reproduces every draw on any device from the same three
numbers. With ``stream == 0`` it equals Triton's ``tl.randint(seed, offset)`` for int32 offsets, and for
int64 offsets in the Triton releases that split the offset into (lo, hi) counters (3.9).

The arithmetic below keeps uint32 values in int64 tensors and splits each 32x32-bit product into 16-bit
halves, so every intermediate fits in a signed 64-bit integer on every device.
"""

from __future__ import annotations

import torch

from .kernels.constants import Stream

__all__ = [
    "Stream",
    "philox4x32",
    "randint",
    "rand",
    "draw",
    "draw_uniform",
    "uint32_to_uniform",
    "check_seed",
]

N_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
# Same constant as triton.language.random.uint_to_uniform_float: the largest scale with MAX_INT * scale < 1.
_UNIFORM_SCALE = 4.6566127342e-10


def check_seed(seed) -> int:
    """Return ``seed`` as a Python int in [0, 2**63), accepting an int or a 0-d integer tensor."""
    if isinstance(seed, torch.Tensor):
        if seed.dim() != 0 or seed.dtype.is_floating_point or seed.dtype == torch.bool:
            raise TypeError("seed must be an int or a 0-d integer tensor, got a tensor "
                            f"{tuple(seed.shape)} {seed.dtype}")
        seed = int(seed.item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a 0-d integer tensor, got {type(seed).__name__}")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def _mul_hi_lo(constant: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``constant * x`` for uint32 values held in int64 tensors."""
    low_half = constant * (x & 0xFFFF)  # < 2**48
    high_half = constant * (x >> 16)  # < 2**48
    lo = (low_half + ((high_half & 0xFFFF) << 16)) & _MASK32
    hi = (high_half + (low_half >> 16)) >> 16
    return hi, lo


def _philox_rounds(seed: int, c0, c1, c2, c3, n_rounds: int):
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(n_rounds):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


# Counters are processed in chunks that stay in cache: about 7x faster on large draws (Gumbel noise over
# M x V, attention dropout over B x H x L x L) than whole-tensor passes through main memory.
_CHUNK = 1 << 16


def philox4x32(seed: int, c0: torch.Tensor, c1=0, c2=0, c3=0, n_rounds: int = N_ROUNDS):
    """Philox-4x32 of counters ``(c0, c1, c2, c3)`` under key ``seed``; returns four int64 tensors in [0, 2**32).

    Equals ``tl.philox(seed, c0, c1, c2, c3, n_rounds)`` with uint32 counters.
    """
    seed = check_seed(seed)
    c0 = torch.as_tensor(c0).to(torch.int64) & _MASK32
    device = c0.device
    counters = [c0] + [torch.as_tensor(c, device=device).to(torch.int64).expand_as(c0) & _MASK32 for c in (c1, c2, c3)]
    if c0.numel() <= _CHUNK:
        return _philox_rounds(seed, *counters, n_rounds)
    flat = [c.reshape(-1) for c in counters]
    outputs = [torch.empty_like(flat[0]) for _ in range(4)]
    for start in range(0, flat[0].numel(), _CHUNK):
        chunk = _philox_rounds(seed, *(c[start:start + _CHUNK] for c in flat), n_rounds)
        for out, value in zip(outputs, chunk):
            out[start:start + _CHUNK] = value
    return tuple(out.view(c0.shape) for out in outputs)


def randint(seed: int, offset: torch.Tensor, n_rounds: int = N_ROUNDS) -> torch.Tensor:
    """``tl.randint(seed, offset)`` as int64 values in [0, 2**32) (offsets split into lo/hi counter words)."""
    offset = torch.as_tensor(offset).to(torch.int64)
    return philox4x32(seed, offset & _MASK32, (offset >> 32) & _MASK32, 0, 0, n_rounds)[0]


def uint32_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for uint32 draws: float32 in [0, 1)."""
    signed = torch.where(x >= 2**31, x - 2**32, x)  # reinterpret as int32
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(_UNIFORM_SCALE, dtype=torch.float32)


def rand(seed: int, offset: torch.Tensor, n_rounds: int = N_ROUNDS) -> torch.Tensor:
    """``tl.rand(seed, offset)``: float32 uniforms in [0, 1)."""
    return uint32_to_uniform(randint(seed, offset, n_rounds))


def draw(seed: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """The project's draw ``(seed, stream, index)``: uint32 values (as int64) for int64 element indices."""
    index = torch.as_tensor(index).to(torch.int64)
    return philox4x32(seed, index & _MASK32, (index >> 32) & _MASK32, int(stream), 0)[0]


def draw_uniform(seed: int, stream: int, index: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in [0, 1) for ``draw(seed, stream, index)``."""
    return uint32_to_uniform(draw(seed, stream, index))
