#!/usr/bin/env bash
# Session 22, E: s22d (main + the sampler's copies on a copy stream) on the real model beside llama.cpp 0c1e57098 built in this lease, and s22a (-DMMA_L2_PREFETCH=0: main before the sampler change) for the timeline A/B.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s22d/*.whl .device/wheels/gguf-*.whl || exit 1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_a .device/ab/s22a/*.whl || exit 1
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
timeout 90 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,2,4,8 --modes t0.8+filters 2>&1 | grep -E "^\|" | tee $OUT/generate.txt
echo "generate $((SECONDS-t0)) s"
while [ ! -f /root/llamacpp.done ] && [ $((SECONDS-t0)) -lt 330 ]; do sleep 3; done
echo "llama.cpp built: $(cat /root/llamacpp.done 2>/dev/null) at $((SECONDS-t0)) s"
b=/root/llamacpp/build/bin
{ timeout 50 $b/llama-bench -m /root/m/model.gguf -ngl 99 -p 0 -n 128 -r 3 2>&1 | grep -E '^\|'
  timeout 80 $b/llama-batched-bench -m /root/m/model.gguf -ngl 99 -c 33280 -npp 128 -ntg 128 -npl 1,2,4,8 2>&1 | grep -E '^\|'; } | tee $OUT/llamacpp.txt
echo "llama.cpp $((SECONDS-t0)) s"
for w in new base new base; do
  site=/tmp/site; d=""; [ $w = base ] && site=/tmp/site_a && d="-DMMA_L2_PREFETCH=0"
  echo "== $w ${d:-none}"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" timeout 60 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done | tee $OUT/generate_ab.txt
echo "generate a/b $((SECONDS-t0)) s"
for w in new base; do
  site=/tmp/site; d=""; [ $w = base ] && site=/tmp/site_a && d="-DMMA_L2_PREFETCH=0"
  echo "== $w ${d:-none}"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" timeout 45 python3 benches/profile_cuda_decode.py /root/m/model.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -E "^\| |us a step|^idle"
done | tee $OUT/timeline_real.txt
rem=$((585 - SECONDS + t0))
[ $rem -gt 30 ] && timeout $rem python3 -m pytest -q -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda 2>&1 | tail -3 | tee $OUT/pytest_engine.txt
echo "all $((SECONDS-t0)) s"
