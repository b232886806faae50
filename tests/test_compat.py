"""electra_fast.compat.Electra against lucidrains' electra_pytorch.Electra: the README's example runs with
both, and the two agree in the statistics of their results (their random streams differ, so values do not);
Hugging Face models take electra-fast's fused step; arbitrary callables the ops that apply to them.

The comparisons need electra-pytorch, which pins transformers==3.0.2 (so no extra can require it): install it
with `pip install --no-deps electra-pytorch` (and `pip install reformer-pytorch` for its README's example);
without it they are skipped and the rest checks compat.Electra against the expected statistics.
"""

import math

import pytest
import torch
from torch import nn
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

from electra_fast import compat

pytestmark = pytest.mark.usefixtures("cpu_path")  # the fast CPU path, not the Triton interpreter (conftest.py)


def readme_example(Electra):
    """electra-pytorch's README example, as written there (only `results.loss`: the README still shows the
    loss as the return value, which became a Results tuple)."""
    from reformer_pytorch import ReformerLM

    torch.manual_seed(0)
    generator = ReformerLM(num_tokens=20000, dim=512, depth=1, max_seq_len=1024)
    discriminator = ReformerLM(num_tokens=20000, dim=512, depth=2, max_seq_len=1024)
    generator.token_emb = discriminator.token_emb
    generator.pos_emb = discriminator.pos_emb
    trainer = Electra(
        generator,
        discriminator,
        discr_dim=512,  # the embedding dimension of the discriminator
        discr_layer="reformer",  # the layer whose output predicts whether a token was replaced
        mask_token_id=2,
        pad_token_id=0,
        mask_prob=0.15,
    )
    data = torch.randint(0, 20000, (1, 1024))
    results = trainer(data)
    results.loss.backward()
    return trainer, results


def assert_alike(ours, theirs, vocab_size):
    """The same fields, shapes and dtypes; at initialisation the same magnitudes."""
    assert type(ours).__name__ == "Results" and ours._fields == theirs._fields
    for name in ours._fields:
        assert getattr(ours, name).shape == getattr(theirs, name).shape, name
        assert getattr(ours, name).dtype == getattr(theirs, name).dtype, name
    for results in (ours, theirs):
        assert_initial_statistics(results, vocab_size)
    assert abs(ours.mlm_loss.item() - theirs.mlm_loss.item()) < 0.5
    assert abs(ours.disc_loss.item() - theirs.disc_loss.item()) < 0.05
    # Replaced tokens (at initialisation nearly every masked one): 15 % in both.
    assert abs(ours.disc_labels.mean().item() - theirs.disc_labels.mean().item()) < 0.02


def electra_pytorch_or_skip():
    return pytest.importorskip("electra_pytorch", reason="pip install --no-deps electra-pytorch")


def assert_initial_statistics(results, vocab_size):
    """What an untrained ELECTRA gives: MLM loss near log(V), RTD loss near log(2), 15 % replaced."""
    torch.testing.assert_close(results.loss, results.mlm_loss + 50 * results.disc_loss)
    assert abs(results.mlm_loss.item() - math.log(vocab_size)) < 0.15 * math.log(vocab_size)
    assert 0.6 < results.disc_loss.item() < 0.8
    assert results.gen_acc.item() < 0.02 and 0.3 < results.disc_acc.item() < 0.7
    assert results.disc_labels.dtype == results.disc_predictions.dtype == torch.float32


@pytest.mark.slow
def test_electra_pytorch_readme_example_runs_alike_with_both_libraries():
    electra_pytorch = electra_pytorch_or_skip()
    pytest.importorskip("reformer_pytorch", reason="pip install reformer-pytorch")
    their_trainer, theirs = readme_example(electra_pytorch.Electra)
    our_trainer, ours = readme_example(compat.Electra)
    assert not our_trainer.fused  # Reformer models: the callables path
    assert_alike(ours, theirs, vocab_size=20000)
    assert ours.disc_labels.sum() == theirs.disc_labels.sum() == 154  # ceil / round of 0.15 * 1024, all replaced
    assert our_trainer.discriminator[1].weight.grad is not None  # Linear(discr_dim, 1) on the reformer layer
    assert our_trainer.generator.token_emb.weight.grad is not None
    their_state = their_trainer.state_dict()
    assert set(our_trainer.state_dict()) == set(their_state) | {"seed_counter"}
    our_trainer.load_state_dict(their_state)  # strict: electra-pytorch's checkpoints load


class LogitsAdapter(nn.Module):
    """How electra-pytorch's own pre-training script wraps Hugging Face models."""

    def __init__(self, adaptee):
        super().__init__()
        self.adaptee = adaptee

    def forward(self, *args, **kwargs):
        return self.adaptee(*args, **kwargs)[0]


def hf_models(vocab_size=1000):
    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, embedding_size=32, num_hidden_layers=2, max_position_embeddings=128)
    generator = ElectraForMaskedLM(ElectraConfig(hidden_size=32, num_attention_heads=1, intermediate_size=128,
                                                 **common))
    discriminator = ElectraForPreTraining(ElectraConfig(hidden_size=64, num_attention_heads=2,
                                                        intermediate_size=256, **common))
    generator.electra.embeddings.word_embeddings = discriminator.electra.embeddings.word_embeddings  # as they tie
    return generator, discriminator


