"""Flash attention kernel (kernels/attention.py via electra_fast.ops.attention) against the reference, an fp64
oracle and transformers' eager attention: outputs, LSE, gradients, padding, dropout bits, packed batches, the
HF attention interface and torch.compile."""

import math
import warnings

import pytest
import torch
from transformers import ElectraConfig, ElectraModel
from transformers.models.electra.modeling_electra import eager_attention_forward

import electra_fast as ef
from electra_fast import ops, reference, rng
from electra_fast.backend import use_backend, use_triton
from electra_fast.fused import attention as fused_attention
from electra_fast.hf_attention import layer_seed
from electra_fast.kernels import attention as attention_kernels

from numerics import assert_parity

# The dtype the kernels run the parity tests in: fp32 under the interpreter; fp16 on a GPU, where fp32 runs the
# reference by design. TOLERANCE scales the fp32 tolerances to fp16 rounding.
GPU = torch.cuda.is_available()
DTYPE, TOLERANCE = (torch.float16, 500.0) if GPU else (torch.float32, 1.0)


def projections(batch, heads, q_len, head_dim, dtype, device, k_len=None, seed=0):
    """q, k, v as transformers builds them: [B, heads, L, D] views of [B, L, heads, D] projections."""
    generator = torch.Generator().manual_seed(seed)
    k_len = q_len if k_len is None else k_len
    q = torch.randn(batch, q_len, heads, head_dim, generator=generator).transpose(1, 2)
    kv = torch.randn(batch, k_len, 2, heads, head_dim, generator=generator)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    return [t.to(device=device, dtype=dtype) if t.dtype != dtype or t.device != device else t for t in (q, k, v)]


def right_padding(lengths, k_len, device):
    return torch.arange(k_len, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]


def with_grad(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def oracle_fp64(q, k, v, key_mask, scale, keep=None, dropout_p=0.0):
    """Independent ground truth: softmax attention in fp64, rows without keys give 0; with ``keep`` (a bool
    [B, heads, Lq, Lk] mask), the kept probabilities scaled by 1 / (1 - dropout_p)."""
    scores = (q.double() @ k.double().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    if keep is not None:
        probs = probs * keep / (1.0 - dropout_p)
    return probs @ v.double()


def eager_same_dtype(q, k, v, key_mask, scale, keep=None, dropout_p=0.0):
    """PyTorch's own attention in q's dtype: transformers' eager attention, written out when there is dropout so
    that it drops by ``keep`` (in q's dtype, as nn.functional.dropout scales)."""
    additive = torch.zeros(key_mask.shape[0], 1, 1, key_mask.shape[1], device=q.device, dtype=q.dtype).masked_fill(
        ~key_mask[:, None, None, :], torch.finfo(q.dtype).min
    )
    if keep is None:
        return eager_attention_forward(torch.nn.Module().eval(), q, k, v, additive, scaling=scale)[0].transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(2, 3) * scale + additive, dim=-1, dtype=torch.float32).to(q.dtype)
    return (weights * keep.to(q.dtype) / (1.0 - dropout_p)) @ v


def dropout_keep(seed, shape, dropout_p, device):
    """The keep mask every implementation draws (docs/design.md §4.2), from the reference's Philox."""
    index = torch.arange(math.prod(shape), device=device).view(shape)
    return rng.draw_uniform(seed, rng.Stream.ATTENTION_DROPOUT, index) >= dropout_p


def run_with_grads(fn, q, k, v, grad_out):
    q, k, v = with_grad(q, k, v)
    out = fn(q, k, v)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), q.grad, k.grad, v.grad


def assert_close(actual, expected, tol, what):
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    tol = tol * TOLERANCE
    assert error <= tol * max(scale, 1.0), f"{what}: max error {error:.3g} > {tol:g} x {max(scale, 1.0):.3g}"


