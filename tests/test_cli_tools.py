"""The parity and bench sub-commands."""


from pathlib import Path

from electra_fast.bench import find_benchmarks
from electra_fast.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_parity_reports_every_op_within_tolerance(capsys):
    assert main(["parity", "--dtypes", "float32"]) == 0
    out = capsys.readouterr().out
    for op in ("mask_tokens", "generator", "rtd", "attention"):
        assert op in out
    assert "FAIL" not in out
    assert out.strip().splitlines()[-1].startswith("parity: ok: all ")


def test_parity_rejects_unknown_ops():
    import pytest

    with pytest.raises(SystemExit, match="unknown op"):
        main(["parity", "--ops", "softmax", "--dtypes", "float32"])


def test_bench_finds_the_suites_of_this_checkout(tmp_path):
    suites = find_benchmarks(Path(__file__).resolve().parent)
    assert suites is not None and (suites / "report.py").exists()


def test_bench_runs_a_suite_and_writes_the_table(tmp_path):
    """`electra-fast bench` collects the bench_*.py suites (pytest's default file pattern would find none)."""
    from electra_fast.cli import main as cli

    assert cli(["bench", "--out", str(tmp_path), "-k", "test_masking and reference and 32x128"]) == 0
    table = (tmp_path / "benchmarks.md").read_text()
    assert "## mask_tokens" in table and "reference" in table
    assert not (REPO / ".benchmarks").exists()  # pytest-benchmark's storage went to --out


def test_running_the_tests_leaves_no_benchmarks_folder():
    assert not (REPO / ".benchmarks").exists() and not (Path.cwd() / ".benchmarks").exists()


def test_bench_inspect_and_tune_help_say_what_they_do(capsys):
    import pytest

    from electra_fast.cli import main as cli

    for command, words in [("bench", "source checkout"), ("inspect", "Triton interpreter"),
                           ("tune", "Nothing tunes during training")]:
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        assert words in " ".join(capsys.readouterr().out.split()), command
