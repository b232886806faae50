"""Fused generator head (kernels/generator_head.py) against the reference and an fp64 ground truth, and the
reference itself against independent ground truth (F.cross_entropy, transformers' ElectraForMaskedLM, a
chi-square test of the Gumbel-max sampler).

On a machine without a GPU the kernels run in the Triton interpreter (tests/conftest.py), so shapes are
small and odd: vocabularies that are not multiples of the tiles, E not a multiple of BLOCK_K.
"""

import pytest
import torch
import torch.nn.functional as F

import electra_fast as ef
from electra_fast import reference
from electra_fast.backend import use_triton
from electra_fast.fused import generator_head as fused

from numerics import assert_parity, max_error


def make_inputs(M, V, E, *, dtype=torch.float32, bias=True, device="cpu", seed=0, zero_rows=()):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(M, E, generator=generator).to(device, dtype)
    weight = (torch.randn(V, E, generator=generator) * E**-0.5 * 2).to(device, dtype)
    bias_tensor = (torch.randn(V, generator=generator) * 0.5).to(device, dtype) if bias else None
    targets = torch.randint(0, V, (M,), generator=generator).to(device)
    weights = torch.ones(M)
    weights[list(zero_rows)] = 0
    return hidden, weight, bias_tensor, targets, weights.to(device)


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


# Both designs of the Triton path (docs/design.md §5); the chunked one with small chunks, so that several run.
STRATEGIES = {"fused": {"strategy": "fused"}, "chunked": {"strategy": "chunked", "chunk_rows": 8}}


@pytest.fixture(params=list(STRATEGIES))
def strategy(request):
    """Keyword arguments of ef.generator_loss_and_sample that select one design."""
    return STRATEGIES[request.param]


def kernel_loss_and_grads(hidden, weight, bias, targets, weights, **options):
    """Loss, samples and (dh, dW, db) of the public op on the kernel path."""
    assert use_triton(hidden.device)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    loss, samples = ef.generator_loss_and_sample(h, w, b, targets, weights, **options)
    loss.backward()
    return loss.detach(), samples, (h.grad, w.grad, None if b is None else b.grad)


def torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype):
    """Plain PyTorch (F.linear + F.cross_entropy, weighted mean) in ``dtype``: the fp64 ground truth, or the
    low-precision implementation whose error bounds the kernel's (docs/design.md §5)."""
    h, w = leaf(hidden.to(dtype)), leaf(weight.to(dtype))
    b = None if bias is None else leaf(bias.to(dtype))
    nll = F.cross_entropy(F.linear(h, w, b), targets, reduction="none")
    row_weights = weights.to(dtype)
    loss = (nll * row_weights).sum() / row_weights.sum().clamp_min(1)
    loss.backward()
    return loss.detach(), (h.grad, w.grad, None if b is None else b.grad)


def assert_close_to_fp64(loss, grads, truth_loss, truth_grads, rel=1e-5):
    scale = abs(truth_loss.item()) + 1e-30
    assert max_error(loss, truth_loss) <= rel * scale, (loss, truth_loss)
    for name, grad, truth in zip(("dh", "dW", "db"), grads, truth_grads):
        if truth is None:
            assert grad is None
            continue
        assert max_error(grad, truth) <= rel * truth.abs().max().item(), name


# ---------------------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("with_bias", [True, False])
def test_fp32_kernel_matches_fp64_and_reference_samples(device, with_bias, strategy):
    inputs = make_inputs(37, 203, 64, bias=with_bias, device=device, seed=1)
    loss, samples, grads = kernel_loss_and_grads(*inputs, seed=11, **strategy)
    truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
    assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
    reference_loss, reference_samples = reference.generator_loss_and_sample(*inputs, seed=11)
    assert torch.allclose(loss, reference_loss, rtol=1e-5, atol=0)
    assert (samples == reference_samples).float().mean().item() >= 0.999


