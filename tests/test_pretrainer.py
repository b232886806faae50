"""ElectraPretrainer: sharing really shares, training lowers the loss, one step equals a hand-written step
on the Hugging Face modules."""

import pytest
import torch
import torch.nn.functional as F

import electra_fast as ef
from electra_fast import reference
from electra_fast.optim import build_optimizer_and_scheduler, linear_warmup_decay, parameter_groups
from electra_fast.pretrainer import GDESWordEmbedding

VOCAB = 211
SPECIALS = dict(mask_token_id=4, special_token_ids=(0, 1, 2, 3))
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_batch(batch=4, length=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=gen)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    mask = torch.ones_like(ids)
    mask[1, length // 2:] = 0  # one right-padded row
    ids[1, length // 2:] = 0
    ids[1, length // 2 - 1] = 2
    return ids, mask


def tiny(**kwargs):
    torch.manual_seed(0)
    return ef.ElectraPretrainer.from_preset("tiny", vocab_size=VOCAB, num_layers=1, **SPECIALS, **kwargs)


def test_tied_sharing_uses_the_same_parameters():
    model = tiny()
    gen_emb = model.generator.electra.embeddings
    disc_emb = model.discriminator.electra.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        pairs = zip(getattr(gen_emb, name).named_parameters(), getattr(disc_emb, name).named_parameters())
        for (pname, p_gen), (_, p_disc) in pairs:
            assert p_gen is p_disc, f"{name}.{pname} is not shared"
    assert model.generator.generator_lm_head.weight is gen_emb.word_embeddings.weight
    # Each shared parameter is counted and optimised once.
    ids = {id(p) for p in model.parameters()}
    assert len(ids) == len(list(model.parameters()))


def test_gdes_detaches_generator_embeddings_and_learns_a_zero_initialised_delta():
    model = tiny(embedding_sharing="gdes", gen_weight=0.0)
    gen_words = model.generator.electra.embeddings.word_embeddings
    disc_words = model.discriminator.electra.embeddings.word_embeddings
    assert isinstance(disc_words, GDESWordEmbedding)
    assert torch.count_nonzero(disc_words.delta) == 0
    assert torch.equal(disc_words.weight, gen_words.weight)
    disc_embeddings, gen_embeddings = model.discriminator.electra.embeddings, model.generator.electra.embeddings
    assert disc_embeddings.position_embeddings is gen_embeddings.position_embeddings
    ids, mask = make_batch()
    model(ids, mask, seed=3).loss.backward()
    # With gen_weight 0 only the discriminator's loss flows; it must not reach the generator's word embeddings.
    assert gen_words.weight.grad is None or torch.count_nonzero(gen_words.weight.grad) == 0
    assert disc_words.delta.grad is not None and torch.count_nonzero(disc_words.delta.grad) > 0


def test_no_sharing_keeps_separate_embeddings():
    model = tiny(embedding_sharing="none")
    gen_emb = model.generator.electra.embeddings
    disc_emb = model.discriminator.electra.embeddings
    assert gen_emb.word_embeddings.weight is not disc_emb.word_embeddings.weight
    assert model.generator.generator_lm_head.weight is gen_emb.word_embeddings.weight


def test_fifty_steps_on_a_fixed_batch_lower_the_loss_clearly():
    model = tiny(fused=False)  # the training dynamics, on the fast reference path; kernels agree by the test below
    ids, mask = make_batch(batch=8, length=32)
    optimizer, scheduler = build_optimizer_and_scheduler(model, lr=2e-3, warmup_steps=5, total_steps=50)
    losses = []
    for step in range(50):
        out = model(ids, mask, seed=step)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(float(out.loss.detach()))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.75 * first, (first, last)


def hand_written_loss(model, ids, mask, seed, token_type_ids=None):
    """The ELECTRA objective written directly on the HF modules, materialising the full MLM logits."""
    obj = model.objective
    masked = reference.mask_tokens(ids, mask, mask_token_id=obj.mask_token_id, special_token_ids=obj.special_token_ids,
                                   mask_prob=obj.mask_prob, vocab_size=VOCAB, seed=seed)
    logits = model.generator(masked.input_ids, attention_mask=mask, token_type_ids=token_type_ids).logits  # [B, L, V]
    rows = torch.arange(ids.shape[0])[:, None]
    slot_logits = logits[rows, masked.positions]  # [B, P, V]
    real = masked.weights > 0
    mlm = F.cross_entropy(slot_logits[real], masked.targets[real])
    flat = slot_logits.reshape(-1, VOCAB).detach()
    samples = (flat + reference.gumbel_noise(seed, flat.shape[0], VOCAB)).argmax(-1).view_as(masked.targets)
    corrupted = ids.clone()
    corrupted[rows.expand_as(masked.positions)[real], masked.positions[real]] = samples[real]
    labels = (corrupted != ids).long()
    rtd = model.discriminator(corrupted, attention_mask=mask, token_type_ids=token_type_ids, labels=labels).loss
    return obj.gen_weight * mlm + obj.disc_weight * rtd, mlm, rtd


def test_one_step_equals_a_hand_written_step_on_the_hf_modules():
    model = tiny(config_kwargs=NO_DROPOUT)
    twin = tiny(config_kwargs=NO_DROPOUT)
    twin.load_state_dict(model.state_dict())
    ids, mask = make_batch()
    segments = (torch.arange(ids.shape[1]) >= ids.shape[1] // 3).long().expand_as(ids)  # [CLS] A [SEP] B ...
    out = model(ids, mask, seed=11, token_type_ids=segments)
    expected, mlm, rtd = hand_written_loss(twin, ids, mask, seed=11, token_type_ids=segments)
    assert not torch.allclose(out.rtd_logits, model(ids, mask, seed=11).rtd_logits)  # segments reach the encoders
    torch.testing.assert_close(out.mlm_loss, mlm, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.rtd_loss, rtd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-5)
    out.loss.backward()
    expected.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_outputs_are_consistent_and_reproducible():
    model = tiny(config_kwargs=NO_DROPOUT)
    ids, mask = make_batch()
    a, b, c = model(ids, mask, seed=5), model(ids, mask, seed=5), model(ids, mask, seed=6)
    assert torch.equal(a.corrupted_ids, b.corrupted_ids) and torch.equal(a.loss, b.loss)
    assert not torch.equal(a.masked.is_masked, c.masked.is_masked)
    # Only chosen positions may change, and padding never does.
    assert torch.all(a.corrupted_ids[~a.masked.is_masked] == ids[~a.masked.is_masked])
    assert torch.all(a.corrupted_ids[mask == 0] == ids[mask == 0])
    for name in ("generator_accuracy", "discriminator_accuracy", "replaced_fraction"):
        assert 0.0 <= float(getattr(a, name)) <= 1.0


def test_fused_flag_false_uses_the_reference_and_agrees():
    ids, mask = make_batch()
    fused = tiny(config_kwargs=NO_DROPOUT)
    plain = tiny(config_kwargs=NO_DROPOUT, fused=False)
    plain.load_state_dict(fused.state_dict())
    a, b = fused(ids, mask, seed=2), plain(ids, mask, seed=2)
    assert torch.equal(a.corrupted_ids, b.corrupted_ids)
    torch.testing.assert_close(a.loss, b.loss, rtol=2e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.gpu_check
def test_fused_step_on_gpu_equals_the_reference_step():
    """The whole step through the Triton kernels on CUDA (masking, attention, generator head, RTD loss; forward
    and backward) against the reference path (PyTorch ops) on the same GPU, in fp32."""
    ids, mask = (t.cuda() for t in make_batch())
    fused = tiny(config_kwargs=NO_DROPOUT).cuda()
    plain = tiny(config_kwargs=NO_DROPOUT, fused=False).cuda()
    plain.load_state_dict(fused.state_dict())
    a, b = fused(ids, mask, seed=2), plain(ids, mask, seed=2)
    assert torch.equal(a.corrupted_ids, b.corrupted_ids)
    torch.testing.assert_close(a.loss, b.loss, rtol=2e-5, atol=1e-5)
    a.loss.backward()
    b.loss.backward()
    for (name, p), (_, q) in zip(fused.named_parameters(), plain.named_parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_generator_head_designs_agree_in_the_pretrainer():
    """objective.generator_head picks the Triton path's design; both corrupt the same tokens and give the same
    losses and gradients (to fp32 rounding); the choice is saved with the objective."""
    ids, mask = make_batch()
    outputs, grads = {}, {}
    for design in ("fused", "chunked"):
        model = tiny(config_kwargs=NO_DROPOUT, generator_head=design)
        assert model.config.objective["generator_head"] == design
        outputs[design] = model(ids, mask, seed=3)
        outputs[design].loss.backward()
        grads[design] = model.generator.electra.embeddings.word_embeddings.weight.grad
    fused, chunked = outputs["fused"], outputs["chunked"]
    assert torch.equal(fused.corrupted_ids, chunked.corrupted_ids)
    torch.testing.assert_close(fused.mlm_loss, chunked.mlm_loss, rtol=1e-5, atol=0)
    torch.testing.assert_close(grads["fused"], grads["chunked"], rtol=1e-4, atol=1e-6)


def test_parameter_groups_skip_layernorm_and_bias():
    model = tiny()
    decay, no_decay = parameter_groups(model, weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert not any(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays_to_zero():
    factors = [linear_warmup_decay(s, 4, 10) for s in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[10] == 0.0 and all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_presets_have_the_paper_sizes():
    from electra_fast.presets import electra_configs, get_preset

    gen, disc = electra_configs(get_preset("base"), 30522)
    sizes = (disc.hidden_size, disc.num_hidden_layers, disc.num_attention_heads, disc.embedding_size)
    assert sizes == (768, 12, 12, 768)
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size, gen.embedding_size) == (256, 4, 1024, 768)
    gen, disc = electra_configs(get_preset("small"), 30522)
    assert (disc.hidden_size, disc.embedding_size, gen.hidden_size, gen.num_attention_heads) == (256, 128, 64, 1)
    large = get_preset("large")
    assert (large.hidden_size, large.num_layers, large.generator_hidden_size, large.mask_prob) == (1024, 24, 256, 0.25)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embedding_sharing="both"), "embedding_sharing"),
        (dict(gen_weight=-1.0), "gen_weight"),
        (dict(generator_head="cublas"), "generator_head"),
        (dict(hidden_size=129), "divisible"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny(**kwargs)


def test_unknown_preset_and_missing_mask_token_are_clear_errors():
    with pytest.raises(ValueError, match="preset"):
        ef.ElectraPretrainer.from_preset("huge", vocab_size=VOCAB, **SPECIALS)
    with pytest.raises(ValueError, match="mask_token_id"):
        ef.ElectraObjective()
    with pytest.raises(ValueError, match="mask_token_id"):
        ef.ElectraPretrainer.from_preset("tiny", vocab_size=VOCAB, mask_token_id=VOCAB)


def test_gdes_export_materialises_plain_hf_models(tmp_path):
    from transformers import ElectraForPreTraining

    model = tiny(embedding_sharing="gdes")
    with torch.no_grad():
        model.discriminator.electra.embeddings.word_embeddings.delta.add_(0.5)
    model.save_pretrained(str(tmp_path))
    loaded = ElectraForPreTraining.from_pretrained(str(tmp_path / "discriminator"))
    expected = model.generator.electra.embeddings.word_embeddings.weight + 0.5
    torch.testing.assert_close(loaded.electra.embeddings.word_embeddings.weight, expected)


def test_fused_pretrainer_runs_electra_fast_attention_with_per_encoder_dropout_seeds():
    model = tiny()
    assert model.generator.config._attn_implementation == "electra_fast"
    assert model.discriminator.config._attn_implementation == "electra_fast"
    assert tiny(fused=False).discriminator.config._attn_implementation != "electra_fast"
    ids, mask = make_batch()
    # Attention dropout only (hidden dropout off): the same seed repeats the step, another seed changes it.
    model = tiny(config_kwargs=dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3))
    a, b, c = (model(ids, mask, seed=s).rtd_logits for s in (8, 8, 9))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
