"""benchmarks/gpu_check.sh's dry run: every stage on the CPU with tiny shapes, one of them out of time on purpose.

A stage that runs out of time must cost no other stage its figures: the report keeps every row measured before
it, and the stages after it still run (about a minute on a 2-core machine). Within a stage, a suite interrupted
part-way keeps every case it measured before the interrupt (a few seconds).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from rows import read  # noqa: E402

STAGES = ("machine", "correctness", "step", "generator_head", "attention", "rtd_loss", "masking", "report")
OUT_OF_TIME = "generator_head"


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_keeps_every_stage_when_one_runs_out_of_time(tmp_path):
    env = dict(os.environ, GPU_CHECK_DRY_RUN="1", GPU_CHECK_RESULTS=str(tmp_path),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # this python as python3
    env[f"GPU_CHECK_BUDGET_{OUT_OF_TIME.upper()}"] = "0.5"  # SIGINT while pytest still imports
    env.pop("OUT", None)
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]

    rows = read(str(tmp_path / "rows.jsonl"))
    statuses = {row["stage"]: row["status"] for row in rows if row["kind"] == "stage"}
    assert statuses == {stage: "timed out" if stage == OUT_OF_TIME else "ok" for stage in STAGES}, \
        (tmp_path / "log.txt").read_text()[-5000:]
    report = (tmp_path / "benchmarks.md").read_text()
    lines = report.splitlines()

    machine = [row for row in rows if row["kind"] == "machine"]
    assert len(machine) == 1 and machine[0]["matmul_tflops"] > 0 and machine[0]["copy_gbps"] > 0
    assert "Measured peaks" in report
    tests = [row for row in rows if row["kind"] == "test"]
    assert any(row["outcome"] == "passed" for row in tests) and not any(row["outcome"] == "failed" for row in tests)
    assert all(f"| {row['test']} | {row['outcome']} |" in report for row in tests)
    timings = [row for row in rows if row["kind"] == "timing"]
    assert {row["op"] for row in timings} == {"pretraining_step", "attention_fwd_bwd", "rtd_loss", "mask_tokens"}
    cells = [line.split(" | ") for line in lines if line.startswith("| ")]
    for row in timings:  # each measured case is a row of its op's table, with the roofline column filled
        line = next(c for c in cells if c[0] == f"| {row['shape']}" and c[1].split(" (")[0].strip("*") == row["impl"])
        assert line[9] != "-" or not (row["flops"] or row["bytes_moved"]), line
    assert {"electra_fast", "hf_recipe"} <= {row["impl"] for row in timings if row["op"] == "pretraining_step"}
    profile = [row for row in rows if row["kind"] == "profile"]
    assert profile and "per fused op" in report
    assert "## generator_head_fwd_bwd" not in report
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["benchmarks.md", "benchmarks.png", "log.txt", "profile.png", "rows.jsonl"]


def test_a_suite_interrupted_part_way_keeps_the_cases_it_measured(tmp_path):
    """SIGINT (what gpu_check.sh's `timeout -s INT` sends) once the first case is a row: the rows written stay
    whole and make a table, and the cases after the interrupt are not measured."""
    rows_file = tmp_path / "rows.jsonl"
    env = dict(os.environ, ELECTRA_FAST_BENCH_ROWS=str(rows_file))
    env.pop("ELECTRA_FAST_BENCH_QUICK", None)  # the CPU's full masking matrix: 10 cases, a few seconds
    command = [sys.executable, "-m", "pytest", "benchmarks/bench_masking.py", "-q", "-p", "no:cacheprovider"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (rows_file.exists() and rows_file.read_text()) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2 and "KeyboardInterrupt" in output, output[-3000:]  # pytest: interrupted
    rows = read(str(rows_file))
    assert 1 <= len(rows) < 10 and len(rows) == len(rows_file.read_text().splitlines())
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--rows", str(rows_file), "--out",
                    str(tmp_path), "--no-plots"], check=True, capture_output=True)
    table = (tmp_path / "benchmarks.md").read_text()
    assert all(f"| {row['shape']} | " in table and row["impl"] in table for row in rows)
