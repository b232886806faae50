"""Pre-training with Hugging Face Trainer: examples/hf_trainer.py lowers the loss, a resume from a Trainer
checkpoint gives the same next losses, the saved discriminator loads for fine-tuning; DataCollatorForElectra
and ElectraMetricsCallback on their own."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, ElectraForSequenceClassification, TrainerControl, TrainerState

import electra_fast as ef
from electra_fast.tokenizer import train_wordpiece

pytest.importorskip("accelerate", reason="Trainer needs accelerate: pip install electra-fast[hf]")
pytest.importorskip("datasets", reason="the example builds a datasets.Dataset: pip install electra-fast[hf]")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ARGS = ["--steps", "6", "--save-steps", "3", "--batch-size", "4", "--max-length", "64",
                "--vocab-size", "1000", "--documents", "200"]


@pytest.fixture(scope="module")
def tokenizer():
    lines = ["the generator fills in masked tokens", "the discriminator spots the replaced ones",
             "electra trains both at once"] * 3
    return train_wordpiece(lines, 60)


def run_example(*args):
    spec = importlib.util.spec_from_file_location("hf_trainer_example", ROOT / "examples" / "hf_trainer.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.main([*EXAMPLE_ARGS, *args])


def logged_losses(trainer) -> dict:
    return {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}


def test_example_trains_resumes_exactly_and_saves_a_discriminator_for_fine_tuning(tmp_path, cpu_path):
    straight = run_example("--output-dir", str(tmp_path / "straight"))
    losses = logged_losses(straight)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[5] + losses[6] < losses[1] + losses[2] - 1.0, losses  # 41.2, 41.2 ... 38.5, 37.9 measured
    for entry in straight.state.log_history:
        if "loss" in entry:
            assert set(ef.ElectraMetricsCallback.METRICS) <= set(entry), entry
            assert 0.1 < entry["replaced_fraction"] < 0.2

    checkpoint = tmp_path / "straight" / "checkpoint-3"
    assert int(load_file(checkpoint / "model.safetensors")["seed_counter"]) == 3  # masks continue from step 4
    resumed = run_example("--output-dir", str(tmp_path / "resumed"), "--resume", str(checkpoint))
    resumed_losses = logged_losses(resumed)
    assert [resumed_losses[step] for step in (4, 5, 6)] == [losses[step] for step in (4, 5, 6)]

    output = tmp_path / "straight"
    classifier = ElectraForSequenceClassification.from_pretrained(str(output / "discriminator"), num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(str(output / "discriminator"))
    logits = classifier(**tokenizer(["The discriminator is the model to fine-tune."], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    pretrainer = ef.ElectraPretrainer.from_pretrained(str(output))  # the whole pre-trainer, to continue it
    assert pretrainer.seed_counter == 6
    assert torch.equal(pretrainer.discriminator.electra.encoder.layer[0].output.dense.weight,
                       straight.model.discriminator.electra.encoder.layer[0].output.dense.weight)


def row_tokens(batch: dict, row: int, tokenizer) -> list:
    length = int(batch["attention_mask"][row].sum())
    ids = batch["input_ids"][row, :length].tolist()
    return [token for token in ids if token not in (tokenizer.cls_token_id, tokenizer.sep_token_id)]


def test_packing_cuts_documents_into_cls_a_sep_b_sep_rows_and_loses_no_token(tokenizer):
    collator = ef.DataCollatorForElectra(tokenizer, max_length=12)
    long_document = [list(range(10, 30)), list(range(30, 37)), list(range(37, 60))]
    batch = collator([{"input_ids": long_document}, {"input_ids": [7, 8, 9]}])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    rows = batch["input_ids"].shape[0]
    assert rows >= 6 and batch["input_ids"].shape == (rows, 12) and batch["input_ids"].dtype == torch.int64
    tokens = [token for row in range(rows) for token in row_tokens(batch, row, tokenizer)]
    assert tokens == list(range(10, 60)) + [7, 8, 9]  # documents never share a row; nothing truncated
    for row in range(rows):
        length = int(batch["attention_mask"][row].sum())
        ids, segments = batch["input_ids"][row, :length], batch["token_type_ids"][row, :length]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        first_b = int((segments == 1).nonzero()[0]) if segments.any() else length
        assert ids[first_b - 1] == tokenizer.sep_token_id and (segments[first_b:] == 1).all()
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
    assert torch.equal(collator([{"input_ids": long_document}, {"input_ids": [7, 8, 9]}])["input_ids"],
                       batch["input_ids"])  # the same batch packs the same way


def test_tokenizer_output_with_special_tokens_and_tensors_packs_like_plain_ids(tokenizer):
    collator = ef.DataCollatorForElectra(tokenizer, max_length=32)
    texts = ["the generator fills in masked tokens", "electra trains both at once"]
    encoded = tokenizer(texts)  # [CLS] ... [SEP] around each
    plain = [{"input_ids": ids} for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    as_tensors = [{"input_ids": torch.tensor(ids)} for ids in encoded["input_ids"]]
    expected = collator(plain)
    for examples in ([{"input_ids": ids} for ids in encoded["input_ids"]], as_tensors):
        for key, value in collator(examples).items():
            assert torch.equal(value, expected[key]), key


def test_without_packing_each_example_is_one_truncated_row(tokenizer):
    collator = ef.DataCollatorForElectra(tokenizer, max_length=6, pack=False)
    batch = collator([{"input_ids": [10, 11, 12, 13, 14, 15, 16]}, {"input_ids": [[20], [21]]}])
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[cls, 10, 11, 12, 13, sep], [cls, 20, 21, sep, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert not batch["token_type_ids"].any()


def test_collator_errors_name_the_argument(tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        ef.DataCollatorForElectra(tokenizer, max_length=4)
    collator = ef.DataCollatorForElectra(tokenizer, max_length=16)
    with pytest.raises(ValueError, match=r"examples\[1\].*input_ids"):
        collator([{"input_ids": [5, 6]}, {"text": "raw text"}])
    with pytest.raises(ValueError, match="examples"):
        collator([{"input_ids": [tokenizer.cls_token_id, tokenizer.sep_token_id]}])

    class NoPad:
        cls_token_id, sep_token_id, pad_token_id = 1, 2, None

    with pytest.raises(ValueError, match="pad_token_id"):
        ef.DataCollatorForElectra(NoPad())


def test_metrics_callback_logs_the_means_of_the_training_forwards_since_the_last_log():
    torch.manual_seed(0)
    model = ef.ElectraPretrainer.from_preset("tiny", vocab_size=50, mask_token_id=4, special_token_ids=(0, 1, 2, 3),
                                             hidden_size=32, embedding_size=16, generator_hidden_size=16,
                                             num_layers=1, num_heads=2)
    ids = torch.randint(5, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    callback, state, control = ef.ElectraMetricsCallback(), TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control, model=model)
    with ef.use_backend("reference"):
        outputs = [model(ids, seed=seed) for seed in (1, 2)]
        model.eval()
        model(ids, seed=3)  # evaluation forwards are not training metrics
    logs = {"loss": 1.5}
    state.log_history.append({**logs, "step": 2})
    callback.on_log(None, state, control, logs=logs)
    for name in callback.METRICS:
        expected = (outputs[0][name] + outputs[1][name]).item() / 2
        assert logs[name] == pytest.approx(expected) and state.log_history[-1][name] == logs[name]
    eval_logs = {"eval_loss": 2.0}
    callback.on_log(None, state, control, logs=eval_logs)
    assert eval_logs == {"eval_loss": 2.0}
    callback.on_train_end(None, state, control)
    with pytest.raises(TypeError, match="ElectraPretrainer"):
        callback.on_train_begin(None, state, control, model=torch.nn.Linear(2, 2))


def test_trainer_evaluate_reports_the_loss_and_leaves_the_seed_counter_alone(tmp_path, tokenizer, cpu_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = ef.ElectraPretrainer.from_preset(
        "tiny", vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
        special_token_ids=tokenizer.all_special_ids, pad_token_id=tokenizer.pad_token_id, hidden_size=32,
        embedding_size=16, generator_hidden_size=16, num_layers=1, num_heads=2)
    texts = ["the generator fills in masked tokens and the discriminator spots the replaced ones"] * 8
    dataset = Dataset.from_dict({"text": texts}).map(lambda rows: tokenizer(rows["text"]), batched=True)
    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True)
    trainer = Trainer(model=model, args=args, eval_dataset=dataset,
                      data_collator=ef.DataCollatorForElectra(tokenizer, max_length=24))
    first, second = trainer.evaluate(), trainer.evaluate()
    assert 5 < first["eval_loss"] < 60 and first["eval_loss"] == second["eval_loss"]
    assert model.seed_counter == 0


def test_accelerate_save_state_and_load_state_keep_the_seed_counter(tmp_path):
    from accelerate import Accelerator

    def prepared():
        torch.manual_seed(0)
        model = ef.ElectraPretrainer.from_preset(
            "tiny", vocab_size=50, mask_token_id=4, special_token_ids=(0, 1, 2, 3), hidden_size=32,
            embedding_size=16, generator_hidden_size=16, num_layers=1, num_heads=2)
        accelerator = Accelerator(cpu=True)
        return accelerator, *accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))

    accelerator, model, optimizer = prepared()
    ids = torch.randint(5, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    with ef.use_backend("reference"):
        for _ in range(2):
            accelerator.backward(model(input_ids=ids).loss)
            optimizer.step()
            optimizer.zero_grad()
    accelerator.save_state(str(tmp_path))  # model.safetensors without the shared tensors' other names
    accelerator, restored, _ = prepared()
    accelerator.load_state(str(tmp_path))
    assert restored.seed_counter == 2
    for (name, expected), actual in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(expected, actual), name
