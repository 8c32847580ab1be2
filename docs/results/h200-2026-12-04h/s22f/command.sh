#!/usr/bin/env bash
# s22f: main + the batch description uploaded on the copy stream and moved into place by take_batch (the step's first kernel). Baseline s22a (-DMMA_L2_PREFETCH=0: main before the copy-stream changes). Tests, the timeline A/B and decode on syn05 (the first call was lost with the machine; this one trimmed to the budget left).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s22f/*.whl .device/wheels/gguf-*.whl || exit 1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_a .device/ab/s22a/*.whl || exit 1
export FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
export PYTHONPATH=/tmp/site
python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 | tee $OUT/synth.txt
export FERRITE_CACHE=/tmp/cache
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda -x 2>&1 | tail -4 | tee $OUT/pytest_engine.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py -m "cuda and not model" -x 2>&1 | tail -4 | tee $OUT/pytest_model.txt
for w in new base; do
  site=/tmp/site; d=""; [ $w = base ] && site=/tmp/site_a && d="-DMMA_L2_PREFETCH=0"
  echo "== $w ${d:-none}"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -E "^\| |us a step|^idle"
done | tee $OUT/timeline_ab.txt
for w in new; do for m in syn05; do
  rem=$((225 - SECONDS + t0)); [ $rem -lt 25 ] && break
  site=/tmp/site; d=""; [ $w = base ] && site=/tmp/site_a && d="-DMMA_L2_PREFETCH=0"
  echo "== $m $w ${d:-none}"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,8 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done; done | tee $OUT/generate_ab.txt
echo "all $((SECONDS-t0)) s"
