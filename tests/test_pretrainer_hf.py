"""ElectraPretrainer as a Hugging Face model: a ModelOutput, the step seed from a counter in the state dict
(and checkpoints written before the counter still load strictly), save_pretrained / from_pretrained."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import ElectraForPreTraining, PreTrainedModel
from transformers.utils import ModelOutput

import electra_fast as ef

VOCAB = 97
SPECIALS = dict(mask_token_id=4, special_token_ids=(0, 1, 2, 3))
SIZES = dict(hidden_size=32, embedding_size=16, generator_hidden_size=16, num_layers=1, num_heads=2)
METRICS = ("mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "replaced_fraction",
           "discriminator_precision", "discriminator_recall", "masked", "corrupted_ids", "rtd_logits")


@pytest.fixture(autouse=True)
def reference_backend():
    with ef.use_backend("reference"):  # fast at these sizes, and no Triton interpreter
        yield


def tiny(**kwargs):
    """Without dropout: torch's generator draws it, and these tests compare steps exactly."""
    torch.manual_seed(0)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ef.ElectraPretrainer.from_preset("tiny", vocab_size=VOCAB, **SPECIALS, **SIZES, config_kwargs=no_dropout,
                                            **kwargs)


def batch(rows=3, length=16):
    ids = torch.randint(5, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0
    return ids, mask


def test_output_is_a_model_output_with_the_loss_first_and_every_metric():
    model = tiny()
    ids, mask = batch()
    out = model(ids, mask, seed=3)
    assert isinstance(model, PreTrainedModel) and isinstance(out, ModelOutput)
    assert out["loss"] is out.loss and out[0] is out.loss and out.to_tuple()[0] is out.loss
    for name in METRICS:
        assert getattr(out, name) is not None, name
    torch.testing.assert_close(out.loss, out.mlm_loss + 50.0 * out.rtd_loss)


def test_trainer_style_call_with_keywords_and_extra_columns_equals_the_positional_call():
    model = tiny()
    ids, mask = batch()
    segments = torch.zeros_like(ids)
    segments[:, 8:] = 1
    a = model(ids, mask, segments, 5)
    b = model(input_ids=ids, attention_mask=mask, token_type_ids=segments, seed=5, special_tokens_mask=mask)
    assert torch.equal(a.rtd_logits, b.rtd_logits) and torch.equal(a.loss, b.loss)


def test_without_a_seed_training_forwards_count_and_evaluation_forwards_do_not():
    model = tiny()
    ids, mask = batch()
    counted = [model(ids, mask).loss for _ in range(3)]
    assert model.seed_counter == 3
    for seed, loss in enumerate(counted):
        assert torch.equal(loss, model(ids, mask, seed=seed).loss)  # an explicit seed leaves the counter alone
    assert model.seed_counter == 3
    model.eval()
    assert torch.equal(model(ids, mask).loss, model(ids, mask, seed=3).loss)  # the next step's seed, not counted
    assert model.seed_counter == 3


def test_each_process_of_a_distributed_run_gets_its_own_seeds(monkeypatch):
    model = tiny()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    model.seed_counter = 10
    assert [model.next_step_seed() for _ in range(2)] == [41, 45]


def test_the_counter_travels_in_the_state_dict_and_old_checkpoints_still_load_strictly():
    model = tiny()
    model.seed_counter = 7
    state = model.state_dict()
    assert state["seed_counter"].dtype == torch.int64 and int(state["seed_counter"]) == 7

    fresh = tiny()
    fresh.load_state_dict(state)  # strict
    assert fresh.seed_counter == 7

    old = {key: value for key, value in state.items() if key != "seed_counter"}  # `pretrain` checkpoints before
    fresh.seed_counter = 2
    result = fresh.load_state_dict(old)
    assert not result.missing_keys and not result.unexpected_keys
    assert fresh.seed_counter == 2  # kept
    ids, mask = batch()
    torch.testing.assert_close(fresh(ids, mask, seed=1).loss, model(ids, mask, seed=1).loss)


@pytest.mark.parametrize("sharing", ["tied", "gdes", "none"])
def test_save_pretrained_and_from_pretrained_restore_the_exact_pretrainer(tmp_path, sharing):
    model = tiny(embedding_sharing=sharing, mask_prob=0.2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.seed_counter = 12
    model.save_pretrained(str(tmp_path))

    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors", "discriminator", "generator"}
    assert json.loads((tmp_path / "config.json").read_text())["objective"]["mask_prob"] == 0.2
    saved = load_file(tmp_path / "model.safetensors")  # each shared tensor once
    assert len(saved) == len({id(t) for t in model.state_dict(keep_vars=True).values()})

    loaded = ef.ElectraPretrainer.from_pretrained(str(tmp_path))
    assert not loaded.training and loaded.objective == model.objective and loaded.seed_counter == 12
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    ids, mask = batch()
    model.eval()
    torch.testing.assert_close(loaded(ids, mask, seed=4).loss, model(ids, mask, seed=4).loss, rtol=0, atol=0)
    if sharing == "tied":  # the sharing itself is restored, not only the values
        assert loaded.discriminator.electra.embeddings is loaded.generator.electra.embeddings
    ElectraForPreTraining.from_pretrained(str(tmp_path / "discriminator"))


def test_save_pretrained_takes_the_keywords_trainer_passes(tmp_path):
    model = tiny()
    model.save_pretrained(str(tmp_path / "other"), state_dict=model.state_dict(), is_main_process=False)
    assert not (tmp_path / "other").exists()  # only the main process writes
    state = model.state_dict()
    state["seed_counter"] = torch.tensor(99)
    model.save_pretrained(str(tmp_path / "main"), state_dict=state, is_main_process=True, safe_serialization=True)
    assert ef.ElectraPretrainer.from_pretrained(str(tmp_path / "main")).seed_counter == 99


def test_from_pretrained_of_a_folder_from_before_config_json_needs_the_objective(tmp_path):
    model = tiny()
    model.save_pretrained(str(tmp_path))
    (tmp_path / "config.json").unlink()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="objective"):
        ef.ElectraPretrainer.from_pretrained(str(tmp_path))
    loaded = ef.ElectraPretrainer.from_pretrained(str(tmp_path), objective=model.objective)
    ids, mask = batch()
    torch.testing.assert_close(loaded(ids, mask, seed=2).loss, model.eval()(ids, mask, seed=2).loss)
    with pytest.raises(FileNotFoundError, match="generator"):
        ef.ElectraPretrainer.from_pretrained(str(tmp_path / "discriminator"))
