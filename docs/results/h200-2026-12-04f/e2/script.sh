#!/usr/bin/env bash
# Session 20, E2: main's wheel (s20e) on the real model beside llama.cpp 0c1e57098 built in this lease: llama-bench tg128, llama-batched-bench at 1/2/4/8, then ferrite's bench_generate (decode only at 1 and 8) and bench_cuda.py's sweep (forward_batch loop and Generator at 1/2/4/8).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
[ -d /tmp/site/ferrite ] || python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s20e/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache
mkdir -p "$OUT"
t0=$SECONDS
while [ ! -f /root/llamacpp.done ] && [ $((SECONDS-t0)) -lt 200 ]; do sleep 3; done
echo "llama.cpp built: $(cat /root/llamacpp.done 2>/dev/null) at $((SECONDS-t0)) s"
b=/root/llamacpp/build/bin
{ timeout 60 $b/llama-bench -m /root/m/model.gguf -ngl 99 -p 0 -n 128 -r 3 2>&1 | grep -E '^\|'
  timeout 90 $b/llama-batched-bench -m /root/m/model.gguf -ngl 99 -c 33280 -npp 128 -ntg 128 -npl 1,2,4,8 2>&1 | grep -E '^\|'; } | tee $OUT/llamacpp.txt
echo "llama.cpp $((SECONDS-t0)) s"
timeout 120 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee $OUT/generate.txt
echo "generate $((SECONDS-t0)) s"
rem=$((580 - SECONDS + t0))
timeout $rem python3 benches/bench_cuda.py /root/m/model.gguf --hf none --batches 1,2,4,8 --json $OUT/bench_cuda.json 2>&1 | tail -45 | tee $OUT/bench_cuda.txt
echo "all $((SECONDS-t0)) s"
