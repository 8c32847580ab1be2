#!/usr/bin/env bash
# The int8 path for 3-8 rows (MMA_S8_MAX_NT, default 8; 2 = before): matvec tests, kernel microbenchmark at 4 and 8 rows both ways, and syn05 / syn7b decode at 4 and 8 sequences with 5-8 rows on cuBLAS (default) or on the kernels.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s22b/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -k "matvec or mixed_types or every_type or outliers or finite or tiled" -x 2>&1 | tail -6 | tee $OUT/pytest.txt
for d in "" "-DMMA_S8_MAX_NT=2"; do
  echo "== defines: ${d:-none}"
  FERRITE_CUDA_KERNEL_DEFINES="$d" timeout 120 python3 benches/bench_cuda_matvec.py --tiled-only --rows 4,8 2>&1 | grep -vi warn
done | tee $OUT/matvec_rows.txt
wait $synth; cat $OUT/synth.txt
for m in syn7b syn05; do for cfg in "default" "rows8" "rows8 -DMMA_S8_MAX_NT=2"; do
  rem=$((570 - SECONDS + t0)); [ $rem -lt 30 ] && break
  d=""; r=""; case "$cfg" in *rows8*) r=8;; esac; case "$cfg" in *S8*) d="-DMMA_S8_MAX_NT=2";; esac
  echo "== $m $cfg"
  FERRITE_CUDA_MATVEC_MAX_ROWS=$r FERRITE_CUDA_KERNEL_DEFINES="$d" timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 4,8 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done; done | tee $OUT/generate_rows.txt
echo "all $((SECONDS-t0)) s"
