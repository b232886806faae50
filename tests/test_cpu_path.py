"""The compiled CPU path (``electra_fast.cpu``) against the literal reference, which is its oracle: the same
Philox bits, the same samples and dropout masks, the same losses and gradients to fp32 rounding; dispatch,
the eager fallback, and the pre-trainer on either path.

Chunk sizes are shrunk in some tests so that small shapes cross several chunks (the draws' indices must not
depend on the chunking).
"""

import warnings

import pytest
import torch

import electra_fast as ef
from electra_fast import reference, rng
from electra_fast.contracts import AttentionOptions, GeneratorHeadOptions
from electra_fast.cpu import attention as cpu_attention
from electra_fast.cpu import compiler
from electra_fast.cpu import generator_head as cpu_head
from electra_fast.cpu.draws import key_tensor, philox_first_word, uniform


def cpu_generator_head(*tensors, **options):
    """The CPU path's generator head called as the reference is, with keywords."""
    return cpu_head.generator_loss_and_sample(*tensors, GeneratorHeadOptions(**options))


def cpu_attention_call(q, k, v, key_padding_mask=None, **options):
    """The CPU path's attention called as the reference is, with keywords."""
    return cpu_attention.attention(q, k, v, key_padding_mask, AttentionOptions(**options))


SEEDS = (0, 1, 2**32 - 1, 2**32 + 5, 2**62 + 12345, 2**63 - 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_philox_first_word_equals_the_rng_oracle_bitwise(seed):
    offsets = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 7, 2**62 - 1])
    index = (offsets[:, None] + torch.arange(64)[None, :]).reshape(-1)
    for stream in rng.Stream:
        expected = rng.draw(seed, stream, index)
        assert torch.equal(philox_first_word(key_tensor(seed), int(stream), index), expected), (seed, stream)


def test_uniform_equals_the_rng_oracle_on_edge_words():
    words = torch.tensor([0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 2, 2**32 - 1])
    words = torch.cat([words, torch.randint(0, 2**32, (1000,), generator=torch.Generator().manual_seed(0))])
    assert torch.equal(uniform(words), rng.uint32_to_uniform(words))


def head_inputs(rows=37, vocab=203, width=48, dtype=torch.float32, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=generator).to(dtype)
    weight = (torch.randn(vocab, width, generator=generator) * width**-0.5).to(dtype)
    bias_value = (torch.randn(vocab, generator=generator) * 0.1).to(dtype) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    weights = (torch.rand(rows, generator=generator) > 0.2).float()
    return hidden, weight, bias_value, targets, weights


def loss_samples_grads(fn, hidden, weight, bias, targets, weights, **options):
    leaves = [t if t is None else t.detach().clone().requires_grad_() for t in (hidden, weight, bias)]
    loss, samples = fn(*leaves, targets, weights, **options)
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(loss, present)
    return loss.detach(), samples, grads


