#!/usr/bin/env bash
# Session 20, E1: main's wheel (s20e = 5e5bb6a) on the real model: the cuda+model tests, the accuracy against float64, and the cuda model/engine tests that need no model (5e5bb6a's first GPU run).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s20e/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache
mkdir -p "$OUT"
t0=$SECONDS
sha256sum /root/m/model.gguf | tee $OUT/sha.txt
echo "llama.cpp: $(cat /root/llamacpp.done 2>/dev/null || echo building)"
export FERRITE_TEST_MODEL=/root/m/model.gguf
timeout 280 python3 -m pytest -q -ra -p no:cacheprovider -m "cuda and model" tests --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py 2>&1 | tail -15 | tee $OUT/pytest_real.txt
echo "real tests $((SECONDS-t0)) s"
timeout 150 python3 scripts/gpu_accuracy.py /root/m/model.gguf 2>&1 | tail -25 | tee $OUT/accuracy.txt
echo "accuracy $((SECONDS-t0)) s"
rem=$((575 - SECONDS + t0))
timeout $rem python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py tests/test_cuda_row_ops.py -m "cuda and not model" 2>&1 | tail -5 | tee $OUT/pytest_head.txt
echo "all $((SECONDS-t0)) s; llama.cpp: $(cat /root/llamacpp.done 2>/dev/null || echo building)"