@pytest.mark.parametrize("M, V, E", [(1, 67, 64), (5, 67, 80), (9, 41, 300), (70, 131, 128)])
def test_odd_shapes_and_several_tiles(device, M, V, E, strategy):
    """One row, E not a power of two (80 = 64 + 16; 300 = 256 + 64, padded), several row tiles, V < one tile."""
    inputs = make_inputs(M, V, E, device=device, seed=M)
    loss, samples, grads = kernel_loss_and_grads(*inputs, seed=3, **strategy)
    truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
    assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
    assert torch.equal(samples, reference.generator_loss_and_sample(*inputs, seed=3)[1])


@pytest.mark.gpu_check
def test_samples_identical_to_reference_on_many_rows(device, strategy):
    hidden, weight, bias, targets, weights = make_inputs(401, 203, 64, device=device, seed=2)
    with torch.no_grad():
        _, samples = ef.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=2**40 + 5, **strategy)
    _, expected = reference.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=2**40 + 5)
    assert (samples == expected).float().mean().item() >= 0.999
    assert samples.dtype == torch.int64 and int(samples.min()) >= 0 and int(samples.max()) < 203


@pytest.mark.parametrize("temperature", [0.5, 3.0])
def test_temperature(device, temperature, strategy):
    inputs = make_inputs(37, 203, 64, device=device, seed=4)
    with torch.no_grad():
        loss, samples = ef.generator_loss_and_sample(*inputs, temperature=temperature, seed=7, **strategy)
    reference_loss, expected = reference.generator_loss_and_sample(*inputs, temperature=temperature, seed=7)
    assert torch.equal(samples, expected)
    assert torch.allclose(loss, reference_loss, rtol=1e-5, atol=0)  # the loss does not depend on T
    assert not torch.equal(samples, reference.generator_loss_and_sample(*inputs, seed=7)[1])


def test_disallow_correct_never_returns_the_target(device, strategy):
    hidden, weight, bias, _, weights = make_inputs(37, 203, 64, device=device, seed=5)
    targets = torch.full((37,), 150, device=device)
    bias[150] = 30.0  # without the option every row samples its target
    with torch.no_grad():
        _, free = ef.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=9, **strategy)
        _, samples = ef.generator_loss_and_sample(hidden, weight, bias, targets, weights, disallow_correct=True, seed=9,
                                                  **strategy)
    assert torch.equal(free, targets)
    assert not (samples == targets).any()
    _, expected = reference.generator_loss_and_sample(
        hidden, weight, bias, targets, weights, disallow_correct=True, seed=9
    )
    assert torch.equal(samples, expected)


def test_zero_weight_rows_contribute_nothing(device, strategy):
    padding = (0, 3, 4, 20, 36)
    inputs = make_inputs(37, 203, 64, device=device, seed=6, zero_rows=padding)
    hidden = inputs[0]
    hidden[list(padding)] = 1e4  # extreme padding rows must not leak into the loss or dW / db
    loss, _, (dh, dW, db) = kernel_loss_and_grads(*inputs, **strategy)
    truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
    assert_close_to_fp64(loss, (dh, dW, db), truth_loss, truth_grads)
    assert torch.count_nonzero(dh[list(padding)]) == 0


def test_all_zero_weights_give_zero_loss_and_gradients(device, strategy):
    inputs = make_inputs(37, 203, 64, device=device, seed=7, zero_rows=range(37))
    loss, _, grads = kernel_loss_and_grads(*inputs, **strategy)
    assert loss.item() == 0.0
    for grad in grads:
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == 0


