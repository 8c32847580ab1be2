#!/usr/bin/env bash
# Template for the next session's first call: the branch next/matvec-prefetch-fused-norm's wheel (build it into .device/ab/s22a first) with its two defines on and off, on one build: matvec tests; syn05 / syn7b decode at 1, 2; the timeline.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s22a/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -k "matvec or mixed_types or every_type" -x 2>&1 | tail -4 | tee $OUT/pytest.txt
wait $synth; cat $OUT/synth.txt
for d in "" "-DMMA_FUSED_NORM=0" "-DMMA_L2_PREFETCH=0" "-DATTN_L2_PREFETCH=0" "-DMMA_FUSED_NORM=0 -DMMA_L2_PREFETCH=0 -DATTN_L2_PREFETCH=0"; do
  echo "== defines: ${d:-none}"
  FERRITE_CUDA_KERNEL_DEFINES="$d" timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -E "^\| (matvec|attention)|us a step"
done | tee $OUT/timeline_ab.txt
for round in 1 2; do for d in "" "-DMMA_FUSED_NORM=0 -DMMA_L2_PREFETCH=0 -DATTN_L2_PREFETCH=0"; do for m in syn05 syn7b; do
  rem=$((560 - SECONDS + t0)); [ $rem -lt 25 ] && break
  echo "== $m defines: ${d:-none} round $round"
  FERRITE_CUDA_KERNEL_DEFINES="$d" timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done; done; done | tee $OUT/generate_ab.txt
echo "all $((SECONDS-t0)) s"