@pytest.mark.parametrize("options", [
    dict(seed=3),
    dict(seed=2**40 + 9, temperature=0.7),
    dict(seed=5, disallow_correct=True),
], ids=["plain", "temperature", "disallow_correct"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_generator_head_matches_the_reference(monkeypatch, options, bias):
    monkeypatch.setattr(cpu_head, "CHUNK_ELEMENTS", 3 * 203 + 50)  # chunks of 3 rows
    inputs = head_inputs(bias=bias)
    loss, samples, grads = loss_samples_grads(cpu_generator_head, *inputs, **options)
    expected_loss, expected_samples, expected_grads = loss_samples_grads(reference.generator_loss_and_sample, *inputs,
                                                                         **options)
    assert samples.dtype == torch.int64 and samples.shape == (37,)
    # The Gumbel noise has the reference's bits; only a near-tie could round differently in the logs.
    assert (samples == expected_samples).float().mean().item() >= 0.999
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    if options.get("disallow_correct"):
        assert not (samples == inputs[3]).any()


def test_generator_head_on_many_rows_and_a_real_vocabulary_width():
    """V = 3001 over 300 rows: the samples of several chunks against the reference's, bit for bit."""
    inputs = head_inputs(rows=300, vocab=3001, width=16, seed=1)
    _, samples = cpu_generator_head(*inputs, seed=77)
    _, expected = reference.generator_loss_and_sample(*inputs, seed=77)
    assert (samples == expected).float().mean().item() >= 0.999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_generator_head_takes_low_precision_inputs_like_the_reference(dtype):
    inputs = head_inputs(dtype=dtype)
    loss, samples, grads = loss_samples_grads(cpu_generator_head, *inputs, seed=4)
    expected_loss, expected_samples, expected_grads = loss_samples_grads(reference.generator_loss_and_sample, *inputs,
                                                                         seed=4)
    assert loss.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    assert torch.equal(samples, expected_samples)  # both compute the logits in fp32 from the same rounded inputs
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for grad, expected in zip(grads, expected_grads):  # both round the same fp32 gradient to the input dtype
        torch.testing.assert_close(grad.float(), expected.float(), rtol=torch.finfo(dtype).eps, atol=1e-6)


def test_generator_head_keeps_fp32_under_an_outer_autocast():
    """Autocast reaches the torch ops inside a custom op: the head turns it off, so fp32 inputs give the same
    bits with or without a bf16 autocast around the call."""
    inputs = head_inputs(seed=5)
    expected = loss_samples_grads(cpu_generator_head, *inputs, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, samples, grads = loss_samples_grads(cpu_generator_head, *inputs, seed=2)
    assert torch.equal(loss, expected[0]) and torch.equal(samples, expected[1])
    assert all(torch.equal(a, b) for a, b in zip(grads, expected[2]))


def test_generator_head_without_real_slots_gives_zero_loss_and_zero_gradients():
    hidden, weight, bias, targets, _ = head_inputs()
    loss, _, grads = loss_samples_grads(cpu_generator_head, hidden, weight, bias, targets,
                                        torch.zeros(37))
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def attention_inputs(batch=3, heads=2, length=37, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, head_dim, generator=generator) for _ in range(3))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 20:] = False  # half padding
    mask[2] = False  # all padding: output 0, zero gradients
    return q, k, v, mask


def outputs_and_grads(fn, q, k, v, mask, **options):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, mask, **options)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return out.detach(), torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_attention_matches_the_reference_with_padding(monkeypatch, dropout_p):
    monkeypatch.setattr(cpu_attention, "CHUNK_ELEMENTS", 1000)  # several chunks, not a multiple of a row
    q, k, v, mask = attention_inputs()
    out, grads = outputs_and_grads(cpu_attention_call, q, k, v, mask, dropout_p=dropout_p, seed=9)
    expected, expected_grads = outputs_and_grads(reference.attention, q, k, v, mask, dropout_p=dropout_p, seed=9)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad[2]) == 0
    assert torch.count_nonzero(out[2]) == 0


def test_attention_dropout_keeps_exactly_the_reference_mask(monkeypatch):
    """With q = k = 0 and v = I the output is the dropped probability matrix itself: compare its zeros."""
    monkeypatch.setattr(cpu_attention, "CHUNK_ELEMENTS", 777)
    batch, heads, length = 2, 3, 29
    zeros = torch.zeros(batch, heads, length, length)
    identity = torch.eye(length).expand(batch, heads, length, length).contiguous()
    for seed in (0, 2**33 + 1):
        dropped = cpu_attention_call(zeros, zeros, identity, dropout_p=0.3, seed=seed)
        expected = reference.attention(zeros, zeros, identity, dropout_p=0.3, seed=seed)
        assert torch.equal(dropped == 0, expected == 0)
        torch.testing.assert_close(dropped, expected, rtol=1e-6, atol=0)