def test_strided_weight_view_and_hidden(device, strategy):
    """W as a view of a wider embedding table, hidden with a column stride: same results, grads reach the table."""
    M, V, E = 21, 203, 64
    hidden, weight, bias, targets, weights = make_inputs(M, V, E, device=device, seed=8)
    table = torch.zeros(V + 9, E + 16, device=device)
    table[5 : 5 + V, :E] = weight
    wide_hidden = torch.zeros(M, 2 * E, device=device)
    wide_hidden[:, ::2] = hidden
    table.requires_grad_()
    wide_hidden.requires_grad_()
    weight_view, hidden_view = table[5 : 5 + V, :E], wide_hidden[:, ::2]
    loss, samples = ef.generator_loss_and_sample(hidden_view, weight_view, bias, targets, weights, seed=1, **strategy)
    loss.backward()
    expected_loss, expected_samples, (dh, dW, _) = kernel_loss_and_grads(hidden, weight, bias, targets, weights, seed=1,
                                                                         **strategy)
    assert torch.equal(loss.detach(), expected_loss) and torch.equal(samples, expected_samples)
    assert torch.equal(wide_hidden.grad[:, ::2], dh) and torch.count_nonzero(wide_hidden.grad[:, 1::2]) == 0
    assert torch.equal(table.grad[5 : 5 + V, :E], dW)
    assert torch.count_nonzero(table.grad) == torch.count_nonzero(dW)


def test_gradients_are_bitwise_deterministic(device, strategy):
    inputs = make_inputs(70, 131, 64, device=device, seed=9, zero_rows=(2,))
    first = kernel_loss_and_grads(*inputs, **strategy)
    second = kernel_loss_and_grads(*inputs, **strategy)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[2], second[2]):
        assert torch.equal(a, b)


@pytest.mark.gpu_check
def test_fp16_error_within_twice_pytorch_fp16(device, float_dtypes, strategy):
    """docs/design.md §5: max error against fp64 <= 2x the error of PyTorch in the same dtype, plus a small slack."""
    for dtype in [d for d in float_dtypes if d != torch.float32]:
        inputs32 = make_inputs(37, 203, 64, device=device, seed=10, zero_rows=(1,))
        hidden, weight, bias = (t.to(dtype) for t in inputs32[:3])
        targets, weights = inputs32[3:]
        loss, _, grads = kernel_loss_and_grads(hidden, weight, bias, targets, weights, **strategy)
        truth_loss, truth_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=torch.float64)
        torch_loss, torch_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=dtype)
        assert grads[0].dtype == dtype and grads[1].dtype == dtype and grads[2].dtype == dtype
        for name, value, low_precision, truth in zip(
            ("loss", "dh", "dW", "db"), (loss, *grads), (torch_loss, *torch_grads), (truth_loss, *truth_grads)
        ):
            assert_parity(value, low_precision, truth, f"{name} ({dtype})", slack=1e-5 * truth.abs().max().item(),
                          negative=True)


@pytest.mark.gpu_check
@pytest.mark.gpu
@pytest.mark.parametrize("width", [128, 768])
def test_bf16_and_large_vocabulary_on_gpu(device, strategy, width):
    """Real sizes where the interpreter is too slow: V = 30522 (not a tile multiple), E of ELECTRA-Small and -Base
    (the fused design's AOT-checked range, and beyond it), bf16."""
    inputs32 = make_inputs(19 * 16, 30522, width, device=device, seed=12, zero_rows=(0, 5))
    for dtype in (torch.float32, torch.bfloat16):
        hidden, weight, bias = (t.to(dtype) for t in inputs32[:3])
        targets, weights = inputs32[3:]
        loss, samples, grads = kernel_loss_and_grads(hidden, weight, bias, targets, weights, seed=3,
                                                     strategy=strategy["strategy"])
        truth_loss, truth_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=torch.float64)
        if dtype == torch.float32:
            assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
            expected = reference.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=3)[1]
            assert (samples == expected).float().mean().item() >= 0.999
        else:
            torch_loss, torch_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=dtype)
            results = zip((loss, *grads), (torch_loss, *torch_grads), (truth_loss, *truth_grads))
            for name, (value, low_precision, truth) in zip(("loss", "dh", "dW", "db"), results):
                assert_parity(value, low_precision, truth, name, slack=1e-5 * truth.abs().max().item(), negative=True)


