"""A pytest plugin for benchmarks/gpu_check.sh's correctness stage: with ELECTRA_FAST_BENCH_ROWS set, each test's
outcome is appended as one "test" row the moment it is known, so a stage stopped part-way keeps what ran.

    PYTHONPATH=benchmarks python -m pytest -p pytest_rows tests -m gpu_check
"""

from __future__ import annotations

from rows import record


def pytest_runtest_logreport(report):
    # One row per test: its call phase, or the setup phase when that failed or skipped (the call never ran).
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        row = {"kind": "test", "test": report.nodeid, "outcome": report.outcome, "seconds": report.duration}
        if report.outcome == "failed":
            row["message"] = report.longreprtext.strip().splitlines()[-1][:300] if report.longreprtext else ""
        record(row)
