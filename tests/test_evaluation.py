"""Held-out evaluation: the split, the metrics against brute force, and an evaluation that disturbs nothing."""

import itertools
import random

import pytest
import torch

from electra_fast import ElectraPretrainer
from electra_fast.data import EmbeddedCorpus, epoch_rng
from electra_fast.evaluation import (
    EVAL_FIELDS,
    balanced_accuracy,
    evaluate,
    is_held_out,
    random_replacements,
    roc_auc,
)


def brute_force_auc(scores, labels):
    pairs = [(p, n) for p, n in itertools.product(scores[labels], scores[~labels])]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_is_the_probability_a_positive_outscores_a_negative(seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (60,), generator=generator).float()  # many ties
    labels = torch.rand(60, generator=generator) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    assert roc_auc(torch.arange(4.0), torch.tensor([False, False, True, True])) == 1.0
    assert roc_auc(torch.arange(4.0), torch.tensor([True, True, False, False])) == 0.0
    assert roc_auc(scores, torch.zeros(60, dtype=torch.bool)) is None  # one class: undefined


def test_balanced_accuracy_averages_the_recall_of_both_classes():
    logits = torch.tensor([2.0, -1.0, -3.0, 0.5, -0.5, -2.0])
    labels = torch.tensor([True, True, False, False, False, False])
    assert balanced_accuracy(logits, labels) == pytest.approx((1 / 2 + 3 / 4) / 2)
    assert balanced_accuracy(-torch.ones(6), labels) == 0.5  # "nothing replaced" is chance, whatever the base rate
    assert balanced_accuracy(logits, torch.ones(6, dtype=torch.bool)) is None


def test_the_split_depends_only_on_the_text_and_holds_out_the_fraction():
    documents = list(EmbeddedCorpus().documents(epoch_rng(0, 0, "documents")))
    held = {tuple(d) for d in documents if is_held_out(d, 0.1)}
    reordered = list(EmbeddedCorpus().documents(epoch_rng(5, 3, "documents")))
    assert {tuple(d) for d in reordered if is_held_out(list(d), 0.1)} == held  # the same split in any order
    assert all(is_held_out(list(d), 0.2) for d in held)  # a larger fraction holds out a superset
    # The share held out is the fraction, within 6 binomial standard deviations.
    n = len(documents)
    assert abs(len(held) - 0.1 * n) < 6 * (n * 0.1 * 0.9) ** 0.5
    assert is_held_out(["a line"], 0.0) is False and is_held_out(["a line"], 1.0) is True


def test_random_replacements_change_only_scored_tokens_to_other_allowed_ids():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 50, (8, 40), generator=generator)
    scored = torch.rand(8, 40, generator=generator) < 0.8
    allowed = torch.arange(5, 50)
    corrupted = random_replacements(input_ids, scored, 0.3, allowed, torch.Generator().manual_seed(1))
    replaced = corrupted != input_ids
    assert not (replaced & ~scored).any() and torch.isin(corrupted, allowed).all()
    assert abs(replaced.sum().item() / scored.sum().item() - 0.3) < 0.1


def test_evaluation_is_repeatable_and_leaves_the_run_untouched():
    torch.manual_seed(0)
    model = ElectraPretrainer.from_preset("tiny", vocab_size=120, mask_token_id=4, special_token_ids=(0, 1, 2, 3),
                                          num_layers=1)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        input_ids = torch.randint(5, 120, (4, 24), generator=generator)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 17:] = 0
        input_ids[:, 0], input_ids[attention_mask == 0] = 2, 0
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask,
                        "token_type_ids": torch.zeros_like(input_ids)})
    model.train()
    rng_before, python_before = torch.get_rng_state(), random.getstate()
    first = evaluate(model, batches, torch.device("cpu"), None, seed=3)
    assert model.training and torch.equal(torch.get_rng_state(), rng_before) and random.getstate() == python_before
    assert evaluate(model, batches, torch.device("cpu"), None, seed=3) == first
    assert set(first) == set(EVAL_FIELDS) and all(value is not None for value in first.values())
    assert 0 <= first["eval_mlm_accuracy"] <= 1 and first["eval_mlm_loss"] == pytest.approx(
        torch.log(torch.tensor(120.0)).item(), rel=0.2)  # an untrained generator is near uniform over 120 ids