@pytest.mark.parametrize("path", ["cpu path", "reference"])
def test_bf16_on_the_cpu_within_twice_pytorch_bf16(cpu_path, path):
    """The CPU path and the reference take bf16 on the CPU (fp32 logits from the rounded inputs) under the same
    rule as the kernels, against F.linear + F.cross_entropy in bf16; each check also rejects a wrong result."""
    inputs32 = make_inputs(37, 203, 64, seed=10, zero_rows=(1,))
    hidden, weight, bias = (t.to(torch.bfloat16) for t in inputs32[:3])
    targets, weights = inputs32[3:]
    assert not use_triton(hidden.device)
    h, w, b = leaf(hidden), leaf(weight), leaf(bias)
    with ef.use_backend("auto" if path == "cpu path" else "reference"):
        loss, samples = ef.generator_loss_and_sample(h, w, b, targets, weights, seed=3)
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == b.grad.dtype == torch.bfloat16
    assert torch.equal(samples, reference.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=3)[1])
    truth_loss, truth_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=torch.float64)
    torch_loss, torch_grads = torch_loss_and_grads(hidden, weight, bias, targets, weights, dtype=torch.bfloat16)
    results = zip(("loss", "dh", "dW", "db"), (loss, h.grad, w.grad, b.grad), (torch_loss, *torch_grads),
                  (truth_loss, *truth_grads))
    for name, value, low_precision, truth in results:
        assert_parity(value, low_precision, truth, name, slack=1e-5 * truth.abs().max().item(), negative=True)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda a: a.update(weight=a["weight"][:, :-1]), ValueError, "weight"),
        (lambda a: a.update(weight=a["weight"][:0]), ValueError, "weight"),
        (lambda a: a.update(bias=a["bias"][:-1]), ValueError, "bias"),
        (lambda a: a.update(targets=a["targets"][:-1]), ValueError, "targets"),
        (lambda a: a.update(targets=a["targets"].float()), TypeError, "targets"),
        (lambda a: a.update(weights=a["weights"][:, None]), ValueError, "weights"),
        (lambda a: a.update(hidden=a["hidden"].long()), TypeError, "hidden"),
        (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
        (lambda a: a.update(seed=-1), ValueError, "seed"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(device, change, error, match):
    hidden, weight, bias, targets, weights = make_inputs(5, 11, 8, device=device)
    arguments = dict(hidden=hidden, weight=weight, bias=bias, targets=targets, weights=weights)
    change(arguments)
    with pytest.raises(error, match=match):
        ef.generator_loss_and_sample(**arguments)


# ---------------------------------------------------------------------------------------------- compile


def test_torch_compile_fullgraph_forward_and_backward(device, strategy):
    inputs = make_inputs(37, 203, 64, device=device, seed=13, zero_rows=(4,))

    def step(hidden, weight, bias, targets, weights):
        loss, samples = ef.generator_loss_and_sample(hidden, weight, bias, targets, weights, seed=5, **strategy)
        return loss * 2.0, samples

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    h, w, b = leaf(inputs[0]), leaf(inputs[1]), leaf(inputs[2])
    loss, samples = compiled(h, w, b, *inputs[3:])
    loss.backward()
    expected_loss, expected_samples, expected_grads = kernel_loss_and_grads(*inputs, seed=5, **strategy)
    assert torch.equal(samples, expected_samples)
    assert torch.equal(loss.detach(), 2 * expected_loss)
    for grad, expected in zip((h.grad, w.grad, b.grad), expected_grads):
        assert torch.equal(grad, 2 * expected)


# ---------------------------------------------------------------------------------------------- reference


def test_reference_loss_is_cross_entropy_of_explicit_logits():
    hidden, weight, bias, targets, weights = make_inputs(29, 53, 16, seed=14, zero_rows=(0, 7))
    logits = hidden @ weight.t() + bias
    per_row = F.cross_entropy(logits, targets, reduction="none")
    expected = (per_row * weights).sum() / weights.sum()
    loss, _ = reference.generator_loss_and_sample(hidden, weight, bias, targets, weights)
    assert torch.allclose(loss, expected, rtol=1e-6, atol=0)
    loss_unweighted, _ = reference.generator_loss_and_sample(hidden, weight, None, targets)
    assert torch.allclose(loss_unweighted, F.cross_entropy(hidden @ weight.t(), targets), rtol=1e-6, atol=0)


def test_reference_loss_equals_transformers_electra_mlm_loss():
    """ElectraForMaskedLM(labels only at the slots) computes the same loss from its generator head output."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ElectraConfig(
        vocab_size=61, embedding_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=32,
    )
    model = transformers.ElectraForMaskedLM(config).eval()
    input_ids = torch.randint(0, 61, (3, 11))
    positions = torch.tensor([[1, 4, 9], [0, 2, 3], [5, 6, 10]])
    targets = torch.randint(0, 61, (3, 3))
    labels = torch.full_like(input_ids, -100).scatter(1, positions, targets)
    captured = {}
    hook = model.generator_predictions.register_forward_hook(lambda module, args, output: captured.update(out=output))
    with torch.no_grad():
        hf_loss = model(input_ids=input_ids, labels=labels).loss
    hook.remove()
    hidden = captured["out"].gather(1, positions[..., None].expand(-1, -1, 16)).reshape(-1, 16)
    head = model.generator_lm_head
    assert head.weight.data_ptr() == model.electra.embeddings.word_embeddings.weight.data_ptr()  # tied
    loss, _ = reference.generator_loss_and_sample(hidden, head.weight, head.bias, targets.reshape(-1))
    assert torch.allclose(loss, hf_loss, rtol=1e-5, atol=0)
    if use_triton(hidden.device):  # the kernel path too, when the interpreter is on
        kernel_loss, _ = ef.generator_loss_and_sample(hidden, head.weight, head.bias, targets.reshape(-1))
        assert torch.allclose(kernel_loss, hf_loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_reference_sample_frequencies_follow_softmax(temperature):
    """Gumbel-max over many rows with identical logits (distinct row indices, so distinct noise) is a
    sample from softmax(logits / T): chi-square goodness of fit."""
    stats = pytest.importorskip("scipy.stats")
    rows, vocab = 40000, 7
    row_logits = torch.tensor([1.5, -0.5, 0.0, 2.0, 0.7, -2.0, 1.0])
    hidden = torch.ones(rows, 1)
    weight = row_logits[:, None]
    targets = torch.zeros(rows, dtype=torch.int64)
    _, samples = reference.generator_loss_and_sample(hidden, weight, None, targets, temperature=temperature, seed=123)
    counts = torch.bincount(samples, minlength=vocab).double()
    expected = torch.softmax(row_logits.double() / temperature, 0) * rows
    assert stats.chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3
    # The test has power: the untempered distribution is rejected when T != 1.
    if temperature != 1.0:
        untempered = torch.softmax(row_logits.double(), 0) * rows
        assert stats.chisquare(counts.numpy(), untempered.numpy()).pvalue < 1e-6


@pytest.mark.parametrize("compute_grad", [True, False])
def test_custom_op_registration_passes_opcheck(device, compute_grad):
    """Schema, fake (meta) outputs, autograd registration and AOT dispatch of both designs' custom ops (inputs
    need gradients exactly when the forward forms them, as generator_loss_and_sample arranges)."""
    hidden, weight, bias, targets, weights = make_inputs(5, 11, 8, device=device, zero_rows=(2,))
    leaves = tuple(t.requires_grad_(compute_grad) for t in (hidden, weight, bias))
    options = (1.0, False, 3, compute_grad)
    torch.library.opcheck(fused.generator_head_forward, (*leaves, targets, weights, *options))
    torch.library.opcheck(fused.generator_head_chunked, (*leaves, targets, weights, *options, 2))


# ---------------------------------------------------------------------------------------------- strategies


def test_the_two_designs_agree(device):
    """fused and chunked (several chunk sizes) give the same samples and the same loss and gradients up to
    fp32 rounding (each is within 1e-5 of fp64 by the tests above; here against each other)."""
    inputs = make_inputs(53, 301, 96, device=device, seed=15, zero_rows=(0, 52))
    loss, samples, grads = kernel_loss_and_grads(*inputs, seed=8, strategy="fused")
    for chunk_rows in (1, 7, 53, 1000):
        other_loss, other_samples, other_grads = kernel_loss_and_grads(*inputs, seed=8, strategy="chunked",
                                                                       chunk_rows=chunk_rows)
        assert torch.equal(other_samples, samples)
        assert torch.allclose(other_loss, loss, rtol=1e-5, atol=0)
        for grad, other in zip(grads, other_grads):
            assert max_error(other, grad) <= 1e-5 * grad.abs().max().item()


def test_without_gradients_the_forward_gives_the_same_loss_and_samples(device, strategy):
    """Under no_grad (an evaluation) neither design forms gradients; the loss and samples do not change."""
    inputs = make_inputs(37, 203, 64, device=device, seed=16)
    loss, samples, _ = kernel_loss_and_grads(*inputs, seed=2, **strategy)
    with torch.no_grad():
        eval_loss, eval_samples = ef.generator_loss_and_sample(*inputs, seed=2, **strategy)
    assert torch.equal(eval_samples, samples)
    assert torch.allclose(eval_loss, loss, rtol=1e-6, atol=0)


def test_auto_picks_by_the_modeled_work():
    """The default follows the roofline model of both designs' work: fused where its re-reads are cheap (narrow
    E: the small preset), chunked where they dominate (base and large), at ELECTRA's paper batches."""
    from electra_fast.fused import generator_head_strategy as strategies

    for rows, width, expected in [(19 * 128, 128, "fused"), (19 * 256, 768, "chunked"), (19 * 2048, 1024, "chunked")]:
        seconds = strategies.modeled_seconds(rows, 30522, width, 2)
        assert strategies.choose(rows, 30522, width, 2) == expected == min(seconds, key=seconds.get)


