#!/usr/bin/env bash
# First call: llama.cpp's build started in the background, then the landed wheel's GPU tests (no real model) beside it.
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out-t44}; mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
bash .device/llamacpp/build.sh .device/llamacpp
site=/tmp/site-new; rm -rf $site
python3 -m pip install --quiet --no-index --no-deps --target $site .device/ab/new/ferrite*.whl .device/wheels/gguf-*.whl
export FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
t0=$SECONDS
PYTHONPATH=$site FERRITE_CACHE=/tmp/cache-new timeout 280 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_matvec.py tests/test_cuda_engine.py -m "cuda and not model" -k "not real_model" > $out/pytest.txt 2>&1
echo "pytest rc=$? $((SECONDS-t0)) s"; tail -n 3 $out/pytest.txt
