"""The README's "With your existing code" snippets run as written, one after the other: Trainer, an
accelerate loop, electra-pytorch's API."""

import re
from pathlib import Path

import pytest

from electra_fast.data import EmbeddedCorpus, corpus_text
from electra_fast.tokenizer import train_wordpiece

pytest.importorskip("accelerate", reason="pip install electra-fast[hf]")
pytest.importorskip("datasets", reason="pip install electra-fast[hf]")

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_three_snippets_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the CPU path, not the Triton interpreter
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "auto")
    section = re.search(r"## With your existing code\n(.*?)\n## ", README, re.S).group(1)
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(snippets) == 3
    lines = [line for _, line in zip(range(3000), corpus_text(EmbeddedCorpus()))]
    train_wordpiece(lines, 500).save_pretrained(str(tmp_path / "runs" / "tiny" / "tokenizer"))  # what pretrain saves
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for index, snippet in enumerate(snippets):
        exec(compile(snippet, f"README.md snippet {index + 1}", "exec"), namespace)

    assert (tmp_path / "runs" / "trainer" / "discriminator" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "trainer" / "model.safetensors").is_file()
    accelerator, model = namespace["accelerator"], namespace["model"]
    assert accelerator.unwrap_model(model).seed_counter == 20 + len(namespace["loader"])  # Trainer's, then the loop's
    printed = capsys.readouterr().out
    assert "'mlm_loss'" in printed and "'discriminator_accuracy'" in printed  # ElectraMetricsCallback in the logs
    values = [float(v) for v in re.findall(r"(?:MLM|RTD|discriminator accuracy) ([0-9.]+)", printed)]
    assert len(values) == 3 and 5 < values[0] < 8, printed  # electra-pytorch's API: MLM near log(500) = 6.2