def padded_batch(vocab_size=1000, rows=8, length=128):
    ids = torch.randint(5, vocab_size, (rows, length), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 1, 2
    ids[0, 100:] = 0  # padding
    return ids


HF_OPTIONS = dict(mask_token_id=3, pad_token_id=0, mask_ignore_token_ids=[1, 2])


def test_hugging_face_models_take_the_fused_step():
    ids = padded_batch()
    trainer = compat.Electra(*hf_models(), **HF_OPTIONS)
    assert trainer.fused and trainer.objective.embedding_sharing == "tied"
    results = trainer(ids, attention_mask=(ids != 0).long())
    assert_initial_statistics(results, vocab_size=1000)
    assert not results.disc_labels[0, 100:].any()  # padding is never replaced
    assert not results.disc_labels[:, [0, -1]].any()  # nor the ignored [CLS] and [SEP]
    assert 0.13 < results.disc_labels[ids != 0].mean().item() < 0.16
    results.loss.backward()
    assert trainer.discriminator.discriminator_predictions.dense.weight.grad is not None
    assert trainer.generator.electra.embeddings.word_embeddings.weight.grad is not None
    with pytest.raises(TypeError, match="output_hidden_states"):
        trainer(ids, output_hidden_states=True)


def test_hugging_face_models_match_electra_pytorch_wrapping_them_as_its_pretraining_script_does():
    electra_pytorch = electra_pytorch_or_skip()
    ids = padded_batch()
    generator, discriminator = hf_models()
    theirs = electra_pytorch.Electra(LogitsAdapter(generator), LogitsAdapter(discriminator), **HF_OPTIONS)(ids)
    ours = compat.Electra(*hf_models(), **HF_OPTIONS)(ids)
    assert_alike(ours, theirs, vocab_size=1000)


def toy_models(vocab_size=50, width=16):
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Embedding(vocab_size, width), nn.Linear(width, vocab_size))
    discriminator = nn.Sequential(nn.Embedding(vocab_size, width), nn.Linear(width, 1))
    return generator, discriminator


def test_callables_are_reproducible_by_seed_and_learn_through_both_losses():
    trainer = compat.Electra(*toy_models(), mask_token_id=3, pad_token_id=0, mask_ignore_token_ids=[1, 2])
    assert not trainer.fused
    ids = padded_batch(vocab_size=50, rows=4, length=32)
    first = trainer(ids)
    assert trainer.seed_counter == 1
    again, other = trainer(ids, seed=0), trainer(ids, seed=1)
    assert torch.equal(first.disc_labels, again.disc_labels) and torch.equal(first.loss, again.loss)
    assert not torch.equal(first.disc_labels, other.disc_labels)
    assert trainer.seed_counter == 1  # an explicit seed does not count
    first.loss.backward()
    assert trainer.generator[1].weight.grad.abs().sum() > 0 and trainer.discriminator[1].weight.grad.abs().sum() > 0
    replaced_fraction = first.disc_labels[ids != 0].mean().item()
    assert 0.1 < replaced_fraction < 0.2


def test_a_hidden_layer_of_the_discriminator_feeds_a_linear_logit_as_with_discr_dim():
    class Network(nn.Module):  # a stand-in for the README's ReformerLM: an embedding, a named layer, logits
        def __init__(self, vocab_size=50, width=16):
            super().__init__()
            self.token_emb = nn.Embedding(vocab_size, width)
            self.encoder = nn.Linear(width, width)
            self.to_logits = nn.Linear(width, vocab_size)

        def forward(self, ids):
            return self.to_logits(torch.relu(self.encoder(self.token_emb(ids))))

    torch.manual_seed(0)
    generator, discriminator = Network(), Network()
    generator.token_emb = discriminator.token_emb
    trainer = compat.Electra(generator, discriminator, discr_dim=16, discr_layer="encoder", mask_token_id=3)
    results = trainer(padded_batch(vocab_size=50, rows=4, length=32))
    assert results.disc_predictions.shape == (4, 32)
    results.loss.backward()
    assert trainer.discriminator[1].weight.grad is not None and discriminator.encoder.weight.grad is not None
    assert discriminator.to_logits.weight.grad is None  # only the layer's output is used
    assert {name.split(".")[0] for name in trainer.state_dict()} == {"generator", "discriminator", "seed_counter"}
    assert "discriminator.0.net.encoder.weight" in trainer.state_dict()  # electra-pytorch's names


def test_bad_arguments_are_clear_errors():
    generator, discriminator = toy_models()
    with pytest.raises(ValueError, match="num_tokens"):
        compat.Electra(generator, discriminator, random_token_prob=0.1)
    with pytest.raises(ValueError, match="discr_layer"):
        compat.Electra(generator, discriminator, discr_dim=16, discr_layer="reformer")
    trainer = compat.Electra(lambda ids: {"logits": ids}, discriminator)
    with pytest.raises(TypeError, match="generator must return logits"):
        trainer(padded_batch(vocab_size=50, rows=2, length=16))
