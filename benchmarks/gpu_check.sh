#!/usr/bin/env bash
# GPU checks in one go, on a machine with an NVIDIA GPU and no network, in the order of what matters. Each stage
# runs under its own budget (SIGINT when it runs out, SIGKILL 10 s later) and keeps what it measured: every test
# outcome, benchmark case and profile is appended to rows.jsonl the moment it is known (benchmarks/rows.py), and
# the report is rewritten after every stage, so a stage that fails or runs out costs no earlier figure.
#
#   stage           budget  what it measures
#   install           30 s  pip install -e . (no dependencies: the machine has no network)
#   machine           30 s  nvidia-smi and versions; bf16 matmul TFLOP/s and copy GB/s (benchmarks/peaks.py):
#                           every roofline in the report uses these measured peaks
#   correctness       90 s  tests -m gpu_check on CUDA: each kernel in fp16 and bf16 against fp64 (2x PyTorch's
#                           error), random bits against the reference, one whole fused step against the reference,
#                           the chunked head's fp32-output GEMMs taken (not refused)
#   step             150 s  bench_step.py at base size, bf16, 64 x 128 and 16 x 512: electra-fast against the HF
#                           recipe (s/step, sequences/s, peak memory), one profiled step (share per fused op),
#                           then each under torch.compile
#   generator_head    45 s  per-kernel suites, most important first, quick matrix: time, TFLOP/s and GB/s
#   attention         50 s    against the measured roofline
#   rtd_loss          30 s
#   masking           20 s
#   report            15 s  benchmarks.md, benchmarks.png, profile.png
# Budgets add up to 460 s: under 8 minutes from a bare machine. The results folder benchmarks/results/<stamp>/
# (GPU_CHECK_RESULTS=DIR to choose another) holds five files (benchmarks.md and its two plots, rows.jsonl, log.txt),
# copied to $OUT/<stamp>/ after every stage.
#
#   GPU_CHECK_DRY_RUN=1        the same stages on the CPU with tiny shapes (no install; the tests' kernels in the
#                              Triton interpreter, the benchmarks on the CPU path)
#   GPU_CHECK_FULL=1           each suite's full matrix (FlexAttention, cold torch.compile baselines): raise the
#                              budgets to match
#   GPU_CHECK_BUDGET_<STAGE>=S  another budget for a stage (e.g. GPU_CHECK_BUDGET_ATTENTION=90)
set -uo pipefail
cd "$(dirname "$0")/.."
py=$(command -v python3 || command -v python)
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "${GPU_CHECK_RESULTS:=benchmarks/results/$stamp}"
out=$(cd "$GPU_CHECK_RESULTS" && pwd)
rows="$out/rows.jsonl"
log="$out/log.txt"
export ELECTRA_FAST_BENCH_ROWS="$rows" PYTHONPATH="$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
[ "${GPU_CHECK_FULL:-0}" = 1 ] || export ELECTRA_FAST_BENCH_QUICK=1
# The benchmarks time the CPU path on the CPU; the tests' conftest.py puts the kernels in the interpreter there.
unset TRITON_INTERPRET
[ "${GPU_CHECK_DRY_RUN:-0}" = 1 ] && export CUDA_VISIBLE_DEVICES=""
declare -A budget=([install]=30 [machine]=30 [correctness]=90 [step]=150 [generator_head]=45 [attention]=50
                   [rtd_loss]=30 [masking]=20 [report]=15)
status=0
summary=""

report() {  # rewrite benchmarks.md from every row so far (plots only at the end), and copy the folder to $OUT
    "$py" benchmarks/report.py --rows "$rows" --out "$out" "$@" > /dev/null 2>> "$log" || status=1
    if [ -n "${OUT:-}" ]; then mkdir -p "$OUT/$stamp" && cp "$out"/* "$OUT/$stamp/"; fi
}

stage() {  # stage NAME COMMAND...: run COMMAND under the stage's budget, log it, record a "stage" row, report
    local name=$1 limit_var="GPU_CHECK_BUDGET_${1^^}" start=$SECONDS rc result
    shift
    local limit=${!limit_var:-${budget[$name]}}
    echo "[$(date -u +%T)] $name (budget $limit s)"
    echo "===== $name: $*" >> "$log"
    timeout -s INT -k 10 "$limit" "$@" >> "$log" 2>&1
    rc=$?
    case $rc in
        0) result=ok ;;
        124 | 137) result="timed out" ;;
        *) result="failed (exit $rc)" ;;
    esac
    [ $rc = 0 ] || status=1
    local seconds=$((SECONDS - start))
    printf '{"kind": "stage", "stage": "%s", "status": "%s", "seconds": %s, "budget_s": %s}\n' \
        "$name" "$result" "$seconds" "$limit" >> "$rows"
    echo "[$(date -u +%T)] $name: $result after $seconds s"
    summary+="$name: $result ($seconds of $limit s); "
    report --no-plots
}

machine() {  # run by `timeout`, through bash -c
    if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "no nvidia-smi on this machine"; fi
    "$py" -m pip list 2>/dev/null | grep -iE "^(torch|triton|transformers|flash|liger|pytest)"
    "$py" benchmarks/peaks.py
}
export py
export -f machine

if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    echo "[$(date -u +%T)] dry run on the CPU: install skipped"
else
    stage install "$py" -m pip install -q --no-deps --no-build-isolation -e .
fi
stage machine bash -c machine
# In the order of what matters: the whole step first (it runs every kernel), then each kernel, then the draws.
stage correctness "$py" -m pytest -p pytest_rows -m gpu_check -q -p no:cacheprovider -rfE tests/test_pretrainer.py \
    tests/test_generator_head.py tests/test_matmul_fp32.py tests/test_attention.py tests/test_rtd_loss.py \
    tests/test_masking.py tests/test_rng.py
# Each benchmark case is a row the moment it is measured.
for suite in step generator_head attention rtd_loss masking; do
    stage "$suite" "$py" -m pytest "benchmarks/bench_$suite.py" -q -p no:cacheprovider -rfE
done
stage report "$py" benchmarks/report.py --rows "$rows" --out "$out"
cat "$out/benchmarks.md"
echo
echo "[$(date -u +%T)] done (status $status): $summary$out"
exit $status
