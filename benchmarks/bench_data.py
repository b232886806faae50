"""The training input path: prepared shards against what users run today, preparation against raw tokenizing.

Corpus: the embedded corpus (2.2 MB of real English prose) repeated ``REPEATS`` times, tokenized with a
30522-piece WordPiece tokenizer trained on it; batches of ``BATCH`` rows at 128 and 512 tokens.

* ``read``: sequences/s that reach the training loop as model inputs (``{input_ids, attention_mask,
  token_type_ids}`` int64 batches on the device the model runs on), with 0, 1 and 2 loader workers.
  - ``electra_fast``: ``loader.TrainingBatches`` over ``prepare-data``'s memory-mapped uint16 shards;
  - ``hf_datasets``: the same rows as an Arrow table saved with ``datasets`` (``save_to_disk`` then
    ``load_from_disk``: memory-mapped), ``with_format("torch")``, read by ``DataLoader(shuffle=True)``, as the
    ``datasets.map`` + ``group_texts`` recipe leaves them.
* ``prepare``: MB/s of text per core: ``prepare-data`` with one worker (tokenize, pack, write) against the
  tokenizer's own ``encode_batch_fast`` on the same lines (the floor for any pipeline built on it).
* ``resume``: seconds from ``load_state_dict`` at a position ``10**8`` rows deep to the first batch.
* ``overlap``: a training loop whose step is a 20 ms sleep (a GPU step that holds the host, simulated): the
  share of the loop's time lost to data (against the same loop without data), with 0 and 1 workers.

Each case records ``sequences_per_second`` / ``mb_per_second`` / ``seconds`` / ``data_share`` in
``extra_info``; ``python benchmarks/bench_data.py --table FILE.json`` prints the table of a saved run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DEVICE, ON_GPU, measure  # noqa: E402

from electra_fast import data  # noqa: E402
from electra_fast.loader import TrainingBatches  # noqa: E402
from electra_fast.prepare_data import fast_line_encoder, prepare  # noqa: E402
from electra_fast.shards import PreparedData, model_inputs  # noqa: E402

REPEATS = int(os.environ.get("ELECTRA_FAST_BENCH_DATA_REPEATS", "4"))
BATCH = 64
LENGTHS = (128, 512)
WORKERS = (0, 1, 2)
BATCHES_PER_ROUND = 100
STEP_SECONDS = 0.02


class RepeatedCorpus(data.Corpus):
    """The embedded corpus ``repeats`` times over (a bigger corpus of the same prose)."""

    def __init__(self, repeats: int):
        self.repeats = repeats
        self.description = f"the embedded corpus x{repeats}"

    def documents(self, rng):
        for _ in range(self.repeats):
            yield from data.EmbeddedCorpus().documents(rng)

    def fingerprint(self) -> str:
        return f"{data.EmbeddedCorpus().fingerprint()}x{self.repeats}"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from electra_fast.tokenizer import trained_tokenizer

    return trained_tokenizer(data.EmbeddedCorpus(), 30522, tmp_path_factory.mktemp("tokenizer"), workers=2,
                             log=lambda message: None)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("prepared")
    return {length: prepare(RepeatedCorpus(REPEATS), tokenizer, root / str(length), max_length=length,
                            packing="full", eval_fraction=0, workers=2, progress=False, log=lambda message: None)
            for length in LENGTHS}


def hf_table(prepared_data: PreparedData, directory):
    """The prepared rows as the HF recipe keeps them: a memory-mapped Arrow table of int64 lists."""
    import datasets

    batch = prepared_data.batch("train", np.arange(prepared_data.rows("train")))
    table = datasets.Dataset.from_dict({key: value.tolist() for key, value in batch.items()})
    table.save_to_disk(str(directory))
    return datasets.load_from_disk(str(directory)).with_format("torch")


@pytest.mark.parametrize("workers", WORKERS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("impl", ["electra_fast", "hf_datasets"])
def test_read(benchmark, prepared, tmp_path, impl, length, workers):
    source = prepared[length]
    if impl == "electra_fast":
        stream = TrainingBatches(source, batch_size=BATCH, seed=0, workers=workers, pin_memory=ON_GPU)
        batches = (model_inputs(packed, DEVICE) for packed in stream)  # expanded where the model runs
    else:
        loader = torch.utils.data.DataLoader(hf_table(source, tmp_path / "arrow"), batch_size=BATCH, shuffle=True,
                                             num_workers=workers, pin_memory=ON_GPU,
                                             generator=torch.Generator().manual_seed(0))
        batches = ({key: value.to(DEVICE, non_blocking=True) for key, value in batch.items()}
                   for batch in _endless(loader))
    next(batches)  # workers started

    def read():
        for _ in range(BATCHES_PER_ROUND):
            next(batches)

    measure(benchmark, read, op="data_read", impl=f"{impl} w{workers}", shape=f"{BATCH}x{length}", warmup=1,
            rounds=3)
    benchmark.extra_info["sequences_per_second"] = BATCHES_PER_ROUND * BATCH / benchmark.stats.stats.median


@pytest.mark.parametrize("world_size", [1, 8])
def test_read_per_rank(benchmark, prepared, world_size):
    """One rank's rate, the last of ``world_size``: each rank reads only its own rows."""
    stream = TrainingBatches(prepared[128], batch_size=BATCH, seed=0, rank=world_size - 1, world_size=world_size)
    batches = (model_inputs(packed, DEVICE) for packed in stream)

    def read():
        for _ in range(BATCHES_PER_ROUND):
            next(batches)

    measure(benchmark, read, op="data_read", impl=f"electra_fast rank {world_size - 1} of {world_size}",
            shape=f"{BATCH}x128", warmup=1, rounds=3)
    benchmark.extra_info["sequences_per_second"] = BATCHES_PER_ROUND * BATCH / benchmark.stats.stats.median


