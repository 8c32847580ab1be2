#!/usr/bin/env bash
# Session 20, call 1: the weight ring (matvec_mma.cu streams tiles through shared memory with cp.async): tests; ring sizes side by side per kernel; decode end to end with and without.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s20a/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_matvec.py -x 2>&1 | tail -6 | tee $OUT/pytest_matvec.txt
echo "tests $((SECONDS-t0)) s"
timeout 170 python3 benches/bench_cuda_matvec.py --rings 0,4096,8192,16384 --shapes 7b,real --types Q4_K,Q6_K,Q5_0,Q8_0 --rows 1,2 2>&1 | tee $OUT/rings.txt
echo "rings $((SECONDS-t0)) s"
wait $synth; cat $OUT/synth.txt
echo "synth $((SECONDS-t0)) s"
for round in 1 2; do
  for v in 8192 0; do
    rem=$((560 - SECONDS + t0)); [ $rem -lt 30 ] && break
    echo "== syn7b FERRITE_CUDA_MATVEC_RING=$v round $round"
    FERRITE_CUDA_MATVEC_RING=$v timeout $rem python3 benches/bench_generate.py --model /root/m/syn7b.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
    echo "== syn05 FERRITE_CUDA_MATVEC_RING=$v round $round"
    FERRITE_CUDA_MATVEC_RING=$v timeout $rem python3 benches/bench_generate.py --model /root/m/syn05.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
  done
done 2>&1 | tee $OUT/generate_ring.txt
echo "all $((SECONDS-t0)) s"
