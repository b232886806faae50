"""Pre-training data: corpus readers, ELECTRA packing (per document and across documents), tokenizers.

Prepared shards and the training loader are tested in tests/test_prepared_data.py."""

import json
import random

import pytest

from electra_fast import data
from electra_fast.errors import UserInputError
from electra_fast.prepare_data import prepare
from electra_fast.tokenizer import check_special_tokens, load_tokenizer, train_wordpiece

CLS, SEP, PAD = 1, 2, 0


def word_encoder(lines):
    """A stand-in tokenizer: every whitespace word is one token, its id written in the text."""
    return [[int(word) for word in line.split()] for line in lines]


def numbered_documents(n_documents=30, seed=0):
    """Documents whose token ids say where they come from: document d holds ids 1000*(d+1) + position."""
    rng = random.Random(seed)
    documents = []
    for d in range(n_documents):
        position, lines = 0, []
        for _ in range(rng.randint(1, 12)):
            length = rng.randint(1, 40)
            lines.append(" ".join(str(1000 * (d + 1) + position + i) for i in range(length)))
            position += length
        documents.append(lines)
    return documents


def pack(documents, max_length, seed=0):
    packer = data.SequencePacker(max_length, CLS, SEP, random.Random(seed))
    return list(data.pack_documents(documents, word_encoder, packer, documents_per_call=7))