@pytest.mark.parametrize(
    "batch,heads,q_len,k_len,head_dim",
    [(2, 2, 1, 1, 16), (3, 2, 17, 17, 32), (2, 3, 100, 100, 64), (1, 2, 129, 129, 80), (2, 2, 17, 40, 64)],
)
def test_fp32_matches_reference_output_lse_and_gradients(device, batch, heads, q_len, k_len, head_dim):
    q, k, v = projections(batch, heads, q_len, head_dim, DTYPE, device, k_len=k_len)
    lengths = [k_len] + [max(1, (k_len * (i + 1)) // (batch + 1)) for i in range(batch - 1)]
    mask = right_padding(lengths, k_len, device)
    if k_len > 3:
        mask[0, 1] = False  # a hole in the middle of a sequence: an arbitrary key mask
    out, lse = fused_attention.attention(q, k, v, mask, return_lse=True)
    ref_out, ref_lse = reference.attention(q, k, v, mask, return_lse=True)
    assert out.shape == (batch, heads, q_len, head_dim)
    assert out.transpose(1, 2).is_contiguous()  # the layout transformers reshapes without a copy
    assert_close(out, ref_out, 1e-5, "output")
    assert_close(lse, ref_lse, 1e-5, "lse")

    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    kernel = run_with_grads(lambda *t: ef.attention(*t, mask), q, k, v, grad_out)
    with use_backend("reference"):
        expected = run_with_grads(lambda *t: ef.attention(*t, mask), q, k, v, grad_out)
    for name, a, e in zip(("out", "dq", "dk", "dv"), kernel, expected):
        assert torch.isfinite(a).all(), name
        assert_close(a, e, 2e-5, name)
    padded_keys = ~mask
    assert (kernel[2].transpose(1, 2)[padded_keys] == 0).all() and (kernel[3].transpose(1, 2)[padded_keys] == 0).all()


@pytest.mark.gpu_check
@pytest.mark.parametrize("dtype", [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)])
def test_16_bit_error_within_twice_pytorch_error(device, dtype):
    """FlashAttention's rule (docs/design.md §5): output and gradients' error vs fp64 <= 2 x the error of
    PyTorch's own attention in the same dtype."""
    batch, heads, length, head_dim = 3, 2, 77, 64
    q, k, v = projections(batch, heads, length, head_dim, dtype, device, seed=3)
    mask = right_padding([77, 50, 9], length, device)
    scale = head_dim**-0.5
    grad_out = torch.randn(batch, heads, length, head_dim, generator=torch.Generator().manual_seed(4)).to(device)
    truth = run_with_grads(lambda *t: oracle_fp64(*t, mask, scale), q.double(), k.double(), v.double(), grad_out)
    additive = torch.zeros(batch, 1, 1, length, device=device, dtype=dtype).masked_fill(
        ~mask[:, None, None, :], torch.finfo(dtype).min
    )
    module = torch.nn.Module().eval()
    pytorch_same_dtype = run_with_grads(
        lambda *t: eager_attention_forward(module, *t, additive, scaling=scale)[0].transpose(1, 2), q, k, v, grad_out
    )
    kernel = run_with_grads(lambda *t: ef.attention(*t, mask), q, k, v, grad_out)
    real_rows = mask[:, None, :, None]  # padded query rows are not compared (HF's 16-bit mask is finite there)
    for name, ours, theirs, exact in zip(("out", "dq", "dk", "dv"), kernel, pytorch_same_dtype, truth):
        rows = real_rows if name in ("out", "dq") else torch.ones_like(real_rows)
        assert_parity(ours, theirs, exact, f"{name} ({dtype})", slack=1e-4, where=rows, negative=True)


def test_matches_transformers_eager_attention_with_4d_additive_mask(device):
    batch, heads, length, head_dim = 2, 3, 45, 32
    q, k, v = projections(batch, heads, length, head_dim, DTYPE, device, seed=5)
    mask = right_padding([45, 20], length, device)
    additive = torch.zeros(batch, 1, 1, length, device=device).masked_fill(
        ~mask[:, None, None, :], torch.finfo(DTYPE).min
    ).to(DTYPE)
    module = torch.nn.Module().eval()
    grad_out = torch.randn(batch, length, heads, head_dim, generator=torch.Generator().manual_seed(6)).to(device)
    eager = run_with_grads(lambda *t: eager_attention_forward(module, *t, additive, scaling=0.3)[0], q, k, v, grad_out)
    ours = run_with_grads(lambda *t: ef.attention(*t, additive, scale=0.3).transpose(1, 2), q, k, v, grad_out)
    for name, a, e in zip(("out", "dq", "dk", "dv"), ours, eager):
        assert_close(a, e, 2e-5, name)


def test_fully_masked_rows_give_zero_output_minus_inf_lse_and_zero_gradients(device):
    q, k, v = projections(2, 2, 19, 16, DTYPE, device, seed=7)
    mask = right_padding([19, 0], 19, device)
    additive = torch.zeros(2, 1, 1, 19, device=device)
    additive[1] = float("-inf")
    for key_mask in (mask, additive):
        out, lse = fused_attention.attention(q, k, v, key_mask, return_lse=True)
        assert (out[1] == 0).all() and torch.isinf(lse[1]).all() and (lse[1] < 0).all()
        assert torch.isfinite(out).all() and torch.isfinite(lse[0]).all()
        _, dq, dk, dv = run_with_grads(lambda *t: ef.attention(*t, key_mask, dropout_p=0.2, seed=3), q, k, v,
                                       torch.ones(2, 2, 19, 16, device=device))
        for grad in (dq, dk, dv):
            assert torch.isfinite(grad).all() and (grad[1] == 0).all()


@pytest.mark.gpu_check
def test_dropout_keeps_exactly_the_philox_mask_of_the_reference(device):
    """With q = k = 0 every probability is 1/Lk, and with v = I the output reveals the keep mask itself."""
    batch, heads, length, p, seed = 3, 4, 16, 0.3, 1234
    q = torch.zeros(batch, heads, length, length, device=device, dtype=DTYPE)
    v = torch.eye(length, device=device, dtype=DTYPE).expand(batch, heads, length, length)
    out = ef.attention(q, q, v, dropout_p=p, seed=seed)
    kept = out * length * (1 - p)
    index = torch.arange(batch * heads * length * length, device=device).view(batch, heads, length, length)
    expected = rng.draw_uniform(seed, rng.Stream.ATTENTION_DROPOUT, index) >= p
    assert torch.allclose(kept.float(), expected.float(), atol=1e-5 * TOLERANCE)
    fraction = expected.float().mean().item()
    assert abs(fraction - (1 - p)) < 5 * math.sqrt(p * (1 - p) / expected.numel())
    assert attention_kernels.ATTENTION_DROPOUT_STREAM == rng.Stream.ATTENTION_DROPOUT


@pytest.mark.gpu_check
def test_dropout_output_and_gradients_match_reference_and_repeat_bitwise(device):
    q, k, v = projections(2, 2, 45, 32, DTYPE, device, seed=8)
    mask = right_padding([45, 33], 45, device)
    grad_out = torch.randn(2, 2, 45, 32, generator=torch.Generator().manual_seed(9)).to(device)
    def run(seed):
        return run_with_grads(lambda *t: ef.attention(*t, mask, dropout_p=0.25, seed=seed), q, k, v, grad_out)

    first, again, other = run(11), run(11), run(12)
    with use_backend("reference"):
        expected = run_with_grads(lambda *t: ef.attention(*t, mask, dropout_p=0.25, seed=11), q, k, v, grad_out)
    for name, a, b, e in zip(("out", "dq", "dk", "dv"), first, again, expected):
        assert torch.equal(a, b), f"{name} is not bitwise repeatable"
        assert_close(a, e, 2e-5, name)
    assert not torch.equal(first[0], other[0])


def test_packed_varlen_equals_padded_batch(device):
    lengths, heads, head_dim, max_len, p = [23, 5, 40], 2, 32, 40, 0.2
    q, k, v = projections(len(lengths), heads, max_len, head_dim, DTYPE, device, seed=10)
    mask = right_padding(lengths, max_len, device)
    cu_seqlens = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), device=device, dtype=torch.int32)
    def pack(t):  # [B, heads, L, D] -> [total, heads, D]
        return t.transpose(1, 2)[mask]

    grad_out = torch.randn(sum(lengths), heads, head_dim, generator=torch.Generator().manual_seed(11)).to(device)
    packed = run_with_grads(
        lambda *t: ef.attention_varlen(*t, cu_seqlens, max_len, dropout_p=p, seed=5), pack(q), pack(k), pack(v),
        grad_out,
    )
    q2, k2, v2 = with_grad(q, k, v)
    padded_out = ef.attention(q2, k2, v2, mask, dropout_p=p, seed=5)
    pack(padded_out).backward(grad_out)
    padded = (pack(padded_out).detach(), pack(q2.grad), pack(k2.grad), pack(v2.grad))
    for name, a, e in zip(("out", "dq", "dk", "dv"), packed, padded):
        assert_close(a, e, 1e-5, name)
    with use_backend("reference"):
        expected = ef.attention_varlen(pack(q), pack(k), pack(v), cu_seqlens, max_len, dropout_p=p, seed=5)
    assert_close(packed[0], expected, 1e-5, "reference varlen")


