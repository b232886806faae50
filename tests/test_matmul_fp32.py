"""The chunked generator head's fp32-result GEMMs (``fused.generator_head._matmul_fp32``): a refusal of
``torch.mm``/``torch.addmm(..., out_dtype=torch.float32)`` is decided per (op, device type, dtype, capability)
and per call, never for the whole process, and the result stays right.

The branch that tries ``out_dtype`` runs only for CUDA tensors. Here it is entered with CPU tensors by replacing
its predicate, ``_wants_fp32_output_gemm``; CPU torch genuinely refuses ``out_dtype`` (NotImplementedError),
which is the refusal the fp16 cases meet. Where a case needs a library that accepts it, a stand-in for
``torch.mm``/``torch.addmm`` computes the fp32 product itself, and says so below.
"""

import warnings

import pytest
import torch

from electra_fast.fused import generator_head as fused

from numerics import assert_parity

REAL_MM, REAL_ADDMM = torch.mm, torch.addmm


@pytest.fixture
def fresh_records(monkeypatch):
    """No probe answered and no refusal warned yet in this test."""
    monkeypatch.setattr(fused, "_fp32_output_probes", {})
    monkeypatch.setattr(fused, "_warned_refusals", set())


@pytest.fixture
def cuda_branch_on_cpu(monkeypatch, fresh_records):
    """The out_dtype branch taken for 16-bit CPU tensors, and a log of every out_dtype call as (op, dtype,
    rows)."""
    monkeypatch.setattr(fused, "_wants_fp32_output_gemm", lambda a: a.dtype != torch.float32)
    calls = []

    def accepts_bf16(op):
        """torch's own op, except that bf16 with out_dtype (which CPU torch refuses) is computed here in fp32, as
        a library that takes it would; fp16 still reaches torch, which refuses it."""
        def call(*args, out_dtype=None, **kwargs):
            a = args[0] if op == "mm" else args[1]
            if out_dtype is not None:
                calls.append((op, a.dtype, a.shape[0]))
            if out_dtype is None or a.dtype != torch.bfloat16:
                real = REAL_MM if op == "mm" else REAL_ADDMM
                return real(*args, **kwargs) if out_dtype is None else real(*args, out_dtype=out_dtype, **kwargs)
            if a.shape[0] == 3:  # one shape the library refuses, to show a call's own failure stays its own
                raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED for this shape")
            if op == "mm":
                return REAL_MM(args[0].float(), args[1].float())
            return kwargs["out"].addmm_(args[1].float(), args[2].float())
        return call

    monkeypatch.setattr(torch, "mm", accepts_bf16("mm"))
    monkeypatch.setattr(torch, "addmm", accepts_bf16("addmm"))
    return calls


def operands(rows, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, 24, generator=generator).to(dtype)
    b = torch.randn(24, 9, generator=generator).to(dtype)
    return a, b


def upcast(a, b, out=None):
    """What the fallback must give: the product of the operands in fp32 (added into a copy of ``out``)."""
    product = a.float() @ b.float()
    return product if out is None else out.clone().addmm_(a.float(), b.float())


def refusal_warnings(record):
    return [w for w in record if issubclass(w.category, RuntimeWarning) and "refused" in str(w.message)]