@pytest.mark.parametrize("change, error, match", [
    (dict(strategy="cublas"), ValueError, "strategy"),
    (dict(chunk_rows=0), ValueError, "chunk_rows"),
    (dict(chunk_rows=2.5), TypeError, "chunk_rows"),
])
def test_bad_strategy_arguments(device, change, error, match):
    with pytest.raises(error, match=match):
        ef.generator_loss_and_sample(*make_inputs(5, 11, 8, device=device), **change)


def test_an_outer_autocast_does_not_lower_the_precision_inside(device, strategy):
    """Autocast reaches torch ops called inside a custom op: the chunked design's GEMMs must stay fp32 (same
    loss, samples and gradients as without autocast, bitwise) when the caller's inputs are fp32."""
    inputs = make_inputs(37, 203, 64, device=device, seed=18, zero_rows=(5,))
    expected = kernel_loss_and_grads(*inputs, seed=6, **strategy)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        loss, samples, grads = kernel_loss_and_grads(*inputs, seed=6, **strategy)
    assert torch.equal(loss, expected[0]) and torch.equal(samples, expected[1])
    for grad, other in zip(grads, expected[2]):
        assert torch.equal(grad, other)


# ---------------------------------------------------------------------------------------------- fused tiling


def test_base_width_on_a_tiny_vocabulary(device, strategy):
    """E = 768 (ELECTRA-Base's head), walked in E chunks by the fused design: loss, gradients and samples."""
    inputs = make_inputs(9, 67, 768, device=device, seed=17, zero_rows=(3,))
    loss, samples, grads = kernel_loss_and_grads(*inputs, seed=4, **strategy)
    truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
    assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
    assert torch.equal(samples, reference.generator_loss_and_sample(*inputs, seed=4)[1])


