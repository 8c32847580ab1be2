#!/usr/bin/env bash
# Session 21, call 2: the branch with the hand-over as a knob (s21fk: -DMMA_SELF_RELOAD_MAX_NT, default 8; 0 is main's loop): per-kernel bandwidth at 1, 2, 4 rows for 1, 2, 8; syn05 / syn7b decode at 1, 2, 4 sequences for each; the one-sequence timeline by grid.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s21fk/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( [ -f /root/m/syn05.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  [ -f /root/m/syn7b.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
for d in 8 2 1; do
  echo "== MMA_SELF_RELOAD_MAX_NT=$d"
  FERRITE_CUDA_KERNEL_DEFINES="-DMMA_SELF_RELOAD_MAX_NT=$d" timeout 80 python3 benches/bench_cuda_matvec.py --tiled-only --shapes 7b,real --types Q4_K,Q6_K,Q5_0,Q8_0 --rows 1,2,4 2>&1 | grep -E "^(q/o|k/v|gate|down|lm_head)" | grep -v "not a whole"
done | tee $OUT/matvec_knob.txt
echo "matvec $((SECONDS-t0)) s"
wait $synth; cat $OUT/synth.txt
echo "synth $((SECONDS-t0)) s"
timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -v Warn | tail -30 | tee $OUT/timeline_05.txt
echo "timeline $((SECONDS-t0)) s"
for round in 1 2; do
  for d in 8 2 1 0; do
    for m in syn05 syn7b; do
      rem=$((570 - SECONDS + t0)); [ $rem -lt 25 ] && break
      [ $m = syn7b ] && [ $round = 2 ] && continue
      echo "== $m MAX_NT=$d round $round"
      FERRITE_CUDA_KERNEL_DEFINES="-DMMA_SELF_RELOAD_MAX_NT=$d" timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2,4 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
    done
  done
done 2>&1 | tee $OUT/generate_knob.txt
echo "all $((SECONDS-t0)) s"