def test_head_varying_mask_falls_back_to_reference_with_a_warning(device):
    q, k, v = projections(1, 2, 9, 16, torch.float32, device)
    general = torch.randn(1, 2, 9, 9, device=device)
    ops._warned_fallbacks.clear()
    with pytest.warns(UserWarning, match="varies over heads or queries") as caught:
        out = ef.attention(q, k, v, general)
    assert caught[0].filename == __file__  # the caller's line
    assert_close(out, reference.attention(q, k, v, general), 1e-6, "fallback")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ef.attention(q, k, v, general)  # warned once only


def test_bad_arguments_are_named(device):
    q, k, v = projections(1, 2, 9, 16, torch.float32, device)
    packed = q.transpose(1, 2)[0]
    with pytest.raises(ValueError, match="cu_seqlens"):
        ef.attention_varlen(packed, packed, packed, torch.tensor([0], device=device), 9)
    with pytest.raises(TypeError, match="cu_seqlens"):
        ef.attention_varlen(packed, packed, packed, torch.tensor([0.0, 9.0], device=device), 9)
    with pytest.raises(ValueError, match="k must have"):
        ef.attention_varlen(packed, packed[:3], packed, torch.tensor([0, 9], device=device), 9)
    with pytest.raises(ValueError, match="key_padding_mask"):
        ef.attention(q, k, v, torch.ones(1, 8, dtype=torch.bool, device=device))