def mm_and_addmm_are_right(dtype, seeds):
    """Per seed, _matmul_fp32 without and with ``out``: the upcast product bit for bit. Returns the refusal
    warnings they gave."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for seed in seeds:
            a, b = operands(5, dtype, seed)
            assert torch.equal(fused._matmul_fp32(a, b), upcast(a, b))
            out = torch.randn(5, 9)
            expected = upcast(a, b, out)
            assert fused._matmul_fp32(a, b, out=out) is out and torch.equal(out, expected)
    return refusal_warnings(record)


def test_a_refused_key_upcasts_warns_once_and_leaves_other_keys_on_the_fast_path(cuda_branch_on_cpu):
    calls = cuda_branch_on_cpu
    # fp16: CPU torch refuses mm and addmm with out_dtype; the results are the upcast ones.
    fp16 = mm_and_addmm_are_right(torch.float16, range(3))
    assert len(fp16) == 2, [str(w.message) for w in fp16]  # one per refused (op, key), not one per call
    assert {"mm", "addmm"} == {str(w.message).split("(")[1].split(" ")[0] for w in fp16}
    assert all("float16" in str(w.message) for w in fp16)
    assert calls == [("mm", torch.float16, 16), ("addmm", torch.float16, 16)]  # each key probed once, then known

    # bf16 after those refusals: another key, so the fast path is probed and taken, call after call.
    calls.clear()
    assert mm_and_addmm_are_right(torch.bfloat16, range(2)) == []
    assert calls == [("mm", torch.bfloat16, 16), ("mm", torch.bfloat16, 5), ("addmm", torch.bfloat16, 16),
                     ("addmm", torch.bfloat16, 5), ("mm", torch.bfloat16, 5), ("addmm", torch.bfloat16, 5)]


def test_one_call_the_library_refuses_falls_back_alone(cuda_branch_on_cpu):
    """A key whose probe passed: a call that fails on its own (here: 3 rows) upcasts with one warning, and the
    calls after it still take the fast path."""
    calls = cuda_branch_on_cpu
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for rows in (5, 3, 3, 7):
            a, b = operands(rows, torch.bfloat16, rows)
            assert torch.equal(fused._matmul_fp32(a, b), upcast(a, b))
    messages = [str(w.message) for w in refusal_warnings(record)]
    assert len(messages) == 1 and "for this shape" in messages[0], messages
    assert calls == [("mm", torch.bfloat16, 16), ("mm", torch.bfloat16, 5), ("mm", torch.bfloat16, 3),
                     ("mm", torch.bfloat16, 3), ("mm", torch.bfloat16, 7)]


def test_out_of_memory_is_not_taken_for_a_refusal(cuda_branch_on_cpu, monkeypatch):
    """Running out of memory is raised, not answered by an upcast that needs more memory still."""
    fused._matmul_fp32(*operands(5, torch.bfloat16))  # the key's probe passes

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(torch, "mm", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        fused._matmul_fp32(*operands(5, torch.bfloat16))


def test_cpu_tensors_never_try_out_dtype(monkeypatch, fresh_records):
    """The real predicate: CPU tensors, whatever their dtype, go straight to the upcast product, unprobed."""
    tried = []
    monkeypatch.setattr(fused, "_fp32_output_gemm", lambda *args: tried.append(args))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        a, b = operands(5, dtype)
        assert torch.equal(fused._matmul_fp32(a, b), upcast(a, b))
    assert tried == [] and fused._fp32_output_probes == {}


@pytest.mark.gpu_check
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_takes_the_fp32_output_gemms(fresh_records, dtype):
    """On the GPU, the path no CPU can run: both probes pass, no call is refused, and the fp32 results are as
    close to fp64 as the upcast product's (2x its error, plus 1e-6 of the scale)."""
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(300, 768, generator=generator).to("cuda", dtype)
    b = (torch.randn(768, 1000, generator=generator) * 768**-0.5).to("cuda", dtype)
    start = torch.randn(300, 1000, generator=generator).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a refusal warns: here it fails the test
        product = fused._matmul_fp32(a, b)
        added = fused._matmul_fp32(a, b, out=start.clone())
    assert list(fused._fp32_output_probes.values()) == [None, None]
    assert product.dtype == added.dtype == torch.float32
    truth = a.double() @ b.double()
    scale = truth.abs().max().item()
    assert_parity(product, upcast(a, b), truth, "mm", slack=1e-6 * scale, negative=True)
    assert_parity(added, upcast(a, b, start), truth + start.double(), "addmm", slack=1e-6 * scale, negative=True)
