#!/usr/bin/env bash
# The whole first contact with a GPU machine in one call (docs/cuda.md), within a time budget:
#
#   bash benchmarks/gpu_oneshot.sh            # OUT=<folder> for the results (default ./gpu_out)
#
# Phases, in order; the first that fails ends the run with its exit code:
#   deps   10  python3 has torch, pytest, hypothesis, numpy, safetensors (and to build: pybind11,
#              scikit-build-core)
#   build  11  pip install --no-build-isolation --no-deps -e . for 90a-real only, and the CUDA module
#              must come out (SAE_NATIVE_REQUIRE_CUDA=1)
#   info   12  build_info: the driver, runtime and GPU (gpu_check.py --only info)
#   smoke  13  every op once at full size against torch (gpu_check.py --only smoke)
#   tests  14  tests/test_cuda.py's GPU half under a timeout (gpu_check.py --only tests)
#   ops    15  every op checked and timed against torch (gpu_check.py --only ops)
#   race   16  if time is left: compute-sanitizer --tool racecheck on the many-compactions case
# 20: the budget ran out. Every phase writes into $OUT as it goes: status.json (each phase's exit
# code and seconds, rewritten after each), build.log, gpu_check.json, gpu_check.log, junit.xml,
# racecheck.log.
#
# Environment: OUT, BUDGET_S (default 540: the script stops itself before a 10-minute limit),
# SAE_ONESHOT_SKIP_BUILD=1 (use the package as installed), SAE_ONESHOT_PYTHON (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_out}"
BUDGET_S="${BUDGET_S:-540}"
PY="${SAE_ONESHOT_PYTHON:-python3}"
mkdir -p "$OUT"
start=$(date +%s)
phases_json=""

left() { echo $(( BUDGET_S - ($(date +%s) - start) )); }

record() {  # record PHASE CODE SECONDS [NOTE]: rewrite status.json with every phase so far
  local note="${4:-}"
  phases_json="${phases_json:+$phases_json, }{\"phase\": \"$1\", \"exit\": $2, \"seconds\": $3, \"note\": \"${note//\"/\'}\"}"
  printf '{"phases": [%s], "seconds": %s, "budget_s": %s}\n' "$phases_json" "$(( $(date +%s) - start ))" \
    "$BUDGET_S" > "$OUT/status.json"
}

finish() {  # finish CODE MESSAGE
  echo "gpu_oneshot: $2 (exit $1); results in $OUT" >&2
  exit "$1"
}

# run PHASE CODE MIN_SECONDS COMMAND...: runs COMMAND under the time left, records it, stops the
# script on failure with CODE (or 20 when out of time).
run() {
  local phase=$1 code=$2 need=$3
  shift 3
  local budget
  budget=$(left)
  if [ "$budget" -lt "$need" ]; then
    record "$phase" 20 0 "not started: ${budget}s left, needs ${need}s"
    finish 20 "out of time before $phase"
  fi
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$budget" "$@"
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  # timeout's 124 / 137, or gpu_check.py's own "out of time" (3)
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] || { [ "$rc" -eq 3 ] && [ "$phase" != deps ] && [ "$phase" != build ]; }; then
    record "$phase" 20 "$dt" "killed at the budget"
    finish 20 "out of time in $phase"
  fi
  if [ "$rc" -ne 0 ]; then
    record "$phase" "$code" "$dt" "command exited $rc"
    finish "$code" "$phase failed"
  fi
  record "$phase" 0 "$dt"
}

run deps 10 5 "$PY" -c "
import importlib.util, os, sys
need = ['torch', 'pytest', 'hypothesis', 'numpy', 'safetensors']
if os.environ.get('SAE_ONESHOT_SKIP_BUILD') != '1':
    need += ['pybind11', 'scikit_build_core']
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit('missing Python packages: ' + ', '.join(missing) + ' (carry them as wheels: docs/cuda.md)')
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
"

if [ "${SAE_ONESHOT_SKIP_BUILD:-0}" != "1" ]; then
  run build 11 60 env SAE_NATIVE_REQUIRE_CUDA=1 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90a-real" \
    bash -c "'$PY' -m pip install --no-build-isolation --no-deps -v -e . > '$OUT/build.log' 2>&1 || \
             { tail -40 '$OUT/build.log' >&2; exit 1; }"
else
  record build 0 0 "skipped (SAE_ONESHOT_SKIP_BUILD=1)"
fi

CHECK=("$PY" benchmarks/gpu_check.py --out "$OUT")
run info 12 5 "${CHECK[@]}" --only info
run smoke 13 20 "${CHECK[@]}" --only smoke --budget "$(left)"
run tests 14 30 "${CHECK[@]}" --only tests --budget "$(( $(left) - 150 ))"
run ops 15 60 "${CHECK[@]}" --only ops --budget "$(( $(left) - 20 ))"

if command -v compute-sanitizer > /dev/null && [ "$(left)" -gt 60 ]; then
  run race 16 60 bash -c "compute-sanitizer --tool racecheck --error-exitcode 7 '$PY' benchmarks/gpu_check.py \
      --out '$OUT' --only race > '$OUT/racecheck.log' 2>&1; rc=\$?; tail -5 '$OUT/racecheck.log'; exit \$rc"
else
  record race 0 0 "skipped: no compute-sanitizer, or under 60 s left"
fi
finish 0 "all phases passed"
