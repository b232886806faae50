"""Prepared token shards and the training loader (docs/design.md §8.2): the same rows for any number of workers,
rows that are exactly the packed text, a seeded order that visits every row once per epoch, ranks that read
disjoint parts, and resuming by seeking."""

import json
import random

import numpy as np
import pytest
import torch

from electra_fast import data
from electra_fast.evaluation import is_held_out
from electra_fast.loader import TrainingBatches, held_out_batches, permute
from electra_fast.prepare_data import fast_line_encoder, prepare, prepared_cache
from electra_fast.shards import PreparedData, ids_dtype, model_inputs
from electra_fast.tokenizer import train_wordpiece

WORDS = "the a of to discriminator generator token replaced original masked model learns tells".split()


def write_corpus(path, n_documents=60, seed=0):
    rng = random.Random(seed)
    documents = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
                           for _ in range(rng.randint(1, 6))) for _ in range(n_documents)]
    path.write_text("\n\n".join(documents) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(WORDS * 3, vocab_size=80)


def prepare_quietly(corpus, tokenizer, directory, **options):
    settings = dict(max_length=24, packing="full", eval_fraction=0.2, workers=0)
    settings.update(options)
    return prepare(corpus, tokenizer, directory, progress=False, log=lambda message: None, **settings)


def shard_bytes(directory):
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.suffix in (".ids", ".meta")}


def test_the_output_is_the_same_for_any_number_of_workers(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setattr(data, "BLOCK_BYTES", 500)  # many blocks, so the workers really share the corpus
    corpus = data.open_corpus(str(write_corpus(tmp_path / "corpus.txt")))
    serial = prepare_quietly(corpus, tokenizer, tmp_path / "serial", workers=0)
    parallel = prepare_quietly(corpus, tokenizer, tmp_path / "parallel", workers=3)
    assert shard_bytes(tmp_path / "serial") == shard_bytes(tmp_path / "parallel")
    assert serial.manifest["splits"] == parallel.manifest["splits"]
    assert serial.manifest["fingerprint"] == parallel.manifest["fingerprint"]


@pytest.mark.parametrize("packing", ["full", "documents"])
def test_rows_are_the_packed_text_and_the_split_follows_the_hash(tmp_path, tokenizer, packing):
    corpus = data.open_corpus(str(write_corpus(tmp_path / "corpus.txt")))
    prepared = prepare_quietly(corpus, tokenizer, tmp_path / "prepared", packing=packing)
    documents = list(corpus.documents(data.epoch_rng(0, 0, "documents")))
    encode = fast_line_encoder(tokenizer)
    special = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    for split, held in (("train", False), ("heldout", True)):
        expected = [token for document in documents if is_held_out(document, 0.2) == held
                    for ids in encode(document) for token in ids]
        rows = prepared.rows(split)
        assert rows > 0
        batch = prepared.batch(split, np.arange(rows))
        ids, mask, types = batch["input_ids"], batch["attention_mask"].bool(), batch["token_type_ids"].bool()
        assert [t for t in ids[mask].tolist() if t not in special] == expected  # in order, nothing lost or added
        assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[~mask] == tokenizer.pad_token_id).all()
        lengths = mask.sum(1)
        assert (ids[torch.arange(rows), lengths - 1] == tokenizer.sep_token_id).all()
        assert not (types & ~mask).any()  # segment B only on real tokens, after the first [SEP]
        first_sep = (ids == tokenizer.sep_token_id).int().argmax(1)
        assert all(not types[r, : first_sep[r] + 1].any() and types[r, first_sep[r] + 1: lengths[r]].all()
                   for r in range(rows))
        assert prepared.manifest["splits"][split]["tokens"] == int(mask.sum())
    if packing == "full":  # rows cross documents, so nearly every slot holds a real token
        assert prepared.manifest["splits"]["train"]["tokens"] > 0.9 * prepared.rows("train") * 24