def test_fused_accumulators_across_many_tiles(device):
    """The fused design's global accumulators over several tiles: the forward's g rescaled over several
    vocabulary tiles in each of several splits, the backward's dW over several row tiles, E = 100 not a multiple
    of the E chunk (a partial last chunk), padding rows with extreme values, disallow_correct; samples bitwise
    the reference's."""
    import triton

    from electra_fast.kernels import generator_head as kernel

    # Several tiles per split need more rows on a GPU, whose launcher splits the vocabulary over its SMs.
    M, V, E = (150, 700, 100) if torch.device(device).type == "cpu" else (4096, 2000, 100)
    tiles = kernel.tiles_for(torch.float32)
    row_programs = triton.cdiv(M, tiles.forward_block_m)
    splits, v_per_split = kernel._vocab_splits(row_programs, V, tiles.forward_block_v, torch.device(device))
    assert splits > 1 and v_per_split >= 3 * tiles.forward_block_v  # several splits of several tiles
    assert M > 2 * tiles.backward_block_m and E % tiles.block_e != 0 and E > tiles.block_e
    padding = (0, 64, M - 1)
    inputs = make_inputs(M, V, E, device=device, seed=19, zero_rows=padding)
    inputs[0][list(padding)] = 1e4
    for disallow_correct in (False, True):
        loss, samples, grads = kernel_loss_and_grads(*inputs, seed=21, strategy="fused",
                                                     disallow_correct=disallow_correct)
        truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
        assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
        assert torch.count_nonzero(grads[0][list(padding)]) == 0
        expected = reference.generator_loss_and_sample(*inputs, seed=21, disallow_correct=disallow_correct)[1]
        if torch.device(device).type == "cpu":
            assert torch.equal(samples, expected)
        else:  # many rows: a near-tie may round apart (docs/design.md §5.4)
            assert (samples == expected).float().mean().item() >= 0.999
        if disallow_correct:
            assert not (samples == inputs[3]).any()


