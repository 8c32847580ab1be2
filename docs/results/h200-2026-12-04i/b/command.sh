#!/usr/bin/env bash
# Session 23, call B: the sampler's mass_terms (kernels/sampling.cu against the copy before it in
# .device/old_sampling) in bench_cuda_sampler; branch next/batch-upload-stream (+ mass_terms, wheel
# .device/ab/s23a) against main (.device/ab/s23m): syn05 timeline at one sequence, syn05 / syn7b decode.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site .device/ab/s23a/*.whl .device/wheels/gguf-*.whl || exit 1
python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_m .device/ab/s23m/*.whl .device/wheels/gguf-*.whl || exit 1
export FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
export PYTHONPATH=/tmp/site_m
[ -f /root/m/syn05.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
( [ -f /root/m/syn7b.gguf ] || python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
for f in .device/old_sampling/sampling.cu kernels/sampling.cu; do
  echo "== $f"; timeout 120 python3 benches/bench_cuda_sampler.py $f 2>&1 | grep -v Warn
done | tee $OUT/sampler_ab.txt
echo "sampler done $((SECONDS-t0)) s"
wait
for w in branch main branch main; do
  site=/tmp/site; [ $w = main ] && site=/tmp/site_m
  echo "== $w"
  PYTHONPATH=$site timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch 1 --steps 32 2>&1 | grep -E "^\| |us a step|^idle"
done | tee $OUT/timeline_ab.txt
for w in branch main; do for m in syn05 syn7b; do
  rem=$((570 - SECONDS + t0)); [ $rem -lt 25 ] && break
  site=/tmp/site; [ $w = main ] && site=/tmp/site_m
  echo "== $m $w"
  PYTHONPATH=$site timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2,8 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
done; done | tee $OUT/generate_ab.txt
echo "all $((SECONDS-t0)) s"
