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
