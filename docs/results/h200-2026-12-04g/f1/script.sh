#!/usr/bin/env bash
# Session 21, F: main + q/k/v (and gate/up) of mixed Q4_0/Q5_0/Q8_0 types loaded as Q8_0, one launch (s21y), on the real model: the cuda+model tests, the accuracy against float64, decode at 1 and 8 sequences, the step's timeline; syn05 decode; the cuda model/engine/row-op tests.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s21y/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p "$OUT"
t0=$SECONDS
( python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
sha256sum /root/m/model.gguf | tee $OUT/sha.txt
export FERRITE_TEST_MODEL=/root/m/model.gguf
timeout 150 python3 -m pytest -q -ra -p no:cacheprovider -m "cuda and model" tests --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py 2>&1 | tail -6 | tee $OUT/pytest_real.txt
echo "real tests $((SECONDS-t0)) s"
timeout 100 python3 scripts/gpu_accuracy.py /root/m/model.gguf 2>&1 | tail -8 | tee $OUT/accuracy.txt
echo "accuracy $((SECONDS-t0)) s"
timeout 80 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee $OUT/generate.txt
echo "generate $((SECONDS-t0)) s"
timeout 45 python3 benches/profile_cuda_decode.py /root/m/model.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -v Warn | tail -18 | tee $OUT/timeline_real.txt
echo "timeline $((SECONDS-t0)) s"
timeout 60 python3 benches/bench_generate.py --model /root/m/syn05.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee $OUT/generate_syn05.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py tests/test_cuda_row_ops.py -m "cuda and not model" 2>&1 | tail -3 | tee $OUT/pytest_head.txt
echo "all $((SECONDS-t0)) s"
