"""The parity and bench sub-commands."""


from electra_fast.bench import find_benchmarks
from electra_fast.cli import main


def test_parity_reports_every_op_within_tolerance(capsys):
    assert main(["parity", "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    for op in ("mask_tokens", "generator", "rtd", "attention"):
        assert op in out
    assert "FAIL" not in out


def test_parity_rejects_unknown_ops():
    import pytest

    with pytest.raises(SystemExit, match="unknown op"):
        main(["parity", "--ops", "softmax", "--dtypes", "float32"])


def test_bench_finds_the_suites_of_this_checkout(tmp_path):
    from pathlib import Path

    suites = find_benchmarks(Path(__file__).resolve().parent)
    assert suites is not None and (suites / "report.py").exists()


def test_bench_runs_a_suite_and_writes_the_table(tmp_path):
    """`electra-fast bench` collects the bench_*.py suites (pytest's default file pattern would find none)."""
    from electra_fast.cli import main as cli

    assert cli(["bench", "--out", str(tmp_path), "-k", "test_masking and reference and 32x128"]) == 0
    table = (tmp_path / "benchmarks.md").read_text()
    assert "## mask_tokens" in table and "reference" in table
