"""`torchrun --nproc_per_node=2 -m electra_fast pretrain` on the CPU (Gloo): one set of outputs, disjoint data
per rank, per-rank RNG, exact resume."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from electra_fast.loader import TrainingBatches
from electra_fast.shards import PreparedData
from electra_fast.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--max-length", "32", "--batch-size", "4", "--vocab-size", "300",
         "--backend", "reference", "--device", "cpu", "--steps", "4", "--save-every", "2", "--grad-accum", "2",
         "--eval-fraction", "0.2", "--eval-sequences", "8"]
EVAL_FRACTION = 0.2
WORLD, ACCUM = 2, 2


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    launcher = [shutil.which("torchrun") or sys.executable]
    if launcher == [sys.executable]:
        launcher += ["-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [*launcher, "--standalone", "--nproc_per_node", str(WORLD), "-m", "electra_fast", "pretrain", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def read_all_metrics(output_dir: Path) -> list:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def read_metrics(output_dir: Path) -> list:
    """The training steps' rows (without the held-out evaluations)."""
    return [row for row in read_all_metrics(output_dir) if "loss" in row]


def write_corpus(path: Path) -> Path:
    """A small text file (faster to load than the embedded corpus) with lines of varied lengths."""
    words = "electra trains a discriminator that detects which tokens a small generator replaced".split()
    documents = [" ".join(words[(i * 7 + j) % len(words)] for j in range(3 + i % 11)) for i in range(120)]
    path.write_text("\n".join(line + ("\n" if i % 5 == 4 else "") for i, line in enumerate(documents)) + "\n")
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A 2-process run of 4 steps; what later tests compare with is read before anything rewrites it."""
    output_dir = tmp_path_factory.mktemp("ddp-run")
    corpus = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")
    result = torchrun(*SMALL, "--data", str(corpus), "--output-dir", str(output_dir))
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    return {
        "dir": output_dir, "stdout": result.stdout, "metrics": read_metrics(output_dir),
        "evaluations": [row for row in read_all_metrics(output_dir) if "eval_rtd_auc" in row],
        "files": sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file()),
        "weights": load_file(output_dir / "discriminator" / "model.safetensors"),
        "corpus": corpus, "checkpoint": torch.load(output_dir / "checkpoints" / "step-0000004.pt", weights_only=False),
    }


def test_only_rank_0_writes_and_the_discriminator_loads(ddp_run):
    from transformers import ElectraForSequenceClassification

    assert ddp_run["stdout"].count("Pre-trained ELECTRA-tiny") == 1  # one summary, from rank 0
    assert "of 16 sequences" in ddp_run["stdout"] and "2 processes" in ddp_run["stdout"]
    files = ddp_run["files"]
    assert [f for f in files if f.endswith(".jsonl")] == ["metrics.jsonl"]
    assert [f for f in files if f.startswith("checkpoints/")] == ["checkpoints/step-0000002.pt",
                                                                   "checkpoints/step-0000004.pt"]
    assert not [f for f in files if ".tmp" in f or "write-test" in f]
    assert [row["step"] for row in ddp_run["metrics"]] == [1, 2, 3, 4]
    assert [row["step"] for row in ddp_run["evaluations"]] == [0, 4]  # rank 0 evaluates, the others wait
    for row in ddp_run["metrics"]:
        assert row["loss"] == pytest.approx(row["mlm_loss"] + 50 * row["rtd_loss"], rel=1e-5)
    model = ElectraForSequenceClassification.from_pretrained(ddp_run["dir"] / "discriminator", num_labels=2)
    tokenizer = load_tokenizer(str(ddp_run["dir"] / "discriminator"))
    assert model.electra.embeddings.word_embeddings.weight.shape[0] == len(tokenizer)
    logits = model(**tokenizer(["a discriminator detects replaced tokens"], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_ranks_take_disjoint_batches_and_their_own_rng(ddp_run):
    # Rank r takes batch (2k + m) * 2 + r of the shared seeded stream for micro-batch m of step k, and the
    # logged token count is the sum over micro-batches and ranks: recount it from the data stream itself.
    # Rank r reads rows [(g * 2 + r) * 4, +4) of global batch g's permuted rows: a single stream with batches of
    # 2 * 4 rows holds both ranks' rows, so recount the logged tokens from it.
    prepared = PreparedData(ddp_run["dir"] / "data")
    batches = TrainingBatches(prepared, batch_size=WORLD * 4, seed=0)
    stream_tokens = [int(next(batches)["meta"][:, 0].sum()) for _ in range(ACCUM * 4)]
    ddp_tokens = [row["tokens"] for row in ddp_run["metrics"]]
    assert ddp_tokens == [sum(stream_tokens[ACCUM * k: ACCUM * (k + 1)]) for k in range(4)]
    # what both ranks on rank 0's batches would log instead:
    rank_0 = TrainingBatches(prepared, batch_size=4, seed=0, rank=0, world_size=WORLD)
    rank_0_tokens = [int(next(rank_0)["meta"][:, 0].sum()) for _ in range(ACCUM * 4)]
    assert ddp_tokens != [WORLD * sum(rank_0_tokens[ACCUM * k: ACCUM * (k + 1)]) for k in range(4)]
    checkpoint = ddp_run["checkpoint"]
    assert checkpoint["world_size"] == WORLD and len(checkpoint["rng"]) == WORLD
    assert not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])  # own dropout streams


def test_resume_continues_exactly(ddp_run):
    output_dir = ddp_run["dir"]
    result = torchrun(*SMALL, "--data", str(ddp_run["corpus"]), "--output-dir", str(output_dir),
                      "--resume", str(output_dir / "checkpoints" / "step-0000002.pt"))
    assert result.returncode == 0, result.stderr
    resumed = read_metrics(output_dir)
    assert [row["step"] for row in resumed] == [1, 2, 3, 4]
    for key in ("loss", "mlm_loss", "rtd_loss", "generator_accuracy", "discriminator_accuracy", "grad_norm",
                "tokens"):
        assert [row[key] for row in resumed] == [row[key] for row in ddp_run["metrics"]], key
    assert len({row["loss"] for row in resumed}) == 4
    from safetensors.torch import load_file

    weights = load_file(output_dir / "discriminator" / "model.safetensors")
    assert all(torch.equal(weights[name], ddp_run["weights"][name]) for name in weights)
