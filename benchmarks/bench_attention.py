"""Bidirectional attention with key padding and attention dropout, forward and forward+backward.

Compared in the same run, q, k, v as transformers hands them ([B, heads, L, D] views of [B, L, heads, D]):
- electra_fast: ``ef.attention`` with the [B, L] key mask (the Triton kernel on CUDA; the reference on CPU);
- electra_fast_varlen: ``ef.attention_varlen`` on the packed real tokens (padded batches, forward+backward;
  timing excludes packing);
- hf_eager: transformers' ``eager_attention_forward`` with the 4-D additive mask;
- sdpa: ``F.scaled_dot_product_attention`` with a [B, 1, 1, L] bool mask (none without padding); the backend
  PyTorch picks is recorded as ``sdpa_backend``;
- flash_attn2: ``flash_attn_varlen_func`` on the packed tokens (``flash_attn_func`` without padding), when
  flash-attn is installed (timing excludes packing);
- flex_attention: compiled FlexAttention with a padding block mask, padded batches, forward+backward on the GPU
  (it has no dropout; each shape costs a compile, so only these rows are measured).

TFLOP/s count real tokens only: forward 4 * H * D * sum_b n_b^2, forward+backward 2.5x more (FlashAttention's
convention). GB/s count the least a kernel moves for the real tokens: q, k, v read and the output and its fp32
log-sum-exp written; backward reads q, k, v, the output, its gradient and the log-sum-exp again and writes dq,
dk, dv. GPU shapes (B, heads, L, D) in bf16, 0 % and ~30 % padding, dropout 0 and 0.1; a tiny fp32 shape on the
CPU. The quick matrix (common.QUICK) keeps ELECTRA-Base's heads at L = 128 and 512, the pre-training dropout
0.1, forward+backward, and no FlexAttention (each of its shapes costs a compile).
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from common import DEVICE, ON_GPU, QUICK, measure

import electra_fast as ef

if ON_GPU:
    SHAPES = [(256, 12, 128, 64), (32, 12, 512, 64)] + ([] if QUICK else [(256, 4, 128, 64), (16, 16, 512, 64)])
    DTYPE = torch.bfloat16
else:
    SHAPES = [(2, 2, 40, 16)]
    DTYPE = torch.float32
PADDINGS = (0.0, 0.3)
DROPOUTS = (0.1,) if QUICK else (0.0, 0.1)
MODES = ("fwd_bwd",) if QUICK else ("fwd", "fwd_bwd")


def make_case(batch, heads, length, head_dim, padding):
    """q, k, v leaves ([B, heads, L, D] views of one [B, L, 3, heads, D] projection), the [B, L] key mask (None
    without padding) and the sequence lengths."""
    torch.manual_seed(0)
    qkv = torch.randn(batch, length, 3, heads, head_dim, device=DEVICE, dtype=DTYPE)
    q, k, v = (qkv[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3))
    if padding > 0:  # lengths uniform in [L (1 - 2 padding), L]: ~padding of the tokens are padding
        lengths = length - torch.randint(0, int(2 * padding * length) + 1, (batch,))
    else:
        lengths = torch.full((batch,), length)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(DEVICE) if padding > 0 else None
    return q, k, v, mask, lengths.to(DEVICE)


def real_token_flops(lengths, heads, head_dim, mode):
    forward = 4.0 * heads * head_dim * float((lengths.double() ** 2).sum())
    return forward if mode == "fwd" else 3.5 * forward


def real_token_bytes(lengths, heads, head_dim, mode):
    rows = float(lengths.sum()) * heads
    element = torch.finfo(DTYPE).bits // 8
    forward = rows * (4 * head_dim * element + 4)  # read q, k, v; write the output and the fp32 log-sum-exp
    return forward if mode == "fwd" else forward + rows * (8 * head_dim * element + 4)


def electra_fast(q, k, v, mask, lengths, dropout):
    return ef.attention(q, k, v, mask, dropout_p=dropout, seed=1)


def packed(q, k, v, mask, lengths):
    """Real tokens of [B, heads, L, D] tensors as [total, heads, D] leaves, and cu_seqlens."""
    tokens = [t.detach().transpose(1, 2)[mask].requires_grad_() for t in (q, k, v)]
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return tokens, cu_seqlens, int(lengths.max())


def hf_eager(q, k, v, mask, lengths, dropout):
    from transformers.models.electra.modeling_electra import eager_attention_forward

    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
        additive = additive[:, None, None, :]
    module = torch.nn.Module().train(dropout > 0)
    return eager_attention_forward(module, q, k, v, additive, dropout=dropout)[0]


def sdpa(q, k, v, mask, lengths, dropout):
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)


def sdpa_backend_taken(case, dropout) -> str:
    """The first backend in PyTorch's priority order that accepts these inputs (the one SDPA dispatches to)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, mask, lengths = case
    for value in torch._C._get_sdp_priority_order():
        backend = SDPBackend(value)
        if backend in (SDPBackend.ERROR, getattr(SDPBackend, "OVERRIDEABLE", None)):
            continue
        try:
            with warnings.catch_warnings(), sdpa_kernel([backend]):
                warnings.simplefilter("ignore")
                sdpa(q, k, v, mask, lengths, dropout).sum().backward()
        except RuntimeError:
            continue
        return backend.name
    return "none"


