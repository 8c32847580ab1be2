#!/usr/bin/env bash
# Session 20, call 3: more warps an SM for the one- and two-row kernels (registers capped by __launch_bounds__), with and without the ring: kernels side by side; sweep; syn7b decode.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s20c/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
for v in "base|0,4608|" "mb3|0,4608|-DMMA_MIN_BLOCKS_SMALL=3" "mb4|0|-DMMA_MIN_BLOCKS_SMALL=4" "mb3ring|2304,4608,6912|-DMMA_MIN_BLOCKS_SMALL=3 -DMMA_RING_ONLY" "mb4ring|2304,4608|-DMMA_MIN_BLOCKS_SMALL=4 -DMMA_RING_ONLY"; do
  IFS='|' read name rings defs <<< "$v"
  echo "######## $name ($defs) rings $rings"
  FERRITE_CUDA_KERNEL_DEFINES="$defs" timeout 100 python3 benches/bench_cuda_matvec.py --rings $rings --shapes 7b --types Q4_K,Q6_K,Q8_0,Q5_0 --rows 1,2 2>&1 | grep -vE "^(NVIDIA|device-to|ferrite:|$)"
done 2>&1 | tee $OUT/minblocks.txt
echo "kernels $((SECONDS-t0)) s"
FERRITE_CUDA_KERNEL_DEFINES="-DMMA_MIN_BLOCKS_SMALL=3" timeout 120 python3 benches/bench_cuda_matvec.py --sweep-plans --rings 0 --shapes 7b --types Q4_K,Q6_K --rows 1 2>&1 | tee $OUT/sweep_mb3.txt
echo "sweep $((SECONDS-t0)) s"
wait $synth; cat $OUT/synth.txt
for v in "base|0|" "mb3|0|-DMMA_MIN_BLOCKS_SMALL=3" "mb3ring|4608|-DMMA_MIN_BLOCKS_SMALL=3 -DMMA_RING_ONLY"; do
  IFS='|' read name ring defs <<< "$v"
  rem=$((560 - SECONDS + t0)); [ $rem -lt 30 ] && break
  echo "== syn7b $name"
  FERRITE_CUDA_MATVEC_RING=$ring FERRITE_CUDA_KERNEL_DEFINES="$defs" timeout $rem python3 benches/bench_generate.py --model /root/m/syn7b.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done 2>&1 | tee $OUT/generate_mb.txt
echo "all $((SECONDS-t0)) s"
