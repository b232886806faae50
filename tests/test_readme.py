"""The README stays true: its API snippet runs as written, and its commands are the ones CI runs."""

import re
from pathlib import Path

import torch

from electra_fast import use_backend
from electra_fast.data import EmbeddedCorpus, corpus_text
from electra_fast.tokenizer import train_wordpiece

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_api_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    snippet = re.search(r"## The API in five minutes\s+```python\n(.*?)```", README, re.S).group(1)
    lines = [line for _, line in zip(range(3000), corpus_text(EmbeddedCorpus()))]
    train_wordpiece(lines, 500).save_pretrained(str(tmp_path / "runs" / "tiny" / "tokenizer"))  # what pretrain saves
    monkeypatch.chdir(tmp_path)
    with use_backend("reference"):  # the ops' paths have their own tests; here the snippet itself is checked
        exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    losses = [float(value) for value in re.findall(r"(?:MLM|RTD) ([0-9.]+)", printed)]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), printed
    assert (tmp_path / "electra-tiny" / "discriminator" / "config.json").is_file()


def test_ci_runs_the_readme_commands():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest tests' in README
    assert "pip install" in ci and "-e" in ci and "python -m pytest tests" in ci