def test_torch_compile_fullgraph_forward_and_backward(device):
    q, k, v = projections(2, 2, 21, 16, DTYPE, device, seed=12)
    mask = right_padding([21, 13], 21, device)
    # aot_eager traces through the fake and autograd registrations like inductor does, at a fraction of the time.
    compiled = torch.compile(lambda q, k, v: ef.attention(q, k, v, mask, dropout_p=0.1, seed=3), fullgraph=True,
                             backend="aot_eager")
    grad_out = torch.randn(2, 2, 21, 16, device=device, dtype=DTYPE)
    got = run_with_grads(compiled, q, k, v, grad_out)
    expected = run_with_grads(lambda *t: ef.attention(*t, mask, dropout_p=0.1, seed=3), q, k, v, grad_out)
    for name, a, e in zip(("out", "dq", "dk", "dv"), got, expected):
        assert torch.equal(a, e), name


def tiny_electra(attn_implementation, **overrides):
    config = ElectraConfig(vocab_size=61, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=32, hidden_dropout_prob=0.0, **overrides)
    torch.manual_seed(0)
    model = ElectraModel(config)
    model.set_attn_implementation(attn_implementation)
    return model


def test_electra_model_with_electra_fast_attention_matches_eager(device):
    eager, fast = tiny_electra("eager").to(device).eval(), tiny_electra("electra_fast").to(device).eval()
    assert fast.config._attn_implementation == "electra_fast"
    ids = torch.randint(0, 61, (3, 19), generator=torch.Generator().manual_seed(13)).to(device)
    attention_mask = right_padding([19, 11, 3], 19, device).long()
    outputs = [m(ids, attention_mask=attention_mask).last_hidden_state for m in (eager, fast)]
    real = attention_mask.bool()
    assert_close(outputs[1][real], outputs[0][real], 1e-5, "hidden states")
    for output in outputs:
        (output * real[..., None]).square().sum().backward()
    for (name, p_eager), p_fast in zip(eager.named_parameters(), fast.parameters()):
        if p_eager.grad is not None:
            assert_close(p_fast.grad, p_eager.grad, 1e-4, name)
    with torch.no_grad():
        # No mask at all, and a prepared 4-D additive mask (transformers passes 4-D masks through unchanged).
        no_mask = [m(ids).last_hidden_state for m in (eager, fast)]
        assert_close(no_mask[1], no_mask[0], 1e-5, "hidden states without a mask")
        additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        prepared = [m(ids, attention_mask=additive).last_hidden_state for m in (eager, fast)]
        assert_close(prepared[1][real], prepared[0][real], 1e-5, "hidden states with a 4-D mask")