def test_fused_tiles_are_wgmma_shaped_and_do_not_depend_on_the_width():
    """The GPU tiles of 16-bit inputs can run every product as wgmma on sm_90a (an M side of at least 64, whole
    warpgroups) at any E; fp32 (IEEE products on CUDA cores) cannot, and a 32-row tile could not."""
    import dataclasses

    from electra_fast.kernels import generator_head as kernel

    for dtype in (torch.float16, torch.bfloat16):
        assert kernel.has_wgmma(kernel.tiles_for_gpu(dtype), dtype)
    assert not kernel.has_wgmma(kernel.tiles_for_gpu(torch.float32), torch.float32)
    narrow = dataclasses.replace(kernel.tiles_for_gpu(torch.bfloat16), forward_block_m=32)
    assert not kernel.has_wgmma(narrow, torch.bfloat16)


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_fused_design_with_the_gpu_tiles_of_the_table(device, monkeypatch, arch):
    """The tile table's GPU tiles (fp32's and fp16's, which bf16 shares), forced under the interpreter on a
    small odd shape (partial tiles on every side, E not a multiple of the E chunk, several vocabulary splits):
    fp32 within 1e-5 of fp64, fp16 within 2x PyTorch's fp16 error, samples bitwise the reference's. The
    interpreter tests otherwise run the interpreter's tiles."""
    from electra_fast.kernels import generator_head as kernel

    monkeypatch.setattr(kernel, "tiles_for", lambda dtype: kernel.tiles_for_gpu(dtype, arch))
    inputs = make_inputs(150, 300, 80, device=device, seed=23, zero_rows=(3,))
    loss, samples, grads = kernel_loss_and_grads(*inputs, seed=5, strategy="fused")
    truth_loss, truth_grads = torch_loss_and_grads(*inputs, dtype=torch.float64)
    assert_close_to_fp64(loss, grads, truth_loss, truth_grads)
    assert torch.equal(samples, reference.generator_loss_and_sample(*inputs, seed=5)[1])
    hidden, weight, bias = (t.half() for t in inputs[:3])
    loss, _, grads = kernel_loss_and_grads(hidden, weight, bias, *inputs[3:], seed=5, strategy="fused")
    torch_loss, torch_grads = torch_loss_and_grads(hidden, weight, bias, *inputs[3:], dtype=torch.float16)
    truth_loss, truth_grads = torch_loss_and_grads(hidden, weight, bias, *inputs[3:], dtype=torch.float64)
    for name, value, low_precision, truth in zip(
        ("loss", "dh", "dW", "db"), (loss, *grads), (torch_loss, *torch_grads), (truth_loss, *truth_grads)
    ):
        assert_parity(value, low_precision, truth, f"{name} (fp16, {arch} tiles)",
                      slack=1e-5 * truth.abs().max().item())


