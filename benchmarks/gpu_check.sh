#!/usr/bin/env bash
# GPU checks in one go, on a machine with an NVIDIA GPU and no network; must finish in under 8 minutes.
# Installs the package, compiles every kernel ahead of time, runs the test suite on CUDA (no interpreter),
# then each benchmarks/bench_*.py suite under its own time limit (a slow suite cannot cost the others their
# results), and writes a dated report under benchmarks/results/ (copied to $OUT when set).
# Worst case: 15 s install + 60 s AOT + 150 s tests + 245 s benchmarks + report < 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
out="benchmarks/results/$stamp"
mkdir -p "$out"
status=0
step() { echo "[$(date -u +%T)] $*"; }

step install
python -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 || status=1
{ nvidia-smi; python -m electra_fast info; pip list 2>/dev/null | grep -iE "^(torch|triton|transformers|flash|liger)"; } \
    > "$out/machine.txt" 2>&1

step "AOT compile (sm_80, sm_90a)"
timeout 60 python -m electra_fast.aot --json "$out/aot.json" > "$out/aot.log" 2>&1 || status=1

step "test suite on CUDA"
timeout 150 python -m pytest tests -q -p no:cacheprovider -rfs --durations=15 > "$out/tests.log" 2>&1 || status=1

# Seconds per suite: each compiles its own kernels and torch.compile baselines first.
declare -A budget=([masking]=25 [rtd_loss]=40 [generator_head]=70 [attention]=70 [step]=40)
for suite in masking rtd_loss generator_head attention step; do
    step "benchmark $suite"
    timeout "${budget[$suite]}" python -m pytest "benchmarks/bench_$suite.py" -q -p no:cacheprovider \
        --benchmark-json "$out/bench_$suite.json" > "$out/bench_$suite.log" 2>&1 || status=1
done

step report
# Each median beside the roofline lower bound of its FLOPs and bytes on this GPU (data-sheet peaks: a model).
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
python benchmarks/report.py "$out"/bench_*.json --out "$out" --roofline "${gpu:-unknown}" > "$out/report.log" 2>&1 \
    || status=1
tail -n 2 "$out/tests.log" "$out"/bench_*.log
[ -f "$out/roofline.md" ] && cat "$out/roofline.md"
[ -n "${OUT:-}" ] && cp -r "$out" "$OUT/"
step "done (status $status)"
exit $status