def test_electra_model_dropout_follows_the_seed_keyword(device):
    model = tiny_electra("electra_fast", attention_probs_dropout_prob=0.3).to(device).train()
    ids = torch.randint(0, 61, (2, 13), generator=torch.Generator().manual_seed(14)).to(device)
    attention_mask = right_padding([13, 7], 13, device).long()
    def run(seed):
        return model(ids, attention_mask=attention_mask, electra_fast_seed=seed).last_hidden_state

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
    assert layer_seed(5, 0) != layer_seed(5, 1)


@pytest.mark.gpu_check
@pytest.mark.gpu
def test_bf16_on_gpu_within_twice_pytorch_error(device):
    batch, heads, length, head_dim = 4, 4, 300, 64
    q, k, v = projections(batch, heads, length, head_dim, torch.bfloat16, device, seed=15)
    mask = right_padding([300, 200, 129, 1], length, device)
    truth = oracle_fp64(q, k, v, mask, head_dim**-0.5)
    additive = torch.zeros(batch, 1, 1, length, device=device, dtype=torch.bfloat16).masked_fill(
        ~mask[:, None, None, :], torch.finfo(torch.bfloat16).min)
    theirs = eager_attention_forward(torch.nn.Module().eval(), q, k, v, additive)[0].transpose(1, 2)
    ours = ef.attention(q, k, v, mask, dropout_p=0.0)
    assert_parity(ours, theirs, truth, "out (bf16)", slack=1e-3, negative=True)


