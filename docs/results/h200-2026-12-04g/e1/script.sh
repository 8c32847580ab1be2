#!/usr/bin/env bash
# Session 21, E: main's wheel (s21x: the one-row tile loop unrolled twice, Q6_K's masks on x, the one-wave plan rule) on the real model: the cuda+model tests, the accuracy against float64, decode beside llama.cpp 0c1e57098 built in this lease, the cuda model/engine/row-op tests, the step's timeline.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s21x/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache
mkdir -p "$OUT"
t0=$SECONDS
sha256sum /root/m/model.gguf | tee $OUT/sha.txt
echo "llama.cpp: $(cat /root/llamacpp.done 2>/dev/null || echo building)"
export FERRITE_TEST_MODEL=/root/m/model.gguf
timeout 150 python3 -m pytest -q -ra -p no:cacheprovider -m "cuda and model" tests --ignore=tests/test_notebooks.py --ignore=tests/test_readme.py 2>&1 | tail -6 | tee $OUT/pytest_real.txt
echo "real tests $((SECONDS-t0)) s"
timeout 120 python3 scripts/gpu_accuracy.py /root/m/model.gguf 2>&1 | tail -12 | tee $OUT/accuracy.txt
echo "accuracy $((SECONDS-t0)) s"
timeout 90 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee $OUT/generate.txt
echo "generate $((SECONDS-t0)) s"
while [ ! -f /root/llamacpp.done ] && [ $((SECONDS-t0)) -lt 330 ]; do sleep 3; done
echo "llama.cpp built: $(cat /root/llamacpp.done 2>/dev/null) at $((SECONDS-t0)) s"
b=/root/llamacpp/build/bin
{ timeout 50 $b/llama-bench -m /root/m/model.gguf -ngl 99 -p 0 -n 128 -r 3 2>&1 | grep -E '^\|'
  timeout 70 $b/llama-batched-bench -m /root/m/model.gguf -ngl 99 -c 33280 -npp 128 -ntg 128 -npl 1,8 2>&1 | grep -E '^\|'; } | tee $OUT/llamacpp.txt
echo "llama.cpp $((SECONDS-t0)) s"
timeout 60 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee -a $OUT/generate.txt
echo "generate again $((SECONDS-t0)) s"
timeout 45 python3 benches/profile_cuda_decode.py /root/m/model.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -v Warn | tail -20 | tee $OUT/timeline_real.txt
rem=$((585 - SECONDS + t0))
timeout $rem python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_engine.py tests/test_cuda_row_ops.py -m "cuda and not model" 2>&1 | tail -3 | tee $OUT/pytest_head.txt
echo "all $((SECONDS-t0)) s"
