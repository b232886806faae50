"""electra_fast.rng is bit-identical to Triton's Philox for the same (seed, counters)."""

import pytest
import torch
import triton
import triton.language as tl

from electra_fast import rng
from electra_fast.kernels.philox import philox_draws

SEEDS = [0, 1, 12345, 2**31 - 1, 2**32 + 7, 2**62 + 3]


@triton.jit
def _tl_randint_kernel(offset_ptr, out_ptr, uniform_ptr, seed, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    in_range = i < n
    offset = tl.load(offset_ptr + i, mask=in_range, other=0)
    tl.store(out_ptr + i, tl.randint(seed, offset).to(tl.int64), mask=in_range)
    tl.store(uniform_ptr + i, tl.rand(seed, offset), mask=in_range)


@triton.jit
def _tl_philox_kernel(c_ptr, out_ptr, seed, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    in_range = i < n
    c0 = tl.load(c_ptr + i, mask=in_range, other=0).to(tl.uint32)
    c1 = tl.load(c_ptr + n + i, mask=in_range, other=0).to(tl.uint32)
    c2 = tl.load(c_ptr + 2 * n + i, mask=in_range, other=0).to(tl.uint32)
    c3 = tl.load(c_ptr + 3 * n + i, mask=in_range, other=0).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, c0, c1, c2, c3)
    tl.store(out_ptr + i, r0.to(tl.int64), mask=in_range)
    tl.store(out_ptr + n + i, r1.to(tl.int64), mask=in_range)
    tl.store(out_ptr + 2 * n + i, r2.to(tl.int64), mask=in_range)
    tl.store(out_ptr + 3 * n + i, r3.to(tl.int64), mask=in_range)


def _as_uint32(x: torch.Tensor) -> torch.Tensor:
    return x & 0xFFFFFFFF


@pytest.mark.parametrize("seed", SEEDS)
def test_randint_and_rand_match_triton_int32_offsets(seed, device):
    offsets = torch.tensor([0, 1, 2, 3, 100, 65535, 65536, 2**31 - 1, 987654], dtype=torch.int32, device=device)
    out = torch.empty(offsets.shape, dtype=torch.int64, device=device)
    uniforms = torch.empty(offsets.shape, dtype=torch.float32, device=device)
    _tl_randint_kernel[(1,)](offsets, out, uniforms, seed, offsets.numel(), BLOCK=16)
    assert torch.equal(_as_uint32(out).cpu(), rng.randint(seed, offsets.cpu()))
    assert torch.equal(uniforms.cpu(), rng.rand(seed, offsets.cpu()))


@pytest.mark.parametrize("seed", SEEDS)
def test_philox4x32_matches_tl_philox_all_counter_words(seed, device):
    gen = torch.Generator().manual_seed(seed % 1000)
    counters = torch.randint(0, 2**32, (4, 37), generator=gen, dtype=torch.int64)
    counters[:, 0] = 0
    counters[:, 1] = 2**32 - 1
    out = torch.empty_like(counters, device=device)
    _tl_philox_kernel[(1,)](counters.to(device), out, seed, 37, BLOCK=64)
    expected = rng.philox4x32(seed, *counters)
    for word in range(4):
        assert torch.equal(_as_uint32(out[word]).cpu(), expected[word]), f"output word {word}"


@pytest.mark.gpu_check
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("stream", [0, int(rng.Stream.GUMBEL)])
def test_kernel_draws_match_rng_for_int64_indices(seed, stream, device):
    index = torch.tensor([0, 1, 5, 2**31 - 1, 2**31, 2**31 + 5, 2**32, 2**40 + 3, 2**62 + 11], dtype=torch.int64)
    index = torch.cat([index, torch.arange(300, dtype=torch.int64) * 7919])  # more than one block
    if stream == int(rng.Stream.GUMBEL):
        draws, uniforms = philox_draws(seed, stream, index.to(device))
    else:
        from electra_fast.kernels.philox import philox_draws_kernel

        draws = torch.empty_like(index, device=device)
        uniforms = torch.empty(index.shape, dtype=torch.float32, device=device)
        grid = (triton.cdiv(index.numel(), 512),)
        philox_draws_kernel[grid](index.to(device), draws, uniforms, seed, index.numel(), STREAM=stream, BLOCK=512)
    expected = rng.draw(seed, stream, index)
    assert torch.equal(_as_uint32(draws).cpu(), expected)
    assert torch.equal(uniforms.cpu(), rng.uint32_to_uniform(expected))


def test_stream_zero_is_randint():
    index = torch.arange(1000, dtype=torch.int64) * 2**20
    assert torch.equal(rng.draw(7, 0, index), rng.randint(7, index))


def test_streams_and_seeds_are_independent():
    index = torch.arange(4096, dtype=torch.int64)
    by_stream = [rng.draw(3, s, index) for s in rng.Stream]
    for i in range(len(by_stream)):
        for j in range(i + 1, len(by_stream)):
            assert (by_stream[i] == by_stream[j]).float().mean() < 0.01
    assert (rng.draw(3, 1, index) == rng.draw(4, 1, index)).float().mean() < 0.01


def test_uniform_range_and_moments():
    u = rng.draw_uniform(11, rng.Stream.MASK_ACTIONS, torch.arange(200_000))
    assert u.dtype == torch.float32 and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005  # std of the mean is 0.00065
    assert abs(float(u.var()) - 1 / 12) < 0.002


def test_known_answer_seed_zero_offset_zero():
    """Philox-4x32-10 of counter 0 under key 0: the published test vector (Random123 kat_vectors)."""
    words = [int(w) for w in rng.philox4x32(0, torch.tensor([0]), 0, 0, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_seed_validation():
    with pytest.raises(ValueError, match="seed"):
        rng.check_seed(-1)
    with pytest.raises(ValueError, match="seed"):
        rng.check_seed(2**63)
    with pytest.raises(TypeError, match="seed"):
        rng.check_seed(1.5)
    assert rng.check_seed(torch.tensor(5)) == 5


def test_large_draws_are_chunked_without_changing_bits():
    index = torch.arange(3 * (1 << 16) + 123, dtype=torch.int64).view(3, -1) * 3 + 1
    whole = rng.draw(9, rng.Stream.GUMBEL, index)
    pieces = torch.cat([rng.draw(9, rng.Stream.GUMBEL, part) for part in index.reshape(-1).split(1000)])
    assert whole.shape == index.shape
    assert torch.equal(whole.reshape(-1), pieces)
