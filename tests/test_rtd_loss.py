"""Replaced-token-detection loss: the fused kernels against fp64 ground truth and the reference, the reference
against Hugging Face ``ElectraForPreTraining`` and hand-computed metrics, bad inputs, and torch.compile.

On a machine without a GPU the kernels run in the Triton interpreter (tests/conftest.py), so shapes are small
and odd: H = 80 and 200 are not multiples of the 128-wide feature chunks, N is not a multiple of the row blocks.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import electra_fast as ef
from electra_fast import reference
from electra_fast.backend import use_triton
from electra_fast.contracts import RTDOptions
from electra_fast.fused import rtd_loss as fused
from electra_fast.kernels import rtd_loss as kernels

from numerics import assert_parity, assert_reduction_parity

ACTIVATIONS = ("gelu", "gelu_new", "relu")
DTYPES = (torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=(pytest.mark.gpu, pytest.mark.gpu_check)))
PARAMETER_NAMES = ("hidden", "dense_weight", "dense_bias", "prediction_weight", "prediction_bias")


def fused_rtd_loss(*tensors, activation="gelu"):
    """The kernels' entry called as the reference is, with the activation as a keyword."""
    return fused.rtd_loss(*tensors, RTDOptions(activation))


def make_inputs(batch, seq_len, width, *, device, dtype=torch.float32, biases=True, vocab=6, seed=0):
    """Head parameters and a padded batch: row 1 is half padding and, when batch > 2, row 2 is all padding.

    Values are drawn in fp64 and rounded once to ``dtype``, so the fp64 ground truth sees the same inputs.
    A small vocabulary makes roughly 1 in ``vocab`` tokens unreplaced; logits spread over about +-4.
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    params = {
        "hidden": draw(batch, seq_len, width),
        "dense_weight": draw(width, width, scale=width**-0.5),
        "dense_bias": draw(width, scale=0.5) if biases else None,
        "prediction_weight": draw(1, width, scale=3.0 * width**-0.5),
        "prediction_bias": draw(1, scale=0.5) if biases else None,
    }
    original = torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
    replace = torch.rand(batch, seq_len, generator=generator) < 0.4
    corrupted = torch.where(replace.to(device), (original + 1) % vocab, original)
    mask = torch.ones(batch, seq_len, dtype=torch.int64)
    if batch > 1:
        mask[1, seq_len // 2:] = 0
    if batch > 2:
        mask[2] = 0
    return params, corrupted, original, mask.to(device)


def leaves(params, dtype=None):
    """Fresh leaf tensors requiring grad (cast to ``dtype`` if given); None stays None."""
    return {
        name: None if value is None else value.detach().to(dtype or value.dtype).clone().requires_grad_()
        for name, value in params.items()
    }


def run(fn, params, corrupted, original, mask, activation, grad_logits=None):
    """Forward ``fn`` and the gradients of loss (+ <logits, grad_logits>) for every parameter given."""
    output = fn(*params.values(), corrupted, original, mask, activation=activation)
    objective = output.loss
    if grad_logits is not None:
        objective = objective + (output.logits * grad_logits).sum()
    present = [name for name, value in params.items() if value is not None]
    grads = torch.autograd.grad(objective, [params[name] for name in present])
    return output, dict(zip(present, grads))


def plain_torch(hidden, dense_weight, dense_bias, prediction_weight, prediction_bias, corrupted, original, mask, *,
                activation):
    """The head and loss written out from torch.nn.functional in the parameters' dtype, independent of the
    reference's casts: the ground truth in fp64, PyTorch's own implementation in a 16-bit dtype (as transformers'
    head runs it: F.linear rounds the biased product once, where `hidden @ W.T + b` in bf16 would round the product
    before the bias cancels it and flip relu's gradient on such units)."""
    pre_activation = F.linear(hidden, dense_weight, dense_bias)
    if activation == "gelu":
        activated = F.gelu(pre_activation)
    elif activation == "relu":
        activated = F.relu(pre_activation)
    else:
        activated = F.gelu(pre_activation, approximate="tanh")
    logits = (activated * prediction_weight.reshape(-1)).sum(-1)
    if prediction_bias is not None:
        logits = logits + prediction_bias.reshape(())
    valid = mask.bool()
    labels = (corrupted != original) & valid
    per_token = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    loss = (per_token * valid).sum() / valid.sum().clamp(min=1)
    return reference.RTDOutput(loss, logits, labels, None, None, None, None)


def check_against_truth(params, corrupted, original, mask, activation, dtype, grad_logits=None, *,
                        implementation=fused_rtd_loss, same_dtype=reference.rtd_loss):
    """``implementation`` against the fp64 truth, within 2x ``same_dtype``'s error (PyTorch in the same dtype: the
    reference, whose H x H product is torch's); in 16 bits each check is also shown to reject a wrong result."""
    kernel, kernel_grads = run(implementation, leaves(params), corrupted, original, mask, activation, grad_logits)
    torch_out, torch_grads = run(same_dtype, leaves(params), corrupted, original, mask, activation, grad_logits)
    truth, truth_grads = run(plain_torch, leaves(params, torch.float64), corrupted, original, mask, activation,
                             None if grad_logits is None else grad_logits.double())
    negative = dtype != torch.float32

    assert kernel.loss.dtype == torch.float32 and kernel.logits.dtype == torch.float32
    assert kernel.logits.shape == corrupted.shape and kernel.labels.dtype == torch.bool
    assert torch.equal(kernel.labels, truth.labels)
    assert_parity(kernel.logits, torch_out.logits, truth.logits, "logits", negative=negative)
    # The loss and the prediction bias's gradient are means over the valid tokens: compare them with PyTorch's
    # per-token logit error carried through the mean (slopes 1 and 1/4), not with its luck in cancelling.
    valid = mask.bool()
    assert_reduction_parity(kernel.loss, torch_out.logits, truth.logits, valid, 1.0, truth.loss, "loss")
    for name, truth_grad in truth_grads.items():
        assert kernel_grads[name].dtype == params[name].dtype, name
        if name == "prediction_bias":
            assert_reduction_parity(kernel_grads[name], torch_out.logits, truth.logits, valid, 0.25, truth_grad,
                                    f"d {name}")
        else:
            assert_parity(kernel_grads[name], torch_grads[name], truth_grad, f"d {name}", negative=negative)
    if negative and grad_logits is None:  # the rule for means is not so loose that counting padding would pass
        logits, labels = kernel.logits.double(), truth.labels.double()
        padding_counted = [("loss", F.binary_cross_entropy_with_logits(logits, labels).float(), 1.0, truth.loss)]
        if "prediction_bias" in truth_grads:
            padding_counted.append(("d prediction_bias", (torch.sigmoid(logits) - labels).mean().to(dtype), 0.25,
                                    truth_grads["prediction_bias"]))
        for what, wrong, slope, exact in padding_counted:
            with pytest.raises(AssertionError, match=f"{what}: kernel error"):
                assert_reduction_parity(wrong, torch_out.logits, truth.logits, valid, slope, exact, what)
    if dtype == torch.float32:  # docs/design.md §5: fp32 matches the fp32 reference to ~1e-5 relative
        torch.testing.assert_close(kernel.loss, torch_out.loss, rtol=1e-5, atol=1e-6)
        for name in kernel_grads:
            scale = torch_grads[name].abs().max().item()
            torch.testing.assert_close(kernel_grads[name], torch_grads[name], rtol=1e-5, atol=1e-5 * scale)
    # Metrics: the counting logic, given the kernel's logits and the true labels, must give the same numbers.
    expected_metrics = reference.rtd_metrics(kernel.logits, truth.labels, mask.bool())
    for name, expected in zip(("accuracy", "precision", "recall", "replaced_fraction"), expected_metrics):
        assert torch.equal(getattr(kernel, name), expected), name
    return kernel, kernel_grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no_biases"])
def test_kernel_matches_fp64_ground_truth(device, dtype, activation, biases):
    params, corrupted, original, mask = make_inputs(3, 37, 200, device=device, dtype=dtype, biases=biases)
    kernel, grads = check_against_truth(params, corrupted, original, mask, activation, dtype)
    padding_rows = ~mask.bool()
    assert torch.all(grads["hidden"][padding_rows] == 0)  # padding tokens get no gradient


def test_reduction_rule_fails_a_loss_that_drops_one_token(device):
    """The rule for means is not so loose that it cannot fail: a loss that leaves out one valid token is caught."""
    params, corrupted, original, mask = make_inputs(3, 37, 200, device=device, dtype=torch.float16)
    kernel, _ = run(fused_rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    torch_out, _ = run(reference.rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    truth, _ = run(plain_torch, leaves(params, torch.float64), corrupted, original, mask, "gelu")
    valid = mask.bool()
    assert_reduction_parity(kernel.loss, torch_out.logits, truth.logits, valid, 1.0, truth.loss, "loss")
    one_fewer = valid.clone()
    one_fewer[0, 0] = False
    per_token = F.binary_cross_entropy_with_logits(kernel.logits, kernel.labels.float(), reduction="none")
    wrong_loss = per_token[one_fewer].mean()
    with pytest.raises(AssertionError, match="loss: kernel error"):
        assert_reduction_parity(wrong_loss, torch_out.logits, truth.logits, valid, 1.0, truth.loss, "loss")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bf16_on_the_cpu_within_twice_plain_pytorch_bf16(cpu_path, activation):
    """On the CPU (where the interpreter's bf16 is not to be trusted) ef.rtd_loss runs the reference, which has no
    separate CPU path: in bf16 it is held to the rule against PyTorch's own bf16 head, written out plainly."""
    params, corrupted, original, mask = make_inputs(3, 37, 200, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert not use_triton(corrupted.device)
    check_against_truth(params, corrupted, original, mask, activation, torch.bfloat16, implementation=ef.rtd_loss,
                        same_dtype=plain_torch)


@pytest.mark.parametrize("width", [64, 80, 2048])
def test_kernel_widths(device, width):
    """H at both ends of the supported range, and one that is neither a power of two nor a chunk multiple."""
    params, corrupted, original, mask = make_inputs(2, 9, width, device=device, seed=width)
    check_against_truth(params, corrupted, original, mask, "gelu", torch.float32)


def test_gradient_through_logits_too(device):
    """A loss that also uses the logits (d logits != 0, padding included) gets the right gradients."""
    params, corrupted, original, mask = make_inputs(3, 11, 80, device=device, seed=3)
    grad_logits = torch.randn(corrupted.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    check_against_truth(params, corrupted, original, mask, "gelu_new", torch.float32, grad_logits.float().to(device))


def test_many_row_blocks_per_backward_group(device, monkeypatch):
    """With few backward groups each program loops over several row blocks; results are unchanged."""
    params, corrupted, original, mask = make_inputs(3, 41, 80, device=device, seed=5)
    _, default_grads = run(fused_rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    monkeypatch.setattr(kernels, "MAX_BACKWARD_GROUPS", 2)
    check_against_truth(params, corrupted, original, mask, "gelu", torch.float32)
    _, grouped_grads = run(fused_rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    for name in default_grads:
        torch.testing.assert_close(grouped_grads[name], default_grads[name], rtol=1e-5, atol=1e-6)


def test_runs_are_bitwise_identical(device):
    params, corrupted, original, mask = make_inputs(3, 19, 80, device=device, seed=7)
    first_out, first = run(fused_rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    second_out, second = run(fused_rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    assert torch.equal(first_out.loss, second_out.loss) and torch.equal(first_out.logits, second_out.logits)
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_no_valid_token_gives_zero_loss_and_zero_gradients(device, dtype):
    params, corrupted, original, _ = make_inputs(2, 7, 80, device=device, dtype=dtype)
    mask = torch.zeros_like(corrupted)
    output, grads = run(ef.rtd_loss, leaves(params), corrupted, original, mask, "gelu")
    assert output.loss.item() == 0.0
    assert not output.labels.any()
    assert torch.isfinite(output.logits).all()
    for metric in (output.accuracy, output.precision, output.recall, output.replaced_fraction):
        assert metric.item() == 0.0
    for name, grad in grads.items():
        assert torch.all(grad == 0), name


def test_mask_forms_agree(device):
    """attention_mask None, all ones, bool, int and float masks select the same tokens."""
    params, corrupted, original, mask = make_inputs(2, 13, 80, device=device, seed=9)
    baseline = fused_rtd_loss(*params.values(), corrupted, original, None)
    ones = fused_rtd_loss(*params.values(), corrupted, original, torch.ones_like(mask))
    assert torch.equal(baseline.loss, ones.loss) and torch.equal(baseline.logits, ones.logits)
    as_int = fused_rtd_loss(*params.values(), corrupted, original, mask)
    for other in (mask.bool(), mask.float(), mask.to(torch.int32)):
        result = fused_rtd_loss(*params.values(), corrupted, original, other)
        assert torch.equal(result.loss, as_int.loss) and torch.equal(result.labels, as_int.labels)


def test_int32_ids_and_2d_hidden(device):
    """Ids may be int32; hidden may be a flat [N, H] batch of tokens."""
    params, corrupted, original, mask = make_inputs(1, 23, 80, device=device, seed=11)
    params["hidden"] = params["hidden"][0]
    expected = reference.rtd_loss(*params.values(), corrupted[0], original[0], mask[0])
    result = ef.rtd_loss(*params.values(), corrupted[0].int(), original[0].int(), mask[0])
    assert result.logits.shape == (23,)
    torch.testing.assert_close(result.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.logits, expected.logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["reference", "kernel"])
def test_flat_prediction_weight_and_length_one_sequences(device, implementation):
    """A prediction weight given as [H] and a bias as [1, 1] give logits of the ids' shape, even when L = 1."""
    params, corrupted, original, mask = make_inputs(3, 1, 64, device=device, seed=17)
    expected = reference.rtd_loss(*params.values(), corrupted, original, mask)
    params["prediction_weight"] = params["prediction_weight"].reshape(-1)
    params["prediction_bias"] = params["prediction_bias"].reshape(1, 1)
    fn = reference.rtd_loss if implementation == "reference" else fused_rtd_loss
    result = fn(*params.values(), corrupted, original, mask)
    assert result.logits.shape == corrupted.shape == (3, 1)
    torch.testing.assert_close(result.logits, expected.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(result.loss, expected.loss, rtol=1e-5, atol=1e-6)


def test_ops_dispatch_to_the_kernel(device, monkeypatch):
    """ef.rtd_loss runs the fused op wherever Triton can run, and the reference when that is forced."""
    params, corrupted, original, mask = make_inputs(2, 5, 64, device=device)
    calls = []
    original_head = fused.rtd_loss_head
    monkeypatch.setattr(fused, "rtd_loss_head", lambda *args: calls.append(1) or original_head(*args))
    ef.rtd_loss(*params.values(), corrupted, original, mask)
    assert calls == [1]
    with ef.use_backend("reference"):
        ef.rtd_loss(*params.values(), corrupted, original, mask)
    assert calls == [1]


# ---- metrics and loss on a hand-computed example -------------------------------------------------------------

def hand_example(device):
    """Six tokens (the last is padding) whose logits are set exactly by the parameters.

    dense = identity, relu, prediction weight = e_0, prediction bias = -1: logit = relu(hidden[:, 0]) - 1,
    so hidden[:, 0] = 3 gives logit 2 (predicted replaced) and hidden[:, 0] = -5 gives logit -1.
    """
    width = 64
    first_feature = torch.tensor([3.0, -5.0, 3.0, -5.0, 3.0, 3.0])
    hidden = torch.zeros(1, 6, width)
    hidden[0, :, 0] = first_feature
    prediction_weight = torch.zeros(1, width)
    prediction_weight[0, 0] = 1.0
    params = {
        "hidden": hidden, "dense_weight": torch.eye(width), "dense_bias": torch.zeros(width),
        "prediction_weight": prediction_weight, "prediction_bias": torch.tensor([-1.0]),
    }
    original = torch.tensor([[5, 6, 7, 8, 9, 10]])
    corrupted = torch.tensor([[1, 2, 7, 8, 3, 4]])  # tokens 0, 1, 4 replaced; token 5 too, but it is padding
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return {k: v.to(device) for k, v in params.items()}, corrupted.to(device), original.to(device), mask.to(device)


@pytest.mark.parametrize("implementation", ["reference", "kernel"])
def test_metrics_and_loss_on_hand_computed_example(device, implementation):
    params, corrupted, original, mask = hand_example(device)
    fn = reference.rtd_loss if implementation == "reference" else fused_rtd_loss
    output = fn(*params.values(), corrupted, original, mask, activation="relu")
    # valid tokens: logits [2, -1, 2, -1, 2], labels [1, 1, 0, 0, 1]
    expected_loss = (
        math.log1p(math.exp(-2)) + math.log1p(math.exp(1)) + math.log1p(math.exp(2)) + math.log1p(math.exp(-1))
        + math.log1p(math.exp(-2))
    ) / 5
    assert output.labels.tolist() == [[True, True, False, False, True, False]]
    assert output.logits.tolist() == [[2.0, -1.0, 2.0, -1.0, 2.0, 2.0]]
    assert output.loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert output.accuracy.item() == pytest.approx(3 / 5)  # tokens 0, 3, 4 right; 1 missed; 2 false alarm
    assert output.precision.item() == pytest.approx(2 / 3)  # predicted replaced: 0, 2, 4; right: 0, 4
    assert output.recall.item() == pytest.approx(2 / 3)  # replaced: 0, 1, 4; found: 0, 4
    assert output.replaced_fraction.item() == pytest.approx(3 / 5)


# ---- the reference (and the kernel) against Hugging Face ElectraForPreTraining ----------------------------------

def tiny_electra(activation):
    transformers = pytest.importorskip("transformers")
    config = transformers.ElectraConfig(
        vocab_size=40, embedding_size=64, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=96, max_position_embeddings=16, hidden_act=activation,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.ElectraForPreTraining(config).eval()


def hf_head_loss(model, sequence_output, labels, mask):
    """ElectraForPreTraining's own head and loss (BCEWithLogitsLoss over attention_mask == 1)."""
    logits = model.discriminator_predictions(sequence_output)
    active = mask == 1
    return torch.nn.BCEWithLogitsLoss()(logits[active], labels[active].float()), logits


@pytest.mark.parametrize("implementation", ["reference", "kernel"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "gelu_pytorch_tanh", "relu"])
def test_matches_hugging_face_electra_for_pretraining(device, implementation, activation):
    model = tiny_electra(activation)
    generator = torch.Generator().manual_seed(1)
    original = torch.randint(5, 40, (3, 11), generator=generator)
    replaced = torch.rand(3, 11, generator=generator) < 0.3
    corrupted = torch.where(replaced, torch.randint(5, 40, (3, 11), generator=generator), original)
    mask = torch.ones(3, 11, dtype=torch.int64)
    mask[1, 6:] = 0
    labels = ((corrupted != original) & mask.bool()).long()
    with torch.no_grad():
        hf = model(input_ids=corrupted, attention_mask=mask, labels=labels)
        sequence_output = model.electra(input_ids=corrupted, attention_mask=mask)[0]

    # HF's gradients of its own head, from the same sequence output.
    hf_hidden = sequence_output.clone().requires_grad_()
    model.zero_grad()
    hf_loss, _ = hf_head_loss(model, hf_hidden, labels, mask)
    hf_loss.backward()
    head = model.discriminator_predictions
    hf_grads = {
        "hidden": hf_hidden.grad, "dense_weight": head.dense.weight.grad, "dense_bias": head.dense.bias.grad,
        "prediction_weight": head.dense_prediction.weight.grad, "prediction_bias": head.dense_prediction.bias.grad,
    }

    params = {
        "hidden": sequence_output, "dense_weight": head.dense.weight, "dense_bias": head.dense.bias,
        "prediction_weight": head.dense_prediction.weight, "prediction_bias": head.dense_prediction.bias,
    }
    params = {name: value.detach().to(device).clone().requires_grad_() for name, value in params.items()}
    fn = reference.rtd_loss if implementation == "reference" else fused_rtd_loss
    output, grads = run(fn, params, corrupted.to(device), original.to(device), mask.to(device), activation)

    torch.testing.assert_close(output.loss.cpu(), hf.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.logits.cpu(), hf.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(output.labels.cpu(), labels.bool())
    for name, expected in hf_grads.items():
        scale = expected.abs().max().item()
        torch.testing.assert_close(grads[name].cpu().reshape(expected.shape), expected, rtol=1e-5, atol=1e-5 * scale)


# ---- bad inputs --------------------------------------------------------------------------------------------

def test_bad_inputs_are_rejected_with_clear_errors(device):
    params, corrupted, original, mask = make_inputs(2, 5, 64, device=device)
    args = list(params.values()) + [corrupted, original, mask]

    def call(replace=None, **kwargs):
        values = list(args)
        for index, value in (replace or {}).items():
            values[index] = value
        return ef.rtd_loss(*values, **kwargs)

    with pytest.raises(ValueError, match="activation"):
        call(activation="swish")
    with pytest.raises(ValueError, match="dense_weight"):
        call({1: params["dense_weight"][:, :32]})
    with pytest.raises(ValueError, match="dense_bias"):
        call({2: params["dense_bias"][:10]})
    with pytest.raises(ValueError, match="prediction_weight"):
        call({3: params["prediction_weight"][:, :10]})
    with pytest.raises(ValueError, match="prediction_bias"):
        call({4: torch.zeros(2, device=device)})
    with pytest.raises(ValueError, match="original_ids"):
        call({6: original[:, :3]})
    with pytest.raises(ValueError, match="attention_mask"):
        call({7: mask[:1]})
    with pytest.raises(ValueError, match="hidden"):
        call({0: params["hidden"][0, 0]})
    with pytest.raises(TypeError, match="hidden"):
        call({0: params["hidden"].long()})
    with pytest.raises(TypeError, match="corrupted_ids"):
        call({5: corrupted.float()})
    with pytest.raises(ValueError, match="corrupted_ids .*device|on meta"):
        call({5: corrupted.to("meta")})
    with pytest.raises(ValueError, match="activation"):
        kernels.forward(
            params["hidden"].reshape(-1, 64), torch.zeros(64), torch.zeros(64), torch.zeros(1),
            corrupted.reshape(-1), original.reshape(-1), mask.reshape(-1).to(torch.uint8), "swish",
        )


# ---- torch.compile -----------------------------------------------------------------------------------------

def test_torch_compile_fullgraph_forward_and_backward(device):
    params, corrupted, original, mask = make_inputs(2, 9, 80, device=device, seed=13)
    expected, expected_grads = run(reference.rtd_loss, leaves(params), corrupted, original, mask, "gelu")

    def step(hidden, dense_weight, dense_bias, prediction_weight, prediction_bias):
        output = ef.rtd_loss(hidden, dense_weight, dense_bias, prediction_weight, prediction_bias, corrupted, original,
                             mask, activation="gelu")
        return output.loss, output.logits, output.accuracy

    # On the CPU, aot_eager: dynamo + fake tensors + AOTAutograd (what the custom op must support) without
    # inductor's C++ build, which alone takes ~40 s here. On a GPU, inductor.
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager")
    compiled_params = leaves(params)
    loss, logits, accuracy = compiled(*compiled_params.values())
    loss.backward()
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, expected.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(accuracy, expected.accuracy)
    for name, value in compiled_params.items():
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(value.grad, expected_grads[name], rtol=1e-5, atol=1e-5 * scale)


# ---- GPU: realistic shapes ---------------------------------------------------------------------------------

@pytest.mark.gpu_check
@pytest.mark.gpu
@pytest.mark.parametrize("width", [256, 768, 1024])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_realistic_shapes_on_gpu(width, dtype):
    params, corrupted, original, mask = make_inputs(16, 512, width, device=torch.device("cuda"), dtype=dtype,
                                                    seed=width)
    check_against_truth(params, corrupted, original, mask, "gelu", dtype)