def test_shards_roll_over_and_ids_widen_for_large_vocabularies(tmp_path, tokenizer, monkeypatch):
    from electra_fast import shards

    corpus = data.open_corpus(str(write_corpus(tmp_path / "corpus.txt")))
    one = prepare_quietly(corpus, tokenizer, tmp_path / "one")
    writer_init = shards.ShardWriter.__init__
    monkeypatch.setattr(shards.ShardWriter, "__init__",
                        lambda self, *args, **kwargs: writer_init(self, *args, **{**kwargs, "rows_per_shard": 7}))
    many = prepare_quietly(corpus, tokenizer, tmp_path / "many")
    assert len(many.manifest["splits"]["train"]["shard_rows"]) > 2
    rows = np.array([0, 13, 6, 7, many.rows("train") - 1, 3])
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(one.batch("train", rows)[key], many.batch("train", rows)[key])
    assert ids_dtype(30522) == np.uint16 and ids_dtype(65536) == np.uint16 and ids_dtype(65537) == np.uint32


def test_pretrain_reuses_a_preparation_while_its_fingerprint_holds(tmp_path, tokenizer):
    corpus = data.open_corpus(str(write_corpus(tmp_path / "corpus.txt")))
    messages = []
    options = dict(max_length=24, packing="full", eval_fraction=0.2, workers=0, log=messages.append)
    first = prepared_cache(corpus, tokenizer, tmp_path / "cache", **options)
    stamp = (tmp_path / "cache" / "manifest.json").stat().st_mtime_ns
    again = prepared_cache(corpus, tokenizer, tmp_path / "cache", **options)
    assert again.manifest == first.manifest and (tmp_path / "cache" / "manifest.json").stat().st_mtime_ns == stamp
    assert len(messages) == 2  # "preparing" and "prepared", once
    other = prepared_cache(corpus, tokenizer, tmp_path / "cache", **{**options, "max_length": 32})
    assert other.max_length == 32 and len(messages) == 4


def test_permutation_visits_every_row_once_and_depends_on_seed_and_epoch():
    for n in (1, 2, 3, 10, 1000, 4099):
        order = permute(np.arange(n), n, seed=7, epoch=2)
        assert sorted(order.tolist()) == list(range(n))
    order = permute(np.arange(1000), 1000, 7, 2)
    assert not np.array_equal(order, np.arange(1000))
    assert not np.array_equal(order, permute(np.arange(1000), 1000, 8, 2))
    assert not np.array_equal(order, permute(np.arange(1000), 1000, 7, 3))
    assert np.array_equal(order[500:510], permute(np.arange(500, 510), 1000, 7, 2))  # any position on its own


@pytest.fixture
def prepared(tmp_path, tokenizer):
    corpus = data.open_corpus(str(write_corpus(tmp_path / "corpus.txt", n_documents=80)))
    return prepare_quietly(corpus, tokenizer, tmp_path / "prepared", eval_fraction=0.1)


def row_ids(batches, count):
    return [model_inputs(next(batches), torch.device("cpu"))["input_ids"] for _ in range(count)]


def test_an_epoch_reads_every_row_once_in_a_seeded_order(prepared):
    rows = prepared.rows("train")
    everything = prepared.batch("train", np.arange(rows))["input_ids"]
    stream = TrainingBatches(prepared, batch_size=1, seed=3)
    epoch = torch.cat(row_ids(stream, rows))
    assert sorted(map(tuple, epoch.tolist())) == sorted(map(tuple, everything.tolist()))
    assert stream.epoch == 1
    assert not torch.equal(epoch, torch.cat(row_ids(stream, rows)))  # the next epoch, another order
    other = torch.cat(row_ids(TrainingBatches(prepared, batch_size=1, seed=4), rows))
    assert not torch.equal(epoch, other)


def test_ranks_read_disjoint_parts_of_each_global_batch(prepared):
    single = row_ids(TrainingBatches(prepared, batch_size=6, seed=0), 5)
    ranks = [row_ids(TrainingBatches(prepared, batch_size=3, seed=0, rank=r, world_size=2), 5) for r in (0, 1)]
    for step in range(5):
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), single[step])


