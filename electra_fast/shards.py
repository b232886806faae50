"""Prepared token shards: packed sequences on disk, read through memory maps (docs/design.md §8.2).

A prepared directory holds ``manifest.json`` and, per split (``train``, ``heldout``), numbered shards of at most
``ROWS_PER_SHARD`` rows:

* ``<split>-NNNNN.ids``: the token ids, ``[rows, max_length]`` of uint16 (uint32 when the vocabulary has more than
  65,535 ids), each row padded with the pad id;
* ``<split>-NNNNN.meta``: ``[rows, 2]`` int32 per row: its length (real tokens, ``[CLS]`` and ``[SEP]`` included)
  and where its second segment starts (``token_type_ids`` are 1 from there to the length; equal to the length
  for a single-segment row).

Rows have a fixed size, so row ``i`` is found by arithmetic and a batch is one gather: reading costs the same at
any position, and a resumed run seeks instead of replaying. The manifest records what the rows depend on (the
tokenizer's hash, the corpus's fingerprint, max length, packing, the held-out fraction, the packing seed) and
the counts; it is written last, so a directory without one is an unfinished preparation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import UserInputError

MANIFEST = "manifest.json"
FORMAT = "electra-fast prepared shards 1"
ROWS_PER_SHARD = 1 << 20
SPLITS = ("train", "heldout")


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def rows_to_arrays(sequences: list, max_length: int, pad_id: int, dtype: np.dtype) -> tuple:
    """Packed sequences (``data.PackedSequence``) as an ids array ``[n, max_length]`` and a meta array ``[n, 2]``."""
    ids = np.full((len(sequences), max_length), pad_id, dtype=dtype)
    meta = np.empty((len(sequences), 2), dtype=np.int32)
    for row, sequence in enumerate(sequences):
        length = len(sequence.input_ids)
        ids[row, :length] = sequence.input_ids
        meta[row] = (length, length - sum(sequence.token_type_ids))
    return ids, meta


class ShardWriter:
    """Appends rows of one split to numbered shard files in ``directory``."""

    def __init__(self, directory: Path, split: str, max_length: int, dtype: np.dtype,
                 rows_per_shard: int = ROWS_PER_SHARD):
        self.directory, self.split, self.max_length = directory, split, max_length
        self.dtype, self.rows_per_shard = dtype, rows_per_shard
        self.shards: list = []  # rows in each shard
        self.tokens = 0
        self._files: Optional[tuple] = None

    @property
    def rows(self) -> int:
        return sum(self.shards)

    def add(self, ids: np.ndarray, meta: np.ndarray) -> None:
        while len(ids):
            if self._files is None or self.shards[-1] == self.rows_per_shard:
                self._open_next()
            take = self.rows_per_shard - self.shards[-1]
            self._files[0].write(np.ascontiguousarray(ids[:take], dtype=self.dtype).tobytes())
            self._files[1].write(np.ascontiguousarray(meta[:take], dtype=np.int32).tobytes())
            self.shards[-1] += len(ids[:take])
            self.tokens += int(meta[:take, 0].sum())
            ids, meta = ids[take:], meta[take:]

    def _open_next(self) -> None:
        self.close()
        stem = self.directory / f"{self.split}-{len(self.shards):05d}"
        self._files = (open(f"{stem}.ids", "wb"), open(f"{stem}.meta", "wb"))
        self.shards.append(0)

    def close(self) -> None:
        if self._files is not None:
            for handle in self._files:
                handle.close()
            self._files = None

    def summary(self) -> dict:
        return {"rows": self.rows, "tokens": self.tokens, "rows_per_shard": self.rows_per_shard,
                "shard_rows": self.shards}


def write_manifest(directory: Path, manifest: dict) -> None:
    temporary = directory / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps({"format": FORMAT, **manifest}, indent=1) + "\n")
    os.replace(temporary, directory / MANIFEST)


def is_prepared(path: Path) -> bool:
    return (path / MANIFEST).is_file()


class PreparedData:
    """A prepared directory, read through memory maps opened on first use in each process (DataLoader workers
    open their own)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        try:
            self.manifest = json.loads((self.directory / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise UserInputError(f"{self.directory} is not a prepared data directory ({error})") from None
        if self.manifest.get("format") != FORMAT:
            raise UserInputError(f"{self.directory} was prepared in format {self.manifest.get('format')!r}, not "
                                 f"{FORMAT!r}; prepare it again with electra-fast prepare-data")
        self.max_length = self.manifest["max_length"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self._maps: dict = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def rows(self, split: str) -> int:
        return self.manifest["splits"][split]["rows"]

    def _shard(self, split: str, index: int) -> tuple:
        key = (split, index)
        if key not in self._maps:
            rows = self.manifest["splits"][split]["shard_rows"][index]
            stem = self.directory / f"{split}-{index:05d}"
            self._maps[key] = (np.memmap(f"{stem}.ids", self.dtype, "r", shape=(rows, self.max_length)),
                               np.memmap(f"{stem}.meta", np.int32, "r", shape=(rows, 2)))
        return self._maps[key]

    def gather(self, split: str, rows: np.ndarray) -> tuple:
        """(ids ``[n, max_length]``, meta ``[n, 2]``) of the given row numbers, in their order."""
        ids = np.empty((len(rows), self.max_length), dtype=self.dtype)
        meta = np.empty((len(rows), 2), dtype=np.int32)
        shard_of, row_in_shard = np.divmod(rows, self.manifest["splits"][split]["rows_per_shard"])
        for shard in np.unique(shard_of):
            where = shard_of == shard
            shard_ids, shard_meta = self._shard(split, int(shard))
            ids[where] = shard_ids[row_in_shard[where]]
            meta[where] = shard_meta[row_in_shard[where]]
        return ids, meta

    def packed(self, split: str, rows: np.ndarray) -> dict:
        """The rows in their compact form, ``{"ids": int32 [n, max_length], "meta": int32 [n, 2]}``: what travels from a
        loader worker and to the device (a sixth of the bytes of the int64 model inputs)."""
        ids, meta = self.gather(split, rows)
        return {"ids": torch.from_numpy(ids.astype(np.int32)), "meta": torch.from_numpy(meta)}

    def batch(self, split: str, rows: np.ndarray) -> dict:
        """The rows as model inputs on the CPU (``model_inputs``)."""
        return model_inputs(self.packed(split, rows), torch.device("cpu"))


def model_inputs(packed: dict, device: torch.device) -> dict:
    """``{input_ids, attention_mask, token_type_ids}``, int64 ``[n, max_length]`` on ``device``, from compact rows:
    copied there as they are and expanded there (a row is real up to its length, segment B from its split)."""
    ids = packed["ids"].to(device, non_blocking=True)
    meta = packed["meta"].to(device, non_blocking=True)
    positions = torch.arange(ids.shape[1], device=device, dtype=torch.int32)
    real = positions < meta[:, :1]
    second = (positions >= meta[:, 1:]) & real
    return {"input_ids": ids.long(), "attention_mask": real.long(), "token_type_ids": second.long()}
