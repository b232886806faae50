"""The tokenizer of ``electra-fast pretrain``: a local Hugging Face tokenizer, or one trained on the corpus.

Without ``--tokenizer`` an uncased WordPiece tokenizer (ELECTRA's and BERT's kind) is trained on the corpus
(deterministically, by electra_fast/wordpiece.py) and saved under ``<output-dir>/tokenizer``; a later run with
the same corpus and vocabulary size reuses it, so the default command is self-contained and trains the tokenizer once.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserInputError

# Role on the HF tokenizer -> token of the tokenizer we train. ELECTRA needs all four.
REQUIRED_ROLES = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
TRAINED_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FINGERPRINT_FILE = "electra_fast_tokenizer.json"
# Recorded with a trained tokenizer; a cached one from another trainer version is trained again.
TRAINER_VERSION = "electra_fast.wordpiece 1"


# A directory holding one of these may hold a tokenizer that AutoTokenizer loads (fast, or BERT's vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def check_special_tokens(tokenizer, source: str) -> None:
    """ELECTRA packs with [CLS]/[SEP], pads with [PAD] and masks with [MASK]: all four must exist."""
    missing = [
        f"{role} ({token})" for role, token in REQUIRED_ROLES.items() if getattr(tokenizer, f"{role}_id", None) is None
    ]
    if missing:
        raise UserInputError(
            f"the tokenizer from {source} has no {', '.join(missing)}; ELECTRA pre-training needs "
            "[PAD], [CLS], [SEP] and [MASK] (e.g. an uncased BERT/ELECTRA WordPiece tokenizer)"
        )


def load_tokenizer(path: str):
    """A tokenizer saved with ``save_pretrained`` (or a tokenizer.json) in a local directory."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    location = Path(path).expanduser()
    if not location.exists():
        raise UserInputError(f"--tokenizer {path}: no such file or directory")
    if location.is_dir() and not any((location / name).is_file() for name in TOKENIZER_FILES):
        raise UserInputError(f"--tokenizer {path}: the directory holds no tokenizer (none of "
                             f"{', '.join(TOKENIZER_FILES)}, as tokenizer.save_pretrained writes)")
    try:
        if location.is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(location))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(location), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UserInputError(f"--tokenizer {path}: cannot load a Hugging Face tokenizer from it ({error})") from None
    check_special_tokens(tokenizer, path)
    return tokenizer


def _bert_pipeline():
    """BERT's uncased normaliser and pre-tokeniser (the ``tokenizers`` objects)."""
    from tokenizers import normalizers, pre_tokenizers

    return normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()


def train_wordpiece(lines: Iterable[str], vocab_size: int):
    """An uncased WordPiece tokenizer (BERT normalisation and pre-tokenisation) trained on ``lines``: the same
    lines always give the same vocabulary and ids (electra_fast/wordpiece.py)."""
    from .wordpiece import count_words

    return wordpiece_tokenizer(count_words(lines, *_bert_pipeline()), vocab_size)


def corpus_word_counts(corpus, workers: int) -> Counter:
    """How often each pre-tokenised word occurs in ``corpus``, counted per block of documents in ``workers``
    processes and summed (a sum: the same counts for any number of workers)."""
    from .data import document_blocks, map_blocks
    from .wordpiece import count_words

    normalizer, pre_tokenizer = _bert_pipeline()

    def count_block(_: int, documents: list) -> Counter:
        return count_words((line for document in documents for line in document), normalizer, pre_tokenizer)

    counts: Counter = Counter()
    for block_counts in map_blocks(count_block, document_blocks(corpus), workers):
        counts.update(block_counts)
    return counts


def wordpiece_tokenizer(word_counts: dict, vocab_size: int):
    """The WordPiece tokenizer learned from ``word_counts`` (``wordpiece.learn_vocabulary``)."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    from .wordpiece import learn_vocabulary

    normalizer, pre_tokenizer = _bert_pipeline()
    pieces = learn_vocabulary(word_counts, vocab_size, TRAINED_SPECIAL_TOKENS)
    backend = Tokenizer(models.WordPiece({piece: index for index, piece in enumerate(pieces)}, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.BertProcessing(("[SEP]", sep_id), ("[CLS]", cls_id))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
    )


def trained_tokenizer(corpus, vocab_size: int, cache_dir: Path, workers: int = 0, log=print):
    """The WordPiece tokenizer cached in ``cache_dir`` for this corpus and size; trained and saved if absent."""
    if vocab_size < len(TRAINED_SPECIAL_TOKENS) + 1:
        raise UserInputError(f"--vocab-size must be more than {len(TRAINED_SPECIAL_TOKENS)}, got {vocab_size}")
    from transformers import PreTrainedTokenizerFast

    wanted = {"corpus": corpus.fingerprint(), "vocab_size": vocab_size, "trainer": TRAINER_VERSION}
    stamp = cache_dir / FINGERPRINT_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return PreTrainedTokenizerFast.from_pretrained(str(cache_dir))
    log(f"training a WordPiece tokenizer (vocabulary {vocab_size}) on the corpus; cached in {cache_dir}")
    tokenizer = wordpiece_tokenizer(corpus_word_counts(corpus, workers), vocab_size)
    tokenizer.save_pretrained(str(cache_dir))
    stamp.write_text(json.dumps(wanted))
    return tokenizer


def line_encoder(tokenizer):
    """A function from a list of lines to their token ids without special tokens (batched, fast)."""

    def encode_lines(lines: list) -> list:
        return tokenizer(lines, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    return encode_lines


def special_token_ids(tokenizer) -> tuple:
    """Ids never masked: every special token of the tokenizer ([CLS], [SEP], [PAD], [MASK], [UNK], ...)."""
    return tuple(sorted(set(tokenizer.all_special_ids)))


def prepare_tokenizer(path: Optional[str], corpus, vocab_size: int, cache_dir: Path, workers: int = 0, log=print):
    """``--tokenizer PATH`` if given, else the WordPiece tokenizer trained on ``corpus`` (cached)."""
    if path is not None:
        return load_tokenizer(path)
    tokenizer = trained_tokenizer(corpus, vocab_size, cache_dir, workers, log=log)
    check_special_tokens(tokenizer, str(cache_dir))
    return tokenizer
