#!/usr/bin/env bash
# Session 23, call A: main (4257a7a + the sampler's mass_terms, wheel .device/ab/s23m) on a GPU for
# the first time: first load on a fresh machine, then the CUDA tests that need no model file.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_m .device/ab/s23m/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site_m FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader > $OUT/gpu.txt
python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 | tee $OUT/synth.txt
# First load on a fresh machine (issue 9, item 4: under 2 s), before anything else compiles.
{ python3 benches/bench_first_load.py /root/m/syn05.gguf --cache /tmp/cold1 --label "fresh machine, empty cache"
  python3 benches/bench_first_load.py /root/m/syn05.gguf --cache /tmp/cold2 --label "empty cache again"
  python3 benches/bench_first_load.py /root/m/syn05.gguf --cache /tmp/cold2 --label "cached"; } 2>&1 | grep -v Warn | tee $OUT/first_load.txt
echo "first load done $((SECONDS-t0)) s"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda 2>&1 | tail -6 | tee $OUT/pytest_engine.txt
echo "engine tests done $((SECONDS-t0)) s"
rem=$((575 - SECONDS + t0))
timeout $rem python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_matvec.py tests/test_cuda_row_ops.py -m "cuda and not model" 2>&1 | tail -6 | tee $OUT/pytest_model.txt
echo "all $((SECONDS-t0)) s"
