"""apply_fast_electra keeps the losses and gradients of the HF models it patches."""

import copy

import pytest
import torch
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining, ElectraModel

import electra_fast as ef
from electra_fast.patch import apply_fast_electra

CONFIG = dict(vocab_size=97, embedding_size=32, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (3, 13), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    return ids, mask


def pair(cls):
    torch.manual_seed(0)
    model = cls(ElectraConfig(**CONFIG))
    return model, apply_fast_electra(copy.deepcopy(model), attention=False)


def assert_same_grads(a, b):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        if p.grad is None:
            assert q.grad is None or torch.count_nonzero(q.grad) == 0, name
        else:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_masked_lm_loss_and_grads_match_without_materialising_logits():
    plain, fast = pair(ElectraForMaskedLM)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5], labels[2, 1], labels[2, 4] = 7, 11, 13, 17
    expected = plain(ids, attention_mask=mask, labels=labels)
    got = fast(ids, attention_mask=mask, labels=labels)
    assert got.logits is None
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    expected.loss.backward()
    got.loss.backward()
    assert_same_grads(plain, fast)


def test_pretraining_loss_logits_and_grads_match():
    plain, fast = pair(ElectraForPreTraining)
    ids, mask = batch()
    labels = (torch.arange(ids.numel()).view_as(ids) % 3 == 0).long()
    expected = plain(ids, attention_mask=mask, labels=labels)
    got = fast(ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-5)
    expected.loss.backward()
    got.loss.backward()
    assert_same_grads(plain, fast)


def test_without_labels_the_original_forward_runs():
    plain, fast = pair(ElectraForMaskedLM)
    ids, mask = batch()
    torch.testing.assert_close(fast(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits)


def test_patching_twice_is_harmless_and_other_models_are_rejected():
    _, fast = pair(ElectraForPreTraining)
    assert apply_fast_electra(fast, attention=False) is fast
    apply_fast_electra(ElectraModel(ElectraConfig(**CONFIG)), attention=False)  # no loss to patch, fine
    with pytest.raises(TypeError, match="Electra"):
        apply_fast_electra(torch.nn.Linear(2, 2))


def test_exported_from_the_package():
    assert ef.apply_fast_electra is apply_fast_electra


def test_attention_is_switched_to_electra_fast():
    torch.manual_seed(0)
    model = apply_fast_electra(ElectraForPreTraining(ElectraConfig(**CONFIG)))
    assert model.config._attn_implementation == "electra_fast"
