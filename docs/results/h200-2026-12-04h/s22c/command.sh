#!/usr/bin/env bash
# Attention (first chunk's slots before the wait, new k/v loads beside q's, a chunk's values at once: ATTN_WIDE_VALUES), Q5_0 second tile before the wait (MMA_PRELOAD2_MAX_NT), sampler parameters read from mapped host memory and the draws' download on a copy stream. Baseline: s22a (main at 6fd2b13's kernels with -DMMA_L2_PREFETCH=0).
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s22c/*.whl .device/wheels/gguf-*.whl || exit 1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_a .device/ab/s22a/*.whl || exit 1
export FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( PYTHONPATH=/tmp/site python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  PYTHONPATH=/tmp/site python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
export PYTHONPATH=/tmp/site
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_engine.py tests/test_cuda_dlpack.py tests/test_sampling.py -m cuda -x 2>&1 | tail -4 | tee $OUT/pytest_engine.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_row_ops.py tests/test_cuda_matvec.py -m "cuda and not model" -k "not every_type_one_to_eight" -x 2>&1 | tail -4 | tee $OUT/pytest_model.txt
wait $synth; cat $OUT/synth.txt
tl() { timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -E "^\| |us a step|^idle"; }
for v in "new" "new -DATTN_WIDE_VALUES=0" "new -DMMA_PRELOAD2_MAX_NT=0" "base -DMMA_L2_PREFETCH=0"; do
  set -- $v; w=$1; shift; d="$*"; site=/tmp/site; [ $w = base ] && site=/tmp/site_a
  echo "== $w defines: ${d:-none}"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" tl
done | tee $OUT/timeline_ab.txt
for round in 1 2; do for v in "new" "base -DMMA_L2_PREFETCH=0"; do for m in syn05 syn7b; do
  rem=$((580 - SECONDS + t0)); [ $rem -lt 25 ] && break
  set -- $v; w=$1; shift; d="$*"; site=/tmp/site; [ $w = base ] && site=/tmp/site_a
  echo "== $m $w ${d:-none} round $round"
  PYTHONPATH=$site FERRITE_CUDA_KERNEL_DEFINES="$d" timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2,8 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done; done; done | tee $OUT/generate_ab.txt
echo "all $((SECONDS-t0)) s"
