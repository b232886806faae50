"""Philox draws inside kernels, named by (seed, stream, element index) exactly as ``electra_fast.rng.draw``."""

import torch
import triton
import triton.language as tl

from .registry import register_launches

# The bits of a float32 uniform in [0, 1): same scale as tl.rand (the largest with MAX_INT * scale < 1).
UNIFORM_SCALE = tl.constexpr(4.6566127342e-10)


@triton.jit
def draw_uint32(seed, stream: tl.constexpr, index):
    """uint32 draw for int64 element indices: tl.philox(seed, (index_lo, index_hi, stream, 0)), 10 rounds."""
    index = index.to(tl.int64)
    index_lo = (index & 0xFFFFFFFF).to(tl.uint32)
    index_hi = ((index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    zero = index_lo * 0
    result, _, _, _ = tl.philox(seed, index_lo, index_hi, zero + stream, zero)
    return result


@triton.jit
def uint32_to_uniform(x):
    """Float32 uniform in [0, 1) from a uint32 draw, bit-identical to tl.rand's conversion."""
    signed = x.to(tl.int32, bitcast=True)
    signed = tl.where(signed < 0, -signed - 1, signed)
    return signed.to(tl.float32) * UNIFORM_SCALE


@triton.jit
def draw_uniform(seed, stream: tl.constexpr, index):
    return uint32_to_uniform(draw_uint32(seed, stream, index))


@triton.jit
def philox_draws_kernel(index_ptr, draws_ptr, uniforms_ptr, seed, n, STREAM: tl.constexpr, BLOCK: tl.constexpr):
    """Test kernel: the draw and its uniform for each int64 index (ties kernels/philox.py to electra_fast.rng)."""
    tl.static_assert((BLOCK & (BLOCK - 1)) == 0, "BLOCK must be a power of two")
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    in_range = offsets < n
    index = tl.load(index_ptr + offsets, mask=in_range, other=0)
    draws = draw_uint32(seed, STREAM, index)
    tl.store(draws_ptr + offsets, draws.to(tl.int64), mask=in_range)
    tl.store(uniforms_ptr + offsets, uint32_to_uniform(draws), mask=in_range)


PHILOX_BLOCK = 256


def philox_draws(seed: int, stream: int, index):
    """Launch the test kernel over a 1-D int64 index tensor; returns (draws int64, uniforms float32)."""
    index = index.contiguous()
    draws = torch.empty_like(index, dtype=torch.int64)
    uniforms = torch.empty_like(index, dtype=torch.float32)
    n = index.numel()
    grid = (triton.cdiv(n, PHILOX_BLOCK),)
    philox_draws_kernel[grid](index, draws, uniforms, seed, n, STREAM=stream, BLOCK=PHILOX_BLOCK)
    return draws, uniforms


def _register_launch_configs():
    """The test kernel at one stream (the stream only changes a constant), over a million indices."""
    register_launches(lambda arch: philox_draws(0x2545F4914F6CDD1D, 4, torch.empty(1 << 20, dtype=torch.int64)))


_register_launch_configs()