def _flash_attn():
    if not ON_GPU:
        return None
    try:
        import flash_attn
    except ImportError:
        return None
    return flash_attn


def flex_block_mask(lengths, length):
    from torch.nn.attention.flex_attention import create_block_mask

    def key_is_real(b, h, q_idx, kv_idx):
        return kv_idx < lengths[b]

    return create_block_mask(key_is_real, lengths.shape[0], None, length, length, device=lengths.device)


IMPLS = ("electra_fast", "electra_fast_varlen", "hf_eager", "sdpa", "flash_attn2")
if not QUICK:
    IMPLS += ("flex_attention",)


def build(impl_name, case, dropout, mode):
    """A closure running the implementation on ``case``, and the tensors whose gradients it produces."""
    q, k, v, mask, lengths = case
    if impl_name in ("electra_fast", "hf_eager", "sdpa"):
        function = {"electra_fast": electra_fast, "hf_eager": hf_eager, "sdpa": sdpa}[impl_name]
        return (lambda: function(q, k, v, mask, lengths, dropout)), (q, k, v)
    if impl_name == "electra_fast_varlen":
        if mask is None or mode == "fwd":
            pytest.skip("same kernels as electra_fast: measured on padded batches, forward+backward only")
        (pq, pk, pv), cu_seqlens, max_len = packed(q, k, v, mask, lengths)
        return (lambda: ef.attention_varlen(pq, pk, pv, cu_seqlens, max_len, dropout_p=dropout, seed=1)), (pq, pk, pv)
    if impl_name == "flash_attn2":
        flash_attn = _flash_attn()
        if flash_attn is None:
            pytest.skip("flash-attn is not installed (or no GPU)")
        if mask is None:
            tensors = [t.detach().transpose(1, 2).requires_grad_() for t in (q, k, v)]
            return (lambda: flash_attn.flash_attn_func(*tensors, dropout_p=dropout)), tensors
        tensors, cu_seqlens, max_len = packed(q, k, v, mask, lengths)
        return (lambda: flash_attn.flash_attn_varlen_func(*tensors, cu_seqlens, cu_seqlens, max_len, max_len,
                                                          dropout_p=dropout)), tensors
    if impl_name == "flex_attention":
        if dropout > 0:
            pytest.skip("FlexAttention has no dropout")
        if not ON_GPU or mode == "fwd" or mask is None:
            pytest.skip("FlexAttention: GPU, padded batches, forward+backward only (each shape costs a compile)")
        from torch.nn.attention.flex_attention import flex_attention

        compiled = torch.compile(flex_attention)
        block_mask = flex_block_mask(lengths, q.shape[2])
        return (lambda: compiled(q, k, v, block_mask=block_mask)), (q, k, v)
    raise ValueError(impl_name)


# Every implementation of one case before the next case: a time limit keeps whole comparisons.
@pytest.mark.parametrize("impl_name", IMPLS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dropout", DROPOUTS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}_L{}_D{}".format(*s))
def test_attention(benchmark, impl_name, shape, padding, dropout, mode):
    batch, heads, length, head_dim = shape
    case = make_case(batch, heads, length, head_dim, padding)
    run, leaves = build(impl_name, case, dropout, mode)
    if mode == "fwd":
        def step():
            with torch.no_grad():
                run()
    else:
        grad = None

        def step():
            nonlocal grad
            for leaf in leaves:
                leaf.grad = None
            out = run()
            if grad is None:
                grad = torch.randn_like(out)
            out.backward(grad)

    extra = {"sdpa_backend": sdpa_backend_taken(case, dropout)} if impl_name == "sdpa" else {}
    real_fraction = float(case[4].sum()) / (batch * length)
    measure(benchmark, step, op=f"attention_{mode}", impl=impl_name,
            shape=f"B={batch} H={heads} L={length} D={head_dim} pad={padding:.0%} p={dropout}",
            flops=real_token_flops(case[4], heads, head_dim, mode),
            bytes_moved=real_token_bytes(case[4], heads, head_dim, mode), real_token_fraction=real_fraction,
            rounds=10 if ON_GPU else None, **extra)