def check_bf16(device, attention, head_dim=64, dropout_p=0.0, seed=21):
    """``attention(q, k, v, key_mask, dropout_p=, seed=)`` in bf16 (lengths 77, 50 and 9 of 77): output and
    gradients against fp64 within 2x PyTorch's own bf16 error (docs/design.md §5.4), dropping by the same keep
    mask as the truth; each check is also shown to reject a wrong result."""
    batch, heads, length = 3, 2, 77
    q, k, v = projections(batch, heads, length, head_dim, torch.bfloat16, device, seed=head_dim)
    mask = right_padding([77, 50, 9], length, device)
    scale = head_dim**-0.5
    keep = dropout_keep(seed, (batch, heads, length, length), dropout_p, device) if dropout_p else None
    real_rows = mask[:, None, :, None]  # padded query rows are not compared (HF's 16-bit mask is finite there)
    grad_out = torch.randn(batch, heads, length, head_dim, generator=torch.Generator().manual_seed(4)).to(device)
    grad_out = grad_out * real_rows  # nor do they reach dk, dv (a packed batch has no such rows)
    truth = run_with_grads(lambda *t: oracle_fp64(*t, mask, scale, keep, dropout_p), q.double(), k.double(),
                           v.double(), grad_out)
    theirs = run_with_grads(lambda *t: eager_same_dtype(*t, mask, scale, keep, dropout_p), q, k, v, grad_out)
    ours = run_with_grads(lambda *t: attention(*t, mask, dropout_p=dropout_p, seed=seed), q, k, v, grad_out)
    for name, value, same_dtype, exact in zip(("out", "dq", "dk", "dv"), ours, theirs, truth):
        assert value.dtype == torch.bfloat16, name
        rows = real_rows if name in ("out", "dq") else None
        assert_parity(value, same_dtype, exact, f"{name} (bf16)", slack=1e-4, where=rows, negative=True)


def varlen_as_padded(q, k, v, key_mask, **options):
    """ef.attention_varlen on the real tokens of a right-padded batch, its output padded back with zeros."""
    lengths = key_mask.sum(1)
    cu_seqlens = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    packed = ef.attention_varlen(*(t.transpose(1, 2)[key_mask] for t in (q, k, v)), cu_seqlens, q.shape[2],
                                 **options)
    out = packed.new_zeros(q.shape[0], q.shape[2], *packed.shape[1:]).index_put((key_mask,), packed)
    return out.transpose(1, 2)


@pytest.mark.gpu_check
@pytest.mark.gpu
@pytest.mark.parametrize("head_dim, varlen", [(64, False), (128, False), (64, True)])
def test_bf16_with_dropout_head_dims_and_varlen_on_gpu(device, head_dim, varlen):
    """The bf16 kernels the other bf16 tests leave out: dropout (ELECTRA's 0.1) in the forward, dq and dk/dv
    kernels, head dim 128 (registered for bf16), packed batches."""
    check_bf16(device, varlen_as_padded if varlen else ef.attention, head_dim, dropout_p=0.1)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("path", ["cpu path", "reference", "reference varlen"])
def test_bf16_on_the_cpu_within_twice_pytorch_bf16(cpu_path, path, dropout_p):
    """The CPU path (SDPA, or fp32 probabilities with dropout) and the reference take bf16 on the CPU under the
    same rule; attention_varlen has no CPU path and runs the reference there."""
    cpu = torch.device("cpu")
    assert not use_triton(cpu)
    if path == "cpu path":
        check_bf16(cpu, ef.attention, dropout_p=dropout_p)
    else:
        with use_backend("reference"):
            check_bf16(cpu, varlen_as_padded if path == "reference varlen" else ef.attention, dropout_p=dropout_p)


def test_transformers_masks_become_key_masks_when_they_only_vary_over_keys():
    from electra_fast.hf_attention import _key_mask

    mask = right_padding([5, 2], 5, "cpu")
    expanded = mask[:, None, None, :].expand(2, 1, 5, 5)  # eager/sdpa-style 4-D bool, stride 0 over queries
    assert torch.equal(_key_mask(expanded, torch.float32), mask)
    additive = torch.zeros(2, 1, 1, 5).masked_fill(~mask[:, None, None, :], float("-inf")).expand(2, 1, 5, 5)
    assert _key_mask(additive, torch.float32).shape == (2, 1, 1, 5)
    varying = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()  # differs per query: stays a full additive mask
    converted = _key_mask(varying, torch.float32)
    assert converted.shape == (2, 1, 5, 5) and torch.equal(torch.isinf(converted), ~varying)
    assert _key_mask(None, torch.float32) is None
