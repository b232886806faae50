"""Masking (docs/design.md §1.1): the fused kernel equals the reference bit for bit, and the reference does what ELECTRA
specifies, checked against ground truth computed here independently (counts, invariants, frequencies)."""


import numpy as np
import pytest
import torch
from scipy import stats

import electra_fast as ef
from electra_fast import ops, reference, rng
from electra_fast.contracts import MaskingOptions
from electra_fast.fused import masking as fused_masking
from electra_fast.kernels import masking as kernel

VOCAB = 1009  # not a power of two
PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIALS = (PAD, CLS, SEP)


def make_batch(lengths, seq_len, *, seed, dtype=torch.int64, device="cpu", special_rows=(), vocab=VOCAB):
    """[CLS] tokens [SEP] rows of the given real lengths, padded with PAD; rows in ``special_rows`` hold only
    specials. Returns (input_ids, attention_mask as int64)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), seq_len), generator=gen)
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.int64)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = PAD
        if length:
            ids[row, 0] = CLS
            ids[row, length - 1] = SEP
        if row in special_rows:
            ids[row, :length] = torch.tensor([CLS, SEP, MASK, PAD])[torch.arange(length) % 4]
    return ids.to(device=device, dtype=dtype), mask.to(device)


def assert_identical(got, expected):
    for name, g, e in zip(expected._fields, got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, \
            f"{name}: {g.dtype}{tuple(g.shape)} vs {e.dtype}{tuple(e.shape)}"
        assert torch.equal(g.cpu(), e.cpu()), f"{name} differs at {torch.nonzero(g.cpu() != e.cpu())[:5].tolist()}"


def kernel_vs_reference(ids, mask, **options):
    options = {"mask_token_id": MASK, "special_token_ids": SPECIALS, "vocab_size": VOCAB, **options}
    with ef.use_backend("triton"):
        got = ef.mask_tokens(ids, mask, **options)
    expected = reference.mask_tokens(ids.cpu(), None if mask is None else mask.cpu(), **options)
    assert_identical(got, expected)
    return expected


# ---------------------------------------------------------------- (a) kernel == reference, bit for bit


@pytest.mark.parametrize("seq_len", [1, 2, 7, 31, 128, 129, 333, 600])
@pytest.mark.parametrize("mode", ["exact", "bernoulli"])
def test_kernel_matches_reference_across_lengths(seq_len, mode, device):
    # Full, short (< 1/mask_prob), empty (all padding) and all-special rows in one batch.
    lengths = [seq_len, max(1, seq_len // 2), min(seq_len, 5), 0, seq_len, (seq_len * 2) // 3]
    ids, mask = make_batch(lengths, seq_len, seed=seq_len, device=device, special_rows=(4,))
    if seq_len % 2:  # int32 ids with a bool mask on half of the cases
        ids, mask = ids.to(torch.int32), mask.bool()
    kernel_vs_reference(ids, mask, mode=mode, random_token_prob=0.1, seed=1000 + seq_len)


@pytest.mark.gpu_check
@pytest.mark.parametrize("seed", [0, 1, 7, 2**31 - 1, 2**32 + 5, 2**62 + 11])
def test_kernel_matches_reference_across_seeds(seed, device):
    ids, mask = make_batch([45, 40, 9, 3, 45, 28, 1, 45], 45, seed=seed % 97, device=device)
    kernel_vs_reference(ids, mask, random_token_prob=0.15, mask_token_prob=0.7, seed=seed)
    kernel_vs_reference(ids, mask, mode="bernoulli", mask_prob=0.3, seed=seed)


def test_kernel_matches_reference_on_a_4096_token_row(device):
    ids, mask = make_batch([4096, 3001], 4096, seed=3, device=device)
    kernel_vs_reference(ids, mask, random_token_prob=0.1, seed=4096)


def test_kernel_matches_reference_without_attention_mask_and_with_uint8_mask(device):
    ids, mask = make_batch([50, 20, 50], 50, seed=5, device=device)
    kernel_vs_reference(ids, None, seed=5)
    kernel_vs_reference(ids, mask.to(torch.uint8), seed=6)


@pytest.mark.parametrize("max_predictions", [1, 3, 70])
def test_kernel_matches_reference_with_explicit_max_predictions(max_predictions, device):
    # 70 > L: trailing slots are padding; 1 and 3 clamp k below round(n_valid * p).
    ids, mask = make_batch([61, 61, 30, 0], 61, seed=max_predictions, device=device)
    kernel_vs_reference(ids, mask, mask_prob=0.4, max_predictions=max_predictions, random_token_prob=0.05, seed=9)
    kernel_vs_reference(ids, mask, mode="bernoulli", mask_prob=0.4, max_predictions=max_predictions, seed=9)


def test_kernel_matches_reference_at_probability_extremes(device):
    ids, mask = make_batch([40, 33, 12], 40, seed=8, device=device)
    kernel_vs_reference(ids, mask, mask_prob=1.0, mask_token_prob=0.0, random_token_prob=1.0, seed=1)
    kernel_vs_reference(ids, mask, mask_prob=1.0, mode="bernoulli", mask_token_prob=1.0, seed=2)
    kernel_vs_reference(ids, mask, mask_prob=1e-4, mask_token_prob=0.0, random_token_prob=0.0, seed=3)


def test_kernel_matches_reference_with_many_and_out_of_vocab_specials(device):
    # Nine distinct specials (the kernel's maximum), one of them >= vocab_size, small vocabulary so random ids
    # have to step over several specials.
    vocab = 23
    specials = (0, 1, 2, 5, 11, 12, 21, 40)
    ids = torch.randint(0, vocab, (5, 77), generator=torch.Generator().manual_seed(4)).to(device)
    with ef.use_backend("triton"):
        got = ef.mask_tokens(ids, mask_token_id=22, special_token_ids=specials, vocab_size=vocab,
                             mask_prob=0.5, mask_token_prob=0.2, random_token_prob=0.8, seed=11)
    expected = reference.mask_tokens(ids.cpu(), mask_token_id=22, special_token_ids=specials, vocab_size=vocab,
                                     mask_prob=0.5, mask_token_prob=0.2, random_token_prob=0.8, seed=11)
    assert_identical(got, expected)
    assert fused_masking.supports(ids, None, masking_options(77, specials, 22)) is None


def test_equal_keys_are_broken_by_position(device):
    """Seed 1244 draws the same key at columns 2082 and 2718 of row 0; with k ending between them only the
    earlier one is chosen (ties are far too rare in random tests to be exercised otherwise)."""
    seed, first, second, seq_len = 1244, 2082, 2718, 2719
    keys = rng.draw(seed, rng.Stream.MASK_KEYS, torch.arange(seq_len))
    assert keys[first] == keys[second]
    n_below = int((keys < keys[first]).sum())
    ids = torch.randint(200, VOCAB, (1, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    for k, expected in ((n_below + 1, (True, False)), (n_below + 2, (True, True))):
        out = kernel_vs_reference(ids, None, mask_prob=1.0, max_predictions=k, seed=seed)
        assert int(out.is_masked.sum()) == k
        assert (bool(out.is_masked[0, first]), bool(out.is_masked[0, second])) == expected


@pytest.mark.parametrize("block_rows", [1, 4])
def test_kernel_tiles_of_rows_match_reference(block_rows, device):
    """One row per program (the GPU launch), and several rows per program with a partial last tile."""
    ids, mask = make_batch([70, 12, 0, 70, 33], 70, seed=12, device=device)
    t_mask, t_random = reference.action_thresholds(0.8, 0.1)
    got = kernel.forward(ids, mask, seed=3, mask_token_id=MASK, special_ids=sorted({*SPECIALS, MASK}),
                         vocab_size=VOCAB, mask_prob=0.15, max_predictions=10, t_mask=t_mask, t_random=t_random,
                         use_random=True, bernoulli=False, block_rows=block_rows)
    expected = reference.mask_tokens(ids.cpu(), mask.cpu(), mask_token_id=MASK, special_token_ids=SPECIALS,
                                     vocab_size=VOCAB, max_predictions=10, mask_token_prob=0.8, random_token_prob=0.1,
                                     seed=3)
    assert_identical(reference.MaskedTokens(*got), expected)


def test_non_contiguous_ids_match_reference(device):
    ids, mask = make_batch([80, 80, 41], 80, seed=13, device=device)
    kernel_vs_reference(ids[:, ::2], mask[:, ::2], seed=4)


def masking_options(seq_len, special_token_ids, mask_token_id):
    return MaskingOptions.resolve(seq_len, mask_token_id=mask_token_id, special_token_ids=special_token_ids,
                                  mask_prob=0.15, max_predictions=None, mask_token_prob=0.85, random_token_prob=0.0,
                                  vocab_size=None, mode="exact", seed=0)


def test_unsupported_calls_fall_back_to_the_reference_with_a_warning():
    too_long = kernel.MAX_SEQ_LEN + 1
    long_ids = torch.zeros(1, too_long, dtype=torch.int64)
    assert "sequence length" in fused_masking.supports(long_ids, None, masking_options(too_long, SPECIALS, MASK))
    ten_specials = masking_options(128, range(200, 209), MASK)  # nine specials and [MASK]
    assert "special ids" in fused_masking.supports(long_ids[:, :128], None, ten_specials)
    ids = torch.randint(300, 400, (2, 10))
    ops._warned_fallbacks.clear()
    with ef.use_backend("triton"), pytest.warns(UserWarning, match=r"mask_tokens does not run on its Triton kernels: "
                                                "10 special ids") as caught:
        got = ef.mask_tokens(ids, mask_token_id=MASK, special_token_ids=range(200, 209), seed=1)
        ef.mask_tokens(ids, mask_token_id=MASK, special_token_ids=range(200, 209), seed=2)
    assert len(caught) == 1 and caught[0].filename == __file__  # once, at the caller's line
    assert_identical(got, reference.mask_tokens(ids, mask_token_id=MASK, special_token_ids=range(200, 209), seed=1))


# ---------------------------------------------------------------- (b) ground truth for the semantics


def expected_count(n_valid: int, n_candidates: int, mask_prob: float, max_predictions: int) -> int:
    """k = max(1, min(P, round(n_valid * p))) in float32, half to even; never more than the candidates."""
    k = int(np.round(np.float32(n_valid) * np.float32(mask_prob)))
    return min(max(1, min(max_predictions, k)), n_candidates)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_chosen_positions_follow_the_official_recipe(backend, device):
    # 30 and 70 valid tokens: 4.5 and 10.5 round half to even (to 4 and 10).
    lengths = [128, 128, 100, 64, 7, 3, 1, 0, 128, 2, 30, 70]
    ids, mask = make_batch(lengths, 128, seed=21, device=device, special_rows=(8,))
    ids_cpu = ids.cpu()
    max_predictions = reference.default_max_predictions(128, 0.15)
    assert max_predictions == 19  # the official P at L = 128
    with ef.use_backend(backend):
        out = ef.mask_tokens(ids, mask, mask_token_id=MASK, special_token_ids=SPECIALS, vocab_size=VOCAB,
                             random_token_prob=0.1, seed=5)
    out = reference.MaskedTokens(*(t.cpu() for t in out))
    assert out.positions.shape == out.targets.shape == out.weights.shape == (len(lengths), 19)
    assert out.positions.dtype == out.targets.dtype == torch.int64 and out.weights.dtype == torch.float32
    for row, length in enumerate(lengths):
        tokens = ids_cpu[row, :length].tolist()
        candidates = [i for i, t in enumerate(tokens) if t not in (*SPECIALS, MASK)]
        count = expected_count(length, len(candidates), 0.15, 19) if candidates else 0
        chosen = torch.nonzero(out.is_masked[row]).flatten().tolist()
        assert len(chosen) == count, (row, length)
        assert set(chosen) <= set(candidates)  # never special, never padding
        positions = out.positions[row, :count].tolist()
        assert positions == chosen  # ascending and no duplicates (chosen comes from a mask)
        assert out.weights[row].tolist() == [1.0] * count + [0.0] * (19 - count)
        assert out.positions[row, count:].eq(0).all() and out.targets[row, count:].eq(0).all()
        assert out.targets[row, :count].tolist() == [tokens[p] for p in positions]
        unchosen = ~out.is_masked[row]
        assert torch.equal(out.input_ids[row][unchosen], ids_cpu[row][unchosen])
        for p in positions:
            new = int(out.input_ids[row, p])
            assert new == MASK or new == tokens[p] or (0 <= new < VOCAB and new not in (*SPECIALS, MASK))
    assert out.input_ids.dtype == ids.dtype


def corrupt_many_rows(rows=1000, seq_len=128, **options):
    ids, mask = make_batch([seq_len] * rows, seq_len, seed=77)
    options = {"mask_token_id": MASK, "special_token_ids": SPECIALS, "vocab_size": VOCAB, "seed": 31, **options}
    with ef.use_backend("reference"):
        return ids, ef.mask_tokens(ids, mask, **options)


def assert_binomial(successes: int, trials: int, p: float, what: str):
    """successes ~ Binomial(trials, p): a two-sided test at 1e-6 (a correct sampler fails once in a million)."""
    p_value = stats.binomtest(successes, trials, p).pvalue
    assert p_value > 1e-6, \
        f"{what}: {successes}/{trials} = {successes / trials:.4f}, expected {p:.4f} (p={p_value:.1e})"


def test_mask_keep_random_fractions_are_binomial():
    ids, out = corrupt_many_rows(mask_token_prob=0.8, random_token_prob=0.1)
    original = ids[out.is_masked]
    corrupted = out.input_ids[out.is_masked]
    n = original.numel()
    n_allowed = VOCAB - 4
    masked = int((corrupted == MASK).sum())
    replaced = int(((corrupted != MASK) & (corrupted != original)).sum())
    assert_binomial(masked, n, 0.8, "[MASK] fraction")
    # A random id equals the original with probability 1 / n_allowed.
    assert_binomial(replaced, n, 0.1 * (1 - 1 / n_allowed), "random-id fraction")
    assert_binomial(n - masked - replaced, n, 0.1 + 0.1 / n_allowed, "kept fraction")


def test_random_ids_are_uniform_over_non_special_ids():
    vocab = 17
    ids = torch.randint(4, vocab, (1500, 40), generator=torch.Generator().manual_seed(2))
    with ef.use_backend("reference"):
        out = ef.mask_tokens(ids, mask_token_id=3, special_token_ids=(0, 1, 9), vocab_size=vocab, mask_prob=0.5,
                             mask_token_prob=0.0, random_token_prob=1.0, seed=8)
    drawn = out.input_ids[out.is_masked]
    allowed = [i for i in range(vocab) if i not in (0, 1, 3, 9)]
    assert set(drawn.unique().tolist()) == set(allowed)
    counts = torch.bincount(drawn, minlength=vocab)[allowed]
    assert stats.chisquare(counts.numpy()).pvalue > 1e-6


def test_every_candidate_position_is_equally_likely():
    ids, out = corrupt_many_rows(rows=1500, seq_len=64)
    per_column = out.is_masked[:, 1:63].sum(0).numpy()  # columns 0 and 63 are [CLS] / [SEP]
    assert out.is_masked[:, [0, 63]].sum() == 0
    assert stats.chisquare(per_column).pvalue > 1e-6


def test_same_seed_same_result_other_seed_different(device):
    ids, mask = make_batch([90, 60, 90], 90, seed=4, device=device)
    options = {"mask_token_id": MASK, "special_token_ids": SPECIALS, "vocab_size": VOCAB, "random_token_prob": 0.1}
    first = ef.mask_tokens(ids, mask, seed=123, **options)
    assert_identical(ef.mask_tokens(ids, mask, seed=123, **options), first)
    assert_identical(ef.mask_tokens(ids, mask, seed=torch.tensor(123), **options), first)
    other = ef.mask_tokens(ids, mask, seed=124, **options)
    assert not torch.equal(other.is_masked, first.is_masked)


def test_bernoulli_rate_is_mask_prob_and_count_varies():
    ids, out = corrupt_many_rows(rows=1000, seq_len=128, mode="bernoulli", mask_prob=0.2)
    assert out.positions.shape[1] == 128  # default P in Bernoulli mode: every position
    candidates = int((~torch.isin(ids, torch.tensor([*SPECIALS, MASK]))).sum())
    assert_binomial(int(out.is_masked.sum()), candidates, 0.2, "Bernoulli rate")
    counts = out.weights.sum(1)
    assert torch.equal(counts, out.is_masked.sum(1).float())
    assert counts.min() < counts.max()
    # Row counts are Binomial(126, 0.2): their variance is near 126 * 0.2 * 0.8 (not 0 as in exact mode).
    assert abs(float(counts.var()) / (126 * 0.2 * 0.8) - 1) < 0.2


def test_bernoulli_count_is_capped_by_max_predictions():
    _, out = corrupt_many_rows(rows=200, seq_len=128, mode="bernoulli", mask_prob=0.5, max_predictions=40)
    assert out.weights.sum(1).max() == 40
    assert torch.equal(out.is_masked.sum(1).float(), out.weights.sum(1))


# ---------------------------------------------------------------- (c) bad input


def call(ids, mask=None, **options):
    options = {"mask_token_id": MASK, "special_token_ids": SPECIALS, **options}
    return ef.mask_tokens(ids, mask, **options)


def test_ids_outside_the_vocabulary_are_an_error(device):
    ids, mask = make_batch([10, 10], 10, seed=1, device=device)
    ids[1, 3] = VOCAB
    with ef.use_backend("reference"), pytest.raises(ValueError, match=r"input_ids has ids outside \[0, 1009\)"):
        call(ids.cpu(), mask.cpu(), vocab_size=VOCAB)
    with ef.use_backend("triton"), pytest.raises(ValueError, match="input_ids has ids outside"):
        call(ids, mask, vocab_size=VOCAB, check_ids=True)
    with ef.use_backend("triton"):
        call(ids, mask, vocab_size=VOCAB)  # the kernel path does not synchronise to check by default


@pytest.mark.parametrize("mask_prob", [0.0, -0.1, 1.5])
def test_mask_prob_outside_zero_one_is_an_error(mask_prob):
    with pytest.raises(ValueError, match=r"mask_prob must be in \(0, 1\]"):
        call(torch.ones(2, 8, dtype=torch.int64) * 5, mask_prob=mask_prob)


def test_other_bad_arguments_name_the_argument():
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    with pytest.raises(ValueError, match="max_predictions must be >= 1"):
        call(ids, max_predictions=0)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 8\)"):
        call(ids, torch.ones(2, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="attention_mask is on meta but input_ids is on cpu"):
        call(ids, torch.ones(2, 8, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match="input_ids must not be empty"):
        call(torch.empty(0, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="input_ids must have dtype"):
        call(ids.float())
    with pytest.raises(ValueError, match="input_ids must have 2 dimensions"):
        call(ids[0])
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):
        call(ids, torch.ones(2, 8))
    with pytest.raises(ValueError, match="vocab_size is required when random_token_prob > 0"):
        call(ids, random_token_prob=0.1)
    with pytest.raises(ValueError, match="random_token_prob > 0 needs a non-special id"):
        call(ids, mask_token_id=2, special_token_ids=(0, 1), vocab_size=3, random_token_prob=0.1)
    with pytest.raises(ValueError, match="mode must be one of"):
        call(ids, mode="random")


# ---------------------------------------------------------------- (d) torch.compile


def test_custom_op_schema_and_fake_shapes(device):
    ids, mask = make_batch([9, 4], 9, seed=2, device=device)
    t_mask, t_random = reference.action_thresholds(0.85, 0.1)
    args = (ids, mask, 3, MASK, [PAD, CLS, SEP, MASK], VOCAB, 0.3, 5, t_mask, t_random, True, False)
    torch.library.opcheck(fused_masking.mask_tokens_op, args, test_utils=("test_schema", "test_faketensor"))


def test_compiles_with_fullgraph(device):
    ids, mask = make_batch([33, 20, 33], 33, seed=6, device=device)

    def masked_step(input_ids, attention_mask):
        out = ef.mask_tokens(input_ids, attention_mask, mask_token_id=MASK, special_token_ids=SPECIALS,
                             vocab_size=VOCAB, random_token_prob=0.1, seed=17)
        return out.input_ids * 2, out.positions, out.weights.sum()

    # On the CPU aot_eager (dynamo + fake tensors, what the custom op must support) without inductor's C++ build.
    compiled = torch.compile(masked_step, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager")
    for got, expected in zip(compiled(ids, mask), masked_step(ids, mask)):
        assert torch.equal(got, expected)
