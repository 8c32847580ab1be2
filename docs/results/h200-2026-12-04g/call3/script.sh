#!/usr/bin/env bash
# Session 21, call 3: main + the kernel at MMA_SELF_RELOAD_MAX_NT=1 + the one-wave rule for small one/two-row plans (s21w; FERRITE_CUDA_MATVEC_WAVE=0 turns the rule off): the plan sweep on the 0.5B shapes (gate+up as one launch, down); syn05 / syn7b decode with the rule and without; the timeline with it.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s21w/*.whl .device/wheels/gguf-*.whl || exit 1
export PYTHONPATH=/tmp/site FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( [ -f /root/m/syn05.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  [ -f /root/m/syn7b.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
timeout 150 python3 benches/bench_cuda_matvec.py --sweep-plans --shapes real --types Q5_0,Q8_0,Q4_K,Q6_K --rows 1,2 2>&1 | grep -v "not a whole" | tee $OUT/sweep_real.txt
echo "sweep $((SECONDS-t0)) s"
wait $synth; cat $OUT/synth.txt
echo "synth $((SECONDS-t0)) s"
timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -v Warn | tail -20 | tee $OUT/timeline_05.txt
echo "timeline $((SECONDS-t0)) s"
for round in 1 2; do
  for w in 1 0; do
    for m in syn05 syn7b; do
      rem=$((560 - SECONDS + t0)); [ $rem -lt 25 ] && break
      echo "== $m WAVE=$w round $round"
      FERRITE_CUDA_MATVEC_WAVE=$w timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
    done
  done
done 2>&1 | tee $OUT/generate_wave.txt
echo "all $((SECONDS-t0)) s"
