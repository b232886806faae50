"""``electra-fast bench``: run the pytest-benchmark suites of a source checkout and write tables and plots.

The suites live in ``benchmarks/`` of the repository (they are not installed with the package):
``electra-fast bench --out runs/bench [-k attention]`` runs them and calls ``benchmarks/report.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def find_benchmarks(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "benchmarks" / "report.py").exists():
            return folder / "benchmarks"
    return None


def run_bench(args) -> int:
    suites = find_benchmarks(Path.cwd()) or find_benchmarks(Path(__file__).resolve().parent)
    if suites is None:
        print("bench: no benchmarks/ folder found; run it from a source checkout of electra-fast", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The suites are bench_*.py files, which pytest does not collect from a folder by default.
    command = [sys.executable, "-m", "pytest", str(suites), "-q", "-p", "no:cacheprovider", "-o",
               "python_files=bench_*.py", "--benchmark-json", str(out / "benchmarks.json"),
               "--benchmark-storage", f"file://{out / 'storage'}"]  # not ./.benchmarks in the checkout
    if args.k:
        command += ["-k", args.k]
    status = subprocess.call(command, cwd=suites.parent)
    if (out / "benchmarks.json").exists():
        report = [sys.executable, str(suites / "report.py"), str(out / "benchmarks.json"), "--out", str(out)]
        status |= subprocess.call(report)
        print(f"tables and plots in {out}")
    return status


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="run the benchmark suites and write tables and plots (needs a source checkout)",
        description="Run the pytest-benchmark suites of benchmarks/ and write the JSON, tables and plots to --out. "
        "The suites are not installed with the package: run it in (or below) a source checkout of electra-fast "
        "(git clone, then pip install -e '.[test]').")
    parser.add_argument("--out", default=os.path.join("runs", "bench"), help="folder for the JSON, tables and plots")
    parser.add_argument("-k", default=None, help="pytest -k expression to pick benchmarks")
    parser.set_defaults(handler=run_bench)
