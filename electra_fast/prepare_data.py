"""``electra-fast prepare-data``: documents in, packed token rows out (docs/design.md §8.2).

The corpus is read in blocks of documents (``data.document_blocks``); each block is tokenized and packed on its
own, in ``workers`` processes, with a packing random generator named by the block's number, and the rows are
written in block order (``shards.ShardWriter``). The output is therefore the same for any number of workers.
Documents go to the ``heldout`` split by a hash of their text (``evaluation.is_held_out``), the rest to
``train``. ``pretrain --data <text>`` prepares into ``OUTPUT_DIR/data`` and reuses it while the fingerprint
(corpus, tokenizer, max length, packing, held-out fraction, seed) is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

from .data import SequencePacker, document_blocks, map_blocks, pack_documents
from .errors import UserInputError
from .evaluation import is_held_out
from .shards import SPLITS, PreparedData, ShardWriter, ids_dtype, is_prepared, rows_to_arrays, write_manifest


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the tokenizer's serialised vocabulary and pipeline (what decides the ids)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def fast_line_encoder(tokenizer) -> Callable[[list], list]:
    """Lines -> token ids without special tokens, through the Rust tokenizer directly (no Python wrapper per
    call; the same ids as ``tokenizer(lines, add_special_tokens=False)``)."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)

    def encode_lines(lines: list) -> list:
        return [encoding.ids for encoding in encode(lines, add_special_tokens=False)]

    return encode_lines


def fingerprint(corpus, tokenizer, *, max_length: int, packing: str, eval_fraction: float, seed: int) -> dict:
    return {"corpus": corpus.fingerprint(), "tokenizer_sha256": tokenizer_hash(tokenizer), "max_length": max_length,
            "packing": packing, "eval_fraction": eval_fraction, "seed": seed}


def prepare(corpus, tokenizer, directory: Path, *, max_length: int, packing: str, eval_fraction: float,
            workers: int, seed: int = 0, log: Callable[[str], None] = print, progress: bool = True) -> PreparedData:
    """Tokenize and pack ``corpus`` into ``directory`` (replacing a prepared directory there) and open it."""
    directory = Path(directory)
    if directory.exists() and not is_prepared(directory) and any(directory.iterdir()):
        raise UserInputError(f"{directory} exists and is not a prepared data directory: choose an empty or new one")
    if not 0 <= eval_fraction < 1:
        raise UserInputError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    SequencePacker(max_length, cls_id, sep_id, random.Random(), packing)  # checks max_length and packing now
    dtype = ids_dtype(len(tokenizer))
    partial = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writers = {split: ShardWriter(partial, split, max_length, dtype) for split in SPLITS}
    encode_lines = fast_line_encoder(tokenizer)

    def pack_block(index: int, documents: list) -> tuple:
        """Rows of one block per split, and the block's text size (progress)."""
        rows = {}
        for split in SPLITS:
            part = [d for d in documents if (eval_fraction > 0 and is_held_out(d, eval_fraction)) == (split != "train")]
            packer = SequencePacker(max_length, cls_id, sep_id, random.Random(f"electra-fast:{seed}:{index}:{split}"),
                                    packing)
            rows[split] = rows_to_arrays(list(pack_documents(part, encode_lines, packer)), max_length, pad_id, dtype)
        return rows, sum(len(line) + 1 for document in documents for line in document), len(documents)

    from tqdm.auto import tqdm

    start = time.perf_counter()
    text_bytes = documents = 0
    try:
        with tqdm(desc="prepare-data", unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True) as bar:
            for rows, size, count in map_blocks(pack_block, document_blocks(corpus), workers):
                for split in SPLITS:
                    writers[split].add(*rows[split])
                text_bytes += size
                documents += count
                bar.update(size)
        for writer in writers.values():
            writer.close()
        if writers["train"].rows == 0:
            raise UserInputError(f"{corpus.description} contains no text to train on")
        seconds = time.perf_counter() - start
        write_manifest(partial, {
            "fingerprint": fingerprint(corpus, tokenizer, max_length=max_length, packing=packing,
                                       eval_fraction=eval_fraction, seed=seed),
            "corpus": corpus.description, "max_length": max_length, "packing": packing, "eval_fraction": eval_fraction,
            "seed": seed, "dtype": dtype.name, "vocab_size": len(tokenizer), "pad_id": pad_id,
            "documents": documents, "text_bytes": text_bytes, "seconds": round(seconds, 3), "workers": workers,
            "splits": {split: writer.summary() for split, writer in writers.items()},
        })
        tokenizer.save_pretrained(str(partial / "tokenizer"))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(partial, directory)
    except BaseException:
        for writer in writers.values():
            writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    prepared = PreparedData(directory)
    train = prepared.manifest["splits"]["train"]
    log(f"prepared {documents:,} documents ({text_bytes / 1e6:,.1f} MB) into {train['rows']:,} rows of "
        f"{max_length} in {directory} ({seconds:.1f} s, {text_bytes / 1e6 / max(seconds, 1e-9):,.1f} MB/s, "
        f"{workers} workers); real tokens fill {real_token_share(prepared):.1%} of the slots")
    return prepared


def real_token_share(prepared: PreparedData, split: str = "train") -> float:
    counts = prepared.manifest["splits"][split]
    return counts["tokens"] / max(1, counts["rows"] * prepared.max_length)


def prepared_cache(corpus, tokenizer, directory: Path, *, max_length: int, packing: str, eval_fraction: float,
                   workers: int, seed: int = 0, log: Callable[[str], None] = print) -> PreparedData:
    """The prepared ``directory`` if its fingerprint matches these settings, else prepared anew there."""
    wanted = fingerprint(corpus, tokenizer, max_length=max_length, packing=packing, eval_fraction=eval_fraction,
                         seed=seed)
    if is_prepared(directory):
        try:
            cached = PreparedData(directory)
        except UserInputError:  # another format version: prepared again below
            cached = None
        if cached is not None and cached.manifest.get("fingerprint") == wanted:
            return cached
    log(f"preparing the corpus (tokenize and pack, {workers} workers) into {directory}")
    return prepare(corpus, tokenizer, directory, max_length=max_length, packing=packing, eval_fraction=eval_fraction,
                   workers=workers, seed=seed, log=log)

