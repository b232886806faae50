"""The rows file: one JSON object per line, appended the moment something is measured (benchmarks/gpu_check.sh).

Writers append to $ELECTRA_FAST_BENCH_ROWS with ``record`` (nothing when it is unset), each line whole, so a
process stopped at any point leaves every earlier row readable; ``read`` skips a line cut short by a kill. Rows
carry a ``kind``: "machine" (benchmarks/peaks.py), "test" (benchmarks/pytest_rows.py), "timing"
(common.measure), "profile" (bench_step.py) and "stage" (gpu_check.sh).
"""

from __future__ import annotations

import json
import os


def record(row: dict) -> None:
    """Append ``row`` as one JSON line to $ELECTRA_FAST_BENCH_ROWS (nothing without it)."""
    path = os.environ.get("ELECTRA_FAST_BENCH_ROWS")
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


def read(path: str) -> list[dict]:
    rows = []
    with open(path) as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a process killed mid-write
                continue
    return rows
