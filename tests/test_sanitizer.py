"""The out-of-bounds checker and work counters (electra_fast/sanitizer.py) and every kernel launch under them.

Runs only in the Triton interpreter (the checker patches its hooks).
"""

import contextlib

import pytest
import torch
import triton
import triton.language as tl

from electra_fast.kernels import registry

pytestmark = pytest.mark.skipif(not registry.interpreted(), reason="the checker patches the Triton interpreter")

from electra_fast.sanitizer import sanitize  # noqa: E402
from electra_fast.workcount.runs import gpu_launch  # noqa: E402


@triton.jit
def _copy_with_unmasked_store(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    """Deliberately broken: the load is masked, the store is not, so the last block writes past ``dst``."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=offsets < n, other=0.0))


@triton.jit
def _copy(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst_ptr + offsets, tl.load(src_ptr + offsets, mask=offsets < n, other=0.0), mask=offsets < n)


@triton.jit
def _matmul_one_tile(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + m[:, None] * K + k[None, :])
    b = tl.load(b_ptr + k[:, None] * N + n[None, :])
    tl.store(c_ptr + m[:, None] * N + n[None, :], tl.dot(a, b))


def test_checker_catches_an_unmasked_tail():
    src, dst = torch.ones(100), torch.zeros(100)
    with sanitize() as launches:
        _copy_with_unmasked_store[(triton.cdiv(100, 32),)](src, dst, 100, BLOCK=32)
    (launch,) = launches
    assert launch.kernel == "_copy_with_unmasked_store"
    assert launch.out_of_bounds == 28  # 4 blocks of 32 lanes store 128 elements into 100
    assert all(op == "store" for op, _, _ in launch.out_of_bounds_examples)
    assert torch.equal(dst, src)  # the in-bounds lanes still ran


def test_checker_passes_a_masked_launch_and_counts_bytes():
    src, dst = torch.ones(100), torch.zeros(100)
    with sanitize() as launches:
        _copy[(triton.cdiv(100, 32),)](src, dst, 100, BLOCK=32)
    (launch,) = launches
    assert launch.out_of_bounds == 0
    assert (launch.bytes_loaded, launch.bytes_stored, launch.dot_flops) == (400, 400, 0)
    assert launch.grid == (4, 1, 1) and launch.constexprs == {"BLOCK": 32}


def test_a_view_may_address_its_whole_storage_but_not_past_it():
    """Ranges are whole storages: a view's kernel may legally reach the rest of its base tensor."""
    base = torch.zeros(64)
    with sanitize() as launches:
        _copy[(1,)](base[:16], base[32:48], 16, BLOCK=32)  # masked: in bounds
        _copy_with_unmasked_store[(1,)](base[:16], base[48:], 16, BLOCK=32)  # 16 lanes past the storage's end
    assert [launch.out_of_bounds for launch in launches] == [0, 16]


def test_dot_flops_are_2mnk():
    a, b, c = torch.randn(16, 32), torch.randn(32, 64), torch.empty(16, 64)
    with sanitize() as launches:
        _matmul_one_tile[(1,)](a, b, c, M=16, N=64, K=32)
    assert launches[0].dot_flops == 2 * 16 * 64 * 32
    torch.testing.assert_close(c, a @ b)
    with sanitize(skip_dot_math=True) as launches:
        _matmul_one_tile[(1,)](a, b, c, M=16, N=64, K=32)
    assert launches[0].dot_flops == 2 * 16 * 64 * 32 and not c.any()


# --- every kernel on edge shapes: odd lengths, length 1, all-padding rows, V off the tile, head dim 128, views --


def _masking_launches():
    from electra_fast.kernels import masking

    g = torch.Generator().manual_seed(0)
    cases = []
    for batch, seq_len, mask_dtype in ((3, 1, torch.int64), (4, 37, torch.int64), (3, 130, torch.bool)):
        ids = torch.randint(5, 500, (batch, seq_len), generator=g)
        valid = torch.ones(batch, seq_len, dtype=mask_dtype)
        valid[-1] = 0  # an all-padding row
        if seq_len > 1:
            valid[0, seq_len // 2:] = 0
        cases.append((ids, valid))
    cases.append((torch.randint(5, 500, (2, 19), generator=g, dtype=torch.int32), None))
    for ids, valid in cases:
        max_predictions = max(1, int(0.155 * ids.shape[1]))
        for block_rows in (None, 1):
            masking.forward(ids, valid, seed=7, mask_token_id=4, special_ids=[0, 1, 2, 3, 4], vocab_size=500,
                            mask_prob=0.15, max_predictions=max_predictions, t_mask=0.8, t_random=0.9,
                            use_random=True, bernoulli=block_rows == 1, block_rows=block_rows)


def _generator_head_launches(dtype):
    """Both designs' kernels: the fused forward (with and without gradients) and backward, and the chunked
    design's epilogue (with and without gradients, in place for fp32)."""
    from electra_fast.kernels import generator_head, generator_head_chunked

    g = torch.Generator().manual_seed(1)
    for rows, width, vocab in ((5, 40, 203), (1, 128, 64), (70, 24, 97), (3, 300, 1500)):
        hidden = torch.randn(rows, width + 8, generator=g).to(dtype)[:, 4:4 + width]  # strided rows
        weight = torch.randn(width, vocab, generator=g).to(dtype).t()  # a transposed view: strides (1, V)
        targets = torch.randint(0, vocab, (rows,), generator=g)
        bias = torch.randn(vocab, generator=g).to(dtype) if vocab != 64 else None
        for compute_grad in (False, True):
            lse, _, _, _ = generator_head.forward(hidden, weight, bias, targets, temperature=1.0,
                                                  disallow_correct=True, seed=5, compute_grad=compute_grad)
        row_scale = torch.rand(rows, generator=g)
        row_scale[::2] = 0.0  # padding slots
        generator_head.backward(hidden, weight, bias, targets, lse, row_scale)

        logits = torch.randn(rows, vocab + 3, generator=g)[:, :vocab]  # rows with a stride wider than V
        outputs = (torch.empty(rows), torch.empty(rows), torch.empty(rows, dtype=torch.int64))
        for grad_logits in (None, logits, torch.empty(rows, vocab, dtype=dtype)):
            generator_head_chunked.forward(logits, targets, row_scale, *outputs, grad_logits=grad_logits,
                                           temperature=1.0, disallow_correct=False, seed=5, row_offset=7)


def _rtd_launches(dtype):
    from electra_fast.kernels import rtd_loss

    g = torch.Generator().manual_seed(2)
    for rows, width, activation in ((1, 40, "gelu"), (37, 130, "gelu_new"), (50, 16, "relu")):
        projected = torch.randn(rows, width, generator=g).to(dtype)
        dense_bias, weight = torch.randn(width, generator=g), torch.randn(width, generator=g)
        original = torch.randint(0, 100, (rows,), generator=g)
        corrupted = torch.where(torch.rand(rows, generator=g) < 0.3, original + 1, original)
        valid = (torch.rand(rows, generator=g) < 0.7).to(torch.uint8)
        if rows == 50:
            valid.zero_()  # no valid token at all
        logits, labels, _, _ = rtd_loss.forward(projected, dense_bias, weight, torch.zeros(1), corrupted, original,
                                                valid, activation)
        rtd_loss.backward(projected, dense_bias, weight, logits, labels, valid, torch.randn(rows, generator=g),
                          torch.ones(1), activation)


def _attention_launches(dtype):
    from electra_fast.fused.attention import key_bias_and_extent
    from electra_fast.kernels import attention

    g = torch.Generator().manual_seed(3)
    int32 = dict(dtype=torch.int32)
    for batch, heads, seq_len, head_dim, dropout in ((2, 3, 37, 64, 0.0), (1, 2, 1, 128, 0.0), (2, 1, 70, 80, 0.1)):
        def heads_first():
            return torch.randn(batch, seq_len, heads, head_dim, generator=g).to(dtype).transpose(1, 2)

        q, k, v = heads_first(), heads_first(), heads_first()
        allowed = torch.ones(batch, seq_len, dtype=torch.bool)
        allowed[-1] = seq_len == 1  # the last sequence is all padding (when it has more than one token)
        allowed[0, seq_len // 2 + 1:] = False
        key_bias, extent = key_bias_and_extent(allowed, batch, seq_len, q.device)
        bounds = torch.stack([torch.zeros(batch, **int32), torch.full((batch,), seq_len, **int32),
                              torch.full((batch,), seq_len, **int32), extent])
        out, lse = attention.forward(q, k, v, key_bias, bounds, seq_len, seq_len, head_dim**-0.5, dropout, 9)
        dout = torch.randn(out.shape, generator=g).to(dtype)
        attention.backward(dout, q, k, v, out, lse, key_bias, bounds, seq_len, seq_len, head_dim**-0.5, dropout, 9)
    # packed variable-length batch with an empty sequence: [total, heads, D], no mask (a single 0 bias)
    lengths = torch.tensor([5, 0, 7], **int32)
    starts = torch.cumsum(lengths, 0, dtype=torch.int32) - lengths
    q, k, v = (torch.randn(12, 2, 32, generator=g).to(dtype) for _ in range(3))
    bounds = torch.stack([starts, lengths, lengths, lengths])
    out, lse = attention.forward(q, k, v, torch.zeros(1), bounds, 7, 7, 32**-0.5, 0.0, 0)
    attention.backward(torch.randn(out.shape, generator=g).to(dtype), q, k, v, out, lse, torch.zeros(1), bounds,
                       7, 7, 32**-0.5, 0.0, 0)


def _philox_launches():
    from electra_fast.kernels import philox

    philox.philox_draws(11, 4, torch.arange(300, dtype=torch.int64) * 7)


@pytest.mark.parametrize("geometry", ["interpreter_tiles", "device_tiles"])  # ("gpu" would mark it skipped)
def test_every_kernel_launch_stays_in_bounds(geometry):
    """Tiles as the interpreter runs them (fp32 here) and as a GPU runs them (fp16; dot values skipped)."""
    dtype = torch.float32 if geometry == "interpreter_tiles" else torch.float16
    context = gpu_launch() if geometry == "device_tiles" else contextlib.nullcontext()
    with context, sanitize(skip_dot_math=geometry == "device_tiles") as launches:
        _masking_launches()
        _generator_head_launches(dtype)
        _rtd_launches(dtype)
        _attention_launches(dtype)
        _philox_launches()
    kernels = {launch.kernel for launch in launches}
    assert kernels == {
        "mask_tokens_kernel", "generator_head_forward_kernel", "generator_head_backward_kernel",
        "chunk_epilogue_kernel", "rtd_loss_forward_kernel", "rtd_loss_backward_kernel",
        "attention_forward_kernel", "attention_backward_dq_kernel", "attention_backward_dkdv_kernel",
        "philox_draws_kernel",
    }
    assert all(launch.bytes_loaded and launch.bytes_stored for launch in launches)
    bad = [(launch.kernel, launch.constexprs, launch.out_of_bounds, launch.out_of_bounds_examples)
           for launch in launches if launch.out_of_bounds]
    assert not bad