def test_batches_are_the_same_with_workers_and_resume_is_a_seek(prepared):
    reference = row_ids(TrainingBatches(prepared, batch_size=5, seed=1), 40)  # several epochs
    with_workers = TrainingBatches(prepared, batch_size=5, seed=1, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(reference, row_ids(with_workers, 40)))
    with_workers.close()
    for stop in (3, 27):
        original = TrainingBatches(prepared, batch_size=5, seed=1)
        row_ids(original, stop)
        state = json.loads(json.dumps(original.state_dict()))  # what a checkpoint keeps
        resumed = TrainingBatches(prepared, batch_size=5, seed=1, workers=stop % 2)
        resumed.load_state_dict(state)
        assert all(torch.equal(a, b) for a, b in zip(reference[stop:], row_ids(resumed, 10)))
        resumed.close()
    deep = TrainingBatches(prepared, batch_size=5, seed=1)
    deep.load_state_dict({"position": 10**8, "seed": 1, "rows": prepared.rows("train")})
    assert next(deep)["ids"].shape == (5, 24)  # 5 * 10**8 rows deep, found by arithmetic


def test_held_out_batches_and_a_checkpoint_of_other_data(prepared):
    batches = held_out_batches(prepared, sequences=7, batch_size=3)
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    stream = TrainingBatches(prepared, batch_size=2, seed=0)
    with pytest.raises(Exception, match="prepared rows"):
        stream.load_state_dict({"position": 1, "seed": 0, "rows": prepared.rows("train") + 1})
    with pytest.raises(Exception, match="older electra-fast"):
        stream.load_state_dict({"epoch": 0, "sequences_consumed": 3, "seed": 0})


def test_a_prepared_directory_is_checked(tmp_path):
    from electra_fast.errors import UserInputError

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserInputError, match="prepare it again"):
        PreparedData(tmp_path)


def test_prepare_data_then_pretrain_from_the_shards(tmp_path, capsys):
    from electra_fast import cli

    corpus = write_corpus(tmp_path / "corpus.txt", n_documents=120)
    prepared = tmp_path / "prepared"
    assert cli.main(["prepare-data", str(prepared), "--data", str(corpus), "--vocab-size", "90", "--max-length", "32",
                     "--workers", "2", "--eval-fraction", "0.1"]) == 0
    assert "real tokens fill" in capsys.readouterr().err
    run = ["pretrain", "--data", str(prepared), "--max-length", "32", "--eval-fraction", "0.1", "--steps", "2",
           "--batch-size", "4", "--backend", "reference", "--output-dir", str(tmp_path / "run")]
    assert cli.main(run) == 0
    err = capsys.readouterr().err
    assert "preparing" not in err and "training a WordPiece" not in err  # the shards and their tokenizer, as they are
    assert (tmp_path / "run" / "discriminator").is_dir() and not (tmp_path / "run" / "data").exists()
    assert cli.main([*run[:-1], str(tmp_path / "other"), "--max-length", "64"]) == 2
    assert "--max-length 64 (prepared: 32)" in capsys.readouterr().err


def test_a_training_step_never_reads_the_device(tmp_path, monkeypatch, tokenizer):
    """The step leaves its metrics and its skip decision on the device: no .item(), bool() or .tolist() of a tensor
    from one step to the next (they are read when metrics are written). On a GPU each would wait for the step."""
    from electra_fast.backend import use_backend
    from electra_fast.run_config import PretrainConfig
    from electra_fast.training import Run

    write_corpus(tmp_path / "corpus.txt", n_documents=40)
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    config = PretrainConfig(output_dir=str(tmp_path / "run"), data=str(tmp_path / "corpus.txt"),
                            tokenizer=str(tmp_path / "tokenizer"), max_length=24, batch_size=2, steps=3,
                            eval_fraction=0, num_layers=1)
    with use_backend("reference"):
        run = Run(config, log=lambda message: None)
        run.train_step()  # starts the loader (its own seed is drawn on the host once)
        reads = []
        for name in ("item", "tolist", "__bool__"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                reads.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        run.train_step()
        run.train_step()
        assert reads == [] and len(run.pending) == 3
        monkeypatch.undo()
        run.progress = type("Bar", (), {"set_postfix": lambda *args, **kwargs: None})()
        run.flush()
    assert run.bad_in_a_row == 0 and [json.loads(line)["step"] for line in
                                      (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
