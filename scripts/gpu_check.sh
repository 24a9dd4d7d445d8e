#!/usr/bin/env bash
# On the GPU machine: GPU tests (fast path == reference path, kernels == live cuSPARSELt) and the
# MLP-block fusion benchmark. Wheels for what the machine lacks (diffusers) come in .whl/.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
OUT=${OUT:-/tmp/out}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/gpu tests/test_inductor_lowering.py --tb=short "$@" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
