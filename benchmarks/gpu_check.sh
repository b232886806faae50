#!/usr/bin/env bash
# GPU checks in one go, on a machine with an NVIDIA GPU and no network; must finish in under 8 minutes.
# Installs the package, compiles every kernel ahead of time, runs the test suite on CUDA (no interpreter)
# and every benchmarks/bench_*.py suite, and writes a dated report under benchmarks/results/ (and $OUT).
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
out="benchmarks/results/$stamp"
mkdir -p "$out"
status=0
python -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || status=1
{ nvidia-smi; python -m electra_fast info; } > "$out/machine.txt" 2>&1
timeout 150 python -m electra_fast.aot --json "$out/aot.json" > "$out/aot.log" 2>&1 || status=1
timeout 200 python -m pytest tests -q -x -p no:cacheprovider > "$out/tests.log" 2>&1 || status=1
timeout 200 python -m pytest benchmarks -q -p no:cacheprovider --benchmark-json "$out/benchmarks.json" \
    > "$out/benchmarks.log" 2>&1 || status=1
[ -f "$out/benchmarks.json" ] && python benchmarks/report.py "$out/benchmarks.json" --out "$out" > /dev/null 2>&1
tail -n 3 "$out/tests.log" "$out/benchmarks.log"
[ -n "${OUT:-}" ] && cp -r "$out" "$OUT/"
exit $status
