"""The README's "With your existing code" snippets run as written, each on its own (a reader copies one), one
after the other: Trainer, an accelerate loop, electra-pytorch's API."""

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
    namespaces = [{} for _ in snippets]
    for index, (snippet, namespace) in enumerate(zip(snippets, namespaces)):
        exec(compile(snippet, f"README.md snippet {index + 1}", "exec"), namespace)

    assert (tmp_path / "runs" / "trainer" / "discriminator" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "trainer" / "model.safetensors").is_file()
    accelerator, model, loader = (namespaces[1][name] for name in ("accelerator", "model", "loader"))
    assert accelerator.unwrap_model(model).seed_counter == 20 + len(loader)  # Trainer's, then the loop's
    printed = capsys.readouterr().out
    assert "'mlm_loss'" in printed and "'discriminator_accuracy'" in printed  # ElectraMetricsCallback in the logs
    assert re.findall(r"step (\d+): loss [0-9.]+ \(MLM", printed) == [str(step) for step in range(1, len(loader) + 1)]
    compat = re.findall(r"^MLM ([0-9.]+), RTD ([0-9.]+), discriminator accuracy ([0-9.]+)$", printed, re.M)
    assert len(compat) == 1 and 5 < float(compat[0][0]) < 8, printed  # electra-pytorch's API: MLM near log(500)