@pytest.mark.parametrize("max_length", [9, 32, 67])
def test_packing_is_cls_a_sep_b_sep_within_one_document(max_length):
    documents = numbered_documents()
    sequences = pack(documents, max_length)
    bodies = []
    for sequence in sequences:
        ids, types = sequence.input_ids, sequence.token_type_ids
        assert len(ids) == len(types) <= max_length
        assert ids[0] == CLS and ids[-1] == SEP and CLS not in ids[1:]
        separators = [i for i, token in enumerate(ids) if token == SEP]
        assert len(separators) in (1, 2)
        first_sep = separators[0]
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)
        body = [token for token in ids if token not in (CLS, SEP)]
        assert body, "a sequence without text"
        assert len({token // 1000 for token in body}) == 1, "a sequence crosses a document boundary"
        bodies += body
    # In order, nothing lost: the sequences' texts concatenate to the corpus (segments A, B are consecutive).
    assert bodies == [int(word) for document in documents for line in document for word in line.split()]


def test_lines_are_split_to_fill_sequences_and_some_sequences_are_short():
    rng = random.Random(0)
    ids = iter(range(1000, 100_000))
    long_document = [" ".join(str(next(ids)) for _ in range(rng.randint(1, 30))) for _ in range(600)]
    sequences = pack([long_document], max_length=64, seed=3)
    lengths = [len(s.input_ids) for s in sequences]
    assert max(lengths) <= 64
    assert sum(length >= 63 for length in lengths) > 0.8 * len(lengths)  # full: lines are split to fill them
    assert sum(length < 60 for length in lengths[:-1]) >= 1  # the occasional shorter target length
    single = sum(s.input_ids.count(SEP) == 1 for s in sequences)
    assert 0 < single < 0.5 * len(sequences)  # about 10 % single-segment sequences


def test_full_packing_fills_sequences_across_documents_and_loses_nothing():
    documents = numbered_documents(40)
    packer = data.SequencePacker(32, CLS, SEP, random.Random(0), packing="full")
    sequences = list(data.pack_documents(documents, word_encoder, packer, documents_per_call=7))
    bodies = [token for s in sequences for token in s.input_ids if token not in (CLS, SEP)]
    assert bodies == [int(word) for document in documents for line in document for word in line.split()]
    assert any(len({token // 1000 for token in s.input_ids if token not in (CLS, SEP)}) > 1 for s in sequences)
    per_document = pack(documents, 32)
    assert len(sequences) < len(per_document)  # the same tokens in fewer rows
    # Only the 5 % short targets leave a row short (and the last one); per document, every document's end does.
    short = sum(len(s.input_ids) < 31 for s in sequences[:-1])
    assert short <= 0.1 * len(sequences) and sum(len(s.input_ids) < 31 for s in per_document[:-1]) > 3 * short
    with pytest.raises(UserInputError, match="--packing must be one of full, documents"):
        data.SequencePacker(32, CLS, SEP, random.Random(0), packing="tight")


def test_blocks_keep_the_corpus_order_and_map_blocks_the_block_order(tmp_path):
    corpus = data.open_corpus(str(write_text_corpus(tmp_path / "corpus.txt", n_documents=30)))
    documents = list(corpus.documents(data.epoch_rng(0, 0, "documents")))
    blocks = list(data.document_blocks(corpus, block_bytes=300))
    assert len(blocks) > 3 and [d for block in blocks for d in block] == documents

    def first_line(index, block):
        return index, block[0][0]

    expected = [(index, block[0][0]) for index, block in enumerate(blocks)]
    for workers in (0, 2):
        assert list(data.map_blocks(first_line, iter(blocks), workers)) == expected


def write_text_corpus(path, n_documents=12):
    text = "\n\n".join("\n".join(lines) for lines in numbered_documents(n_documents))
    path.write_text(text + "\n")
    return path


def test_readers_text_jsonl_and_directories(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("1 2 3\n4 5\n\n\n6 7\n")
    (tmp_path / "docs" / "b.jsonl").write_text(
        json.dumps({"body": "8 9\n\n10", "id": 1}) + "\n\n" + json.dumps({"body": "11"}) + "\n"
    )
    (tmp_path / "docs" / ".hidden.txt").write_text("99\n")
    (tmp_path / "docs" / "notes.bin").write_bytes(b"\x00\x01")
    corpus = data.open_corpus(str(tmp_path / "docs"), text_field="body")
    documents = list(corpus.documents(random.Random(0)))
    assert sorted(map(tuple, documents)) == sorted([("1 2 3", "4 5"), ("6 7",), ("8 9", "10"), ("11",)])
    single = data.open_corpus(str(tmp_path / "docs" / "a.txt"))
    assert list(single.documents(random.Random(0))) == [["1 2 3", "4 5"], ["6 7"]]


def test_embedded_corpus_is_real_text_in_a_fixed_order():
    documents = data.embedded_documents()
    assert len(documents) > 100
    words = " ".join(documents[0]).lower().split()
    assert "the" in words
    corpus = data.open_corpus(None)
    order = [tuple(d) for d in corpus.documents(data.epoch_rng(0, 0, "documents"))][:20]
    assert order == [tuple(d) for d in corpus.documents(data.epoch_rng(0, 0, "documents"))][:20]
    assert order != [tuple(d) for d in corpus.documents(data.epoch_rng(0, 1, "documents"))][:20]


@pytest.mark.parametrize(
    "content, suffix, field, message",
    [
        (None, ".txt", "text", "no such file or directory"),
        (b"", ".txt", "text", "empty"),
        (b"hello\n\xff\xfe broken\n", ".txt", "text", "cannot decode"),
        (b'{"text": "fine"}\n{"other": "x"}\n', ".jsonl", "text", "line 2 has no field 'text'"),
        (b'{"text": "fine"}\n{not json\n', ".jsonl", "text", "line 2 is not valid JSON"),
        (b'{"text": 3}\n', ".jsonl", "text", "must be a string"),
        (b"\n\n   \n", ".txt", "text", "contains no text"),
    ],
)
def test_bad_data_errors(tmp_path, content, suffix, field, message):
    path = tmp_path / f"corpus{suffix}"
    if content is not None:
        path.write_bytes(content)
    tokenizer = train_wordpiece(["fine hello broken x"], vocab_size=60)
    with pytest.raises(UserInputError, match=message):
        corpus = data.open_corpus(str(path), text_field=field)
        prepare(corpus, tokenizer, tmp_path / "prepared", max_length=16, packing="full", eval_fraction=0,
                workers=0, progress=False, log=lambda message: None)


def test_directory_without_text_files_and_saved_dataset_without_datasets(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="holds no text files"):
        data.open_corpus(str(tmp_path / "empty"))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UserInputError, match="`datasets` package is not installed"):
            data.open_corpus(str(saved))


def test_max_length_too_small_is_an_error():
    with pytest.raises(UserInputError, match="--max-length must be at least"):
        data.SequencePacker(4, CLS, SEP, random.Random(0))


def test_tokenizer_without_mask_token_is_rejected(tmp_path):
    lines = ["the quick brown fox jumps over the lazy dog"] * 20
    tokenizer = train_wordpiece(lines, vocab_size=60)
    check_special_tokens(tokenizer, "trained")
    assert tokenizer.mask_token_id is not None
    assert tokenizer.decode(tokenizer("the fox")["input_ids"]) == "[CLS] the fox [SEP]"
    tokenizer.mask_token = None
    tokenizer.save_pretrained(str(tmp_path / "no-mask"))
    with pytest.raises(UserInputError, match=r"no mask_token \(\[MASK\]\)"):
        load_tokenizer(str(tmp_path / "no-mask"))
    with pytest.raises(UserInputError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing"))


def test_a_data_file_that_cannot_be_opened_is_named(tmp_path):
    """As PermissionError for another user (root reads anything, so the test opens a directory)."""
    with pytest.raises(UserInputError, match=f"cannot read {tmp_path}: Is a directory"):
        data.check_first_records(tmp_path, "text")