def test_ops_dispatch_cpu_tensors_to_the_cpu_path(cpu_path, monkeypatch):
    calls = []
    original = cpu_head.generator_loss_and_sample
    monkeypatch.setattr(cpu_head, "generator_loss_and_sample", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    inputs = head_inputs()
    ef.generator_loss_and_sample(*inputs, seed=1)
    assert calls == [1]
    with ef.use_backend("reference"):
        ef.generator_loss_and_sample(*inputs, seed=1)
    assert calls == [1]
    q, k, v, mask = attention_inputs()
    additive = torch.zeros(3, 1, 1, 37).masked_fill(~mask[:, None, None, :], float("-inf"))
    # An additive mask is the reference's to handle; both spellings give the same result.
    torch.testing.assert_close(ef.attention(q, k, v, additive), ef.attention(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_eager_fallback_warns_once_and_gives_the_same_bits(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    inputs = head_inputs()
    _, expected = cpu_generator_head(*inputs, seed=8)
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(compiler, "_fallback_warned", False)
    monkeypatch.setattr(cpu_head, "_lse_and_sample", compiler.compiled(cpu_head._lse_and_sample.fn))
    monkeypatch.setattr(cpu_head, "_grad_logits", compiler.compiled(cpu_head._grad_logits.fn))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss, samples = cpu_generator_head(*[t.requires_grad_() if t is not None and
                                             t.is_floating_point() and t.dim() == 2 else t
                                             for t in inputs], seed=8)
        loss.backward()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "runs eagerly" in messages[0] and "no C++ compiler here" in messages[0]
    assert torch.equal(samples, expected)


def test_compile_can_be_switched_off(monkeypatch):
    inputs = head_inputs()
    _, expected = cpu_generator_head(*inputs, seed=6)
    monkeypatch.setenv("ELECTRA_FAST_CPU_COMPILE", "0")
    assert torch.equal(cpu_generator_head(*inputs, seed=6)[1], expected)


def test_pretrainer_on_the_cpu_path_equals_the_reference_path(cpu_path):
    """One model, one batch, one seed: the CPU path and the literal reference (attention dropout included)."""
    torch.manual_seed(0)
    model = ef.ElectraPretrainer.from_preset(
        "tiny", vocab_size=211, mask_token_id=4, special_token_ids=(0, 1, 2), hidden_size=32, embedding_size=16,
        generator_hidden_size=16, num_heads=2, config_kwargs=dict(hidden_dropout_prob=0.0),
    )
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 211, (4, 23), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0

    def step():
        model.zero_grad()
        out = model(ids, mask, seed=12)
        out.loss.backward()
        return out, {name: p.grad.clone() for name, p in model.named_parameters()}

    out_fast, grads_fast = step()
    with ef.use_backend("reference"):
        out_slow, grads_slow = step()
    assert torch.equal(out_fast.masked.positions, out_slow.masked.positions)
    assert torch.equal(out_fast.corrupted_ids, out_slow.corrupted_ids)  # same samples
    torch.testing.assert_close(out_fast.loss, out_slow.loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads_slow.items():
        scale = max(grad.abs().max().item(), 1e-6)
        torch.testing.assert_close(grads_fast[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_torch_compile_of_the_whole_pretrainer_on_the_cpu_path(cpu_path):
    """What a CPU user tries next: torch.compile(model). The CPU path's custom ops run inside the compiled graph
    and give the eager step's masks, samples and loss."""
    torch.manual_seed(0)
    model = ef.ElectraPretrainer.from_preset(
        "tiny", vocab_size=97, mask_token_id=4, special_token_ids=(0, 1, 2), hidden_size=16, embedding_size=8,
        generator_hidden_size=8, num_heads=1, num_layers=1, config_kwargs=dict(hidden_dropout_prob=0.0),
    )
    ids = torch.randint(5, 97, (2, 11), generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(model)
    for seed in (3, 4):  # a new seed every step must not break the compiled graph
        expected = model(ids, seed=seed)
        out = compiled(ids, seed=seed)
        assert torch.equal(out.corrupted_ids, expected.corrupted_ids)
        torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-5)
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_torch_compile_of_a_patched_hugging_face_model_on_the_cpu_path(cpu_path):
    """apply_fast_electra'd models compile too and give the eager loss (the patch's selection of labelled
    positions is data-dependent: dynamo breaks the graph there, outside the ops)."""
    from transformers import ElectraConfig, ElectraForMaskedLM

    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=97, embedding_size=16, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    model = ef.apply_fast_electra(ElectraForMaskedLM(config))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 97, (3, 13), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.2, ids, -100)
    expected = model(ids, labels=labels).loss
    out = torch.compile(model)(ids, labels=labels).loss
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
