"""The training input path: batches of prepared rows in a seeded order, built ahead of the step (docs/design.md
§8.2).

* Order. Epoch ``e`` visits the training rows in a pseudo-random permutation keyed by ``(seed, e)``: a Feistel
  network on the next power of four above the row count, with cycle walking to stay below it
  (``permute``). Any position's row is computed on its own in O(1), so no permutation is stored and a
  resumed run seeks to its position instead of replaying the epoch.
* Ranks. The stream is cut into global batches of ``world_size * batch_size`` rows; rank ``r`` reads only
  its own ``batch_size`` rows of each, so the per-rank cost does not grow with the number of ranks.
* Overlap. A ``torch.utils.data.DataLoader`` builds the batches, in ``workers`` processes ahead of the step
  (prefetching, pinned memory for a GPU) or, with 0 workers, in the training process. The order depends only
  on the seed and the position, never on the worker count. Batches stay compact (int32 ids and two int32 per
  row) until they reach the device, where ``shards.model_inputs`` expands them: a sixth of the int64 bytes
  cross from the workers and over PCIe.
* State. ``state_dict()`` is ``{"position", "seed", "rows"}``: the number of global batches handed out.
"""

from __future__ import annotations

import signal

import numpy as np
import torch

from .errors import UserInputError
from .shards import PreparedData

_FEISTEL_ROUNDS = 4
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _round_function(half: np.ndarray, key: int, mask: int) -> np.ndarray:
    """A 64-bit mix of ``half ^ key`` (uint64 arithmetic wraps), cut to the half width."""
    x = half ^ np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (x ^ (x >> np.uint64(31))) & np.uint64(mask)


def permute(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """The rows at ``positions`` (each in [0, n)) of epoch ``epoch``'s permutation of ``range(n)``."""
    bits = max(2, (n - 1).bit_length())
    bits += bits % 2
    half_bits = np.uint64(bits // 2)
    mask = (1 << (bits // 2)) - 1
    keys = [_splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ epoch) ^ r) for r in range(_FEISTEL_ROUNDS)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> half_bits, x & np.uint64(mask)
        for key in keys:
            left, right = right, left ^ _round_function(right, key, mask)
        return (left << half_bits) | right

    with np.errstate(over="ignore"):
        x = encrypt(np.asarray(positions, dtype=np.uint64))
        outside = x >= n
        while outside.any():  # cycle walking: the domain is under 4n, so a few rounds at most
            x[outside] = encrypt(x[outside])
            outside = x >= n
    return x.astype(np.int64)


class _RankBatches(torch.utils.data.Dataset):
    """Item ``g``: this rank's part of global batch ``g``, compact (``PreparedData.packed``)."""

    def __init__(self, prepared: PreparedData, batch_size: int, seed: int, rank: int, world_size: int):
        self.prepared, self.batch_size, self.seed = prepared, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.rows = prepared.rows("train")

    def rows_of(self, batch: int) -> np.ndarray:
        first = (batch * self.world_size + self.rank) * self.batch_size
        epoch, within = np.divmod(np.arange(first, first + self.batch_size, dtype=np.int64), self.rows)
        rows = np.empty(self.batch_size, dtype=np.int64)
        for each in np.unique(epoch):  # a batch spans two epochs only at an epoch's end
            where = epoch == each
            rows[where] = permute(within[where], self.rows, self.seed, int(each))
        return rows

    def __getitem__(self, batch: int) -> dict:
        return self.prepared.packed("train", self.rows_of(batch))


class _CountFrom(torch.utils.data.Sampler):
    def __init__(self, start: int):
        self.start = start

    def __iter__(self):
        batch = self.start
        while True:
            yield batch
            batch += 1


def _quiet_worker(_: int) -> None:
    """Workers leave Ctrl-C, SIGTERM and SIGUSR1 to the training process, which finishes the step, saves and
    then shuts them down (electra_fast/stopping.py)."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class TrainingBatches:
    """Endless stream of this process's training batches, compact: ``{"ids", "meta"}`` int32 tensors, which
    ``shards.model_inputs`` turns into the model's inputs on the device."""

    def __init__(self, prepared: PreparedData, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 workers: int = 0, pin_memory: bool = False, prefetch_batches: int = 4):
        if batch_size < 1:
            raise UserInputError(f"--batch-size must be at least 1, got {batch_size}")
        if workers < 0:
            raise UserInputError(f"--data-workers must be >= 0, got {workers}")
        self.dataset = _RankBatches(prepared, batch_size, seed, rank, world_size)
        self.seed, self.workers, self.pin_memory = seed, workers, pin_memory
        self.prefetch_batches = prefetch_batches
        self.position = 0
        self._iterator = None

    @property
    def epoch(self) -> int:
        dataset = self.dataset
        return self.position * dataset.world_size * dataset.batch_size // dataset.rows

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "rows": self.dataset.rows}

    def load_state_dict(self, state: dict) -> None:
        if "position" not in state:
            raise UserInputError("the checkpoint's data position is from an older electra-fast (it replayed text); "
                                 "start the run again")
        if state["rows"] != self.dataset.rows:
            raise UserInputError(f"the checkpoint was trained on {state['rows']:,} prepared rows, this data has "
                                 f"{self.dataset.rows:,}: resume with the same data")
        self.seed, self.position = state["seed"], state["position"]
        self.dataset.seed = self.seed
        self.close()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            options = dict(num_workers=self.workers, pin_memory=self.pin_memory)
            if self.workers:
                options.update(prefetch_factor=max(1, self.prefetch_batches // self.workers),
                               worker_init_fn=_quiet_worker)
            # A generator of its own: starting a DataLoader draws a base seed from the generator it is given, and
            # from torch's global one otherwise, which would move the model's dropout stream on every (re)start.
            self._iterator = iter(torch.utils.data.DataLoader(self.dataset, batch_size=None,
                                                              sampler=_CountFrom(self.position),
                                                              generator=torch.Generator(), **options))
        batch = next(self._iterator)
        self.position += 1
        return batch

    def close(self) -> None:
        """Stop the workers (a later ``next`` starts them again at the same position)."""
        self._iterator = None


def held_out_batches(prepared: PreparedData, *, sequences: int, batch_size: int) -> list:
    """The first ``sequences`` held-out rows, in fixed batches of ``batch_size`` (the same at every evaluation)."""
    rows = np.arange(min(sequences, prepared.rows("heldout")), dtype=np.int64)
    return [prepared.batch("heldout", rows[start:start + batch_size]) for start in range(0, len(rows), batch_size)]