def test_auto_never_picks_fused_tiles_without_wgmma(monkeypatch):
    from electra_fast.fused import generator_head_strategy as strategies

    assert strategies.choose(19 * 128, 30522, 128, 2) == "fused"
    monkeypatch.setattr(strategies, "fused_has_wgmma", lambda element_bytes: False)
    assert strategies.choose(19 * 128, 30522, 128, 2) == "chunked"


def test_auto_uses_the_peaks_a_gpu_run_measured(tmp_path):
    """benchmarks/results/<stamp>/rows.jsonl "machine" rows: the newest GPU one (that of the current device when
    it has one) replaces the data sheet; the CPU dry run's rows and runs without a machine row do not."""
    import json

    from electra_fast.fused import generator_head_strategy as strategies

    def write(stamp, *rows):
        folder = tmp_path / stamp
        folder.mkdir()
        (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"kind": "mach')

    assert strategies.peaks(str(tmp_path)) == strategies.DATA_SHEET_PEAKS  # nothing recorded
    write("2026-12-01-000000", {"kind": "machine", "device": "cpu", "matmul_dtype": "float32",
                                "matmul_tflops": 0.1, "copy_gbps": 10.0})
    strategies.peaks.cache_clear()
    assert strategies.peaks(str(tmp_path)) == strategies.DATA_SHEET_PEAKS  # a CPU dry run is no GPU peak
    h100 = {"kind": "machine", "device": "NVIDIA H100 80GB HBM3", "matmul_dtype": "bfloat16",
            "matmul_tflops": 700.0, "copy_gbps": 3000.0}
    h200 = dict(h100, device="NVIDIA H200", matmul_tflops=750.0, copy_gbps=4000.0)
    write("2026-12-02-000000", h100)
    write("2026-12-03-000000", {"kind": "stage", "name": "machine"}, h200)
    strategies.peaks.cache_clear()
    assert strategies.peaks(str(tmp_path)) == (750e12, 4000e9)  # the newest
    assert strategies.peaks(str(tmp_path), "NVIDIA H100 80GB HBM3") == (700e12, 3000e9)  # this device's own


def test_the_model_runs_on_the_current_peaks(monkeypatch):
    from electra_fast.fused import generator_head_strategy as strategies

    rows, vocab, width = 19 * 128, 30522, 128
    measured = (700e12, 3000e9)
    flops, nbytes = strategies.fused_work(rows, vocab, width, 2)
    seconds = strategies.modeled_seconds(rows, vocab, width, 2, machine=measured)
    assert seconds["fused"] == max(flops / measured[0], nbytes / measured[1])
    monkeypatch.setattr(strategies, "current_peaks", lambda: measured)
    assert strategies.modeled_seconds(rows, vocab, width, 2) == seconds
    assert strategies.choose(rows, vocab, width, 2) == min(seconds, key=seconds.get)