def _endless(loader):
    while True:
        yield from loader


def corpus_lines(repeats: int = 1) -> list:
    return [line for document in RepeatedCorpus(repeats).documents(data.epoch_rng(0, 0, "documents"))
            for line in document]


@pytest.mark.parametrize("impl", ["electra_fast_prepare", "encode_batch_fast"])
def test_prepare(benchmark, tokenizer, tmp_path, impl, monkeypatch):
    """One core each (the tokenizer's own threads off): text MB/s."""
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    lines = corpus_lines()
    megabytes = sum(len(line) + 1 for line in lines) / 1e6
    if impl == "encode_batch_fast":
        encode = fast_line_encoder(tokenizer)

        def run():
            for start in range(0, len(lines), 4096):
                encode(lines[start:start + 4096])
    else:
        def run():
            prepare(RepeatedCorpus(1), tokenizer, tmp_path / "prepared", max_length=128, packing="full",
                    eval_fraction=0.05, workers=1, progress=False, log=lambda message: None)

    measure(benchmark, run, op="data_prepare", impl=impl, shape="embedded corpus", warmup=1, rounds=3)
    benchmark.extra_info["mb_per_second"] = megabytes / benchmark.stats.stats.median


def test_resume(benchmark, prepared):
    source = prepared[128]
    position = 10**8 // BATCH

    def resume():
        batches = TrainingBatches(source, batch_size=BATCH, seed=0)
        batches.load_state_dict({"position": position, "seed": 0, "rows": source.rows("train")})
        next(batches)

    measure(benchmark, resume, op="data_resume", impl="electra_fast", shape=f"{position * BATCH:.0e} rows deep",
            warmup=1, rounds=5)
    benchmark.extra_info["seconds"] = benchmark.stats.stats.median


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("length", LENGTHS)
def test_overlap(benchmark, prepared, length, workers):
    """A 20 ms step (a sleep, which holds the host as a synchronising step would) per batch: the share of the loop's
    time that data costs, against the same loop without data (a sleep overshoots by itself on a busy machine)."""
    batches = TrainingBatches(prepared[length], batch_size=BATCH, seed=0, workers=workers, pin_memory=ON_GPU)
    next(batches)
    steps = 25

    def steps_only():
        for _ in range(steps):
            time.sleep(STEP_SECONDS)

    def loop():
        for _ in range(steps):
            model_inputs(next(batches), DEVICE)
            time.sleep(STEP_SECONDS)

    without_data = min(_seconds(steps_only) for _ in range(3))
    measure(benchmark, loop, op="data_overlap", impl=f"electra_fast w{workers}", shape=f"{BATCH}x{length}, 20 ms step",
            warmup=0, rounds=3)
    benchmark.extra_info["data_share"] = 1 - without_data / benchmark.stats.stats.min


def _seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def table(path: str) -> str:
    """Markdown table of a saved run of this suite."""
    rows = ["| case | implementation | shape | result |", "|---|---|---|---|"]
    for bench in json.loads(open(path).read())["benchmarks"]:
        info = bench["extra_info"]
        if not info.get("op", "").startswith("data_"):
            continue
        if "sequences_per_second" in info:
            result = f"{info['sequences_per_second']:,.0f} sequences/s"
        elif "mb_per_second" in info:
            result = f"{info['mb_per_second']:.2f} MB/s"
        elif "data_share" in info:
            result = f"{info['data_share']:.2%} of the loop's time"
        else:
            result = f"{info['seconds'] * 1000:.1f} ms"
        rows.append(f"| {info['op'][5:]} | {info['impl']} | {info['shape']} | {result} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="a pytest-benchmark JSON of this suite")
    print(table(parser.parse_args().table))
