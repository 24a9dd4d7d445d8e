#!/usr/bin/env bash
# One GPU call: GPU tests, compile-time profile, linear and MLP-block fusion benchmarks, e2e cases. Results into $OUT.
#   bash scripts/gpu_session.sh [tests] [profile] [phases CASE] [overhead] [rounding] [linear] [fusion] [breakdown "CASE [--cudagraphs]"] [e2e CASE... [--max-autotune] [--append]]
#   TESTS_K=EXPR: only the GPU tests pytest -k selects; E2E_TAG=TAG: e2e_<gpu>_TAG.* (a partial run keeps the full table)
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
while [ $# -gt 0 ]; do
  case "$1" in
    tests) python3 -m pytest -q -p no:cacheprovider -s -m gpu tests/gpu --tb=short ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/gpu_tests.log" \
             | grep -E "^(flux|sd3|pixart|wan|dit|qwen|zimage)[ a-z]*:|passed|failed|Error|assert" | head -40
           python3 -m pytest -q -p no:cacheprovider tests/test_inductor_lowering.py tests/test_producers.py 2>&1 | tail -1 ;;
    overhead) timeout 300 python3 scripts/gpu_call_overhead.py 2>&1 | grep -v Warning | tee "$OUT/call_overhead.log" ;;
    profile) timeout 200 python3 scripts/gpu_compile_profile.py 2>&1 | grep -v Warning | tee "$OUT/compile_profile.log" ;;
    phases) shift; timeout 300 python3 scripts/gpu_compile_phases.py $1 ${PHASES_ARGS:-} 2>&1 | grep -v Warning | tee -a "$OUT/compile_phases.log" | tail -16 ;;
    fusion) timeout 300 python3 benchmarks/fusion.py --tokens 4096 16384 --out "$OUT" --dump-code "$OUT/code" 2>&1 | grep -v Warning | tail -3 ;;
    breakdown) shift; python3 benchmarks/breakdown.py --out "$OUT" --cases $1 2>&1 | grep -v Warning | tail -3 ;;
    rounding) timeout 300 python3 benchmarks/rounding.py --device cuda --out "$OUT" 2>&1 | grep -v Warning | tail -8 ;;
    linear) timeout 400 python3 benchmarks/linear.py --out "$OUT" 2>&1 | grep -v Warning | tail -6 ;;
    e2e) shift; python3 benchmarks/e2e.py --runs 15 --out "$OUT" ${E2E_TAG:+--tag "$E2E_TAG"} --cases "$@" 2>&1 | grep -v Warning | tail -8; break ;;
  esac
  shift
done
