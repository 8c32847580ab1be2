#!/usr/bin/env bash
# The real model's GPU tests and accuracy (may run beside the llama.cpp build: correctness only).
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out-real}; mkdir -p "$out"
site=/tmp/site-new
[ -d $site ] || python3 -m pip install --quiet --no-index --no-deps --target $site .device/ab/new/ferrite*.whl .device/wheels/gguf-*.whl
export PYTHONPATH=$site FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf FERRITE_TEST_MODEL=/root/m/model.gguf FERRITE_CACHE=/tmp/cache-new
sha256sum /root/m/model.gguf
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py -m "cuda and model" > $out/pytest_real.txt 2>&1; echo "pytest rc=$?"; tail -n 3 $out/pytest_real.txt
timeout 120 python3 scripts/gpu_accuracy.py /root/m/model.gguf > $out/accuracy.txt 2>&1; echo "accuracy rc=$?"; tail -n 15 $out/accuracy.txt
