"""Dispatch between Triton kernels and the reference (docs/design.md §3)."""

import pytest
import torch

import electra_fast as ef
from electra_fast import backend


def test_use_backend_overrides_and_restores(monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "auto")
    assert backend.requested_backend() == "auto"
    with ef.use_backend("reference"):
        assert backend.requested_backend() == "reference"
        assert not backend.use_triton(torch.device("cpu"))
    assert backend.requested_backend() == "auto"


def test_environment_variable_selects_backend(monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "reference")
    assert not backend.use_triton(torch.device("cpu"))
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "bogus")
    with pytest.raises(ValueError, match="ELECTRA_FAST_BACKEND"):
        backend.requested_backend()


def test_auto_uses_the_interpreter_on_cpu_only_when_enabled(monkeypatch):
    monkeypatch.setenv("ELECTRA_FAST_BACKEND", "auto")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.use_triton(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not backend.use_triton(torch.device("cpu"))


def test_forcing_triton_where_it_cannot_run_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with ef.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            backend.use_triton(torch.device("cpu"))


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        with ef.use_backend("cuda"):
            pass


def test_info_command_prints_versions_and_backends(capsys):
    from electra_fast.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "triton" in out and "Triton kernels run on" in out
