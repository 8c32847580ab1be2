#!/usr/bin/env bash
# Session 21, call 1: the branch next/matvec-fewer-instructions (s21fi) beside main's kernels (s20e): matvec tests on the branch; per-kernel bandwidth, both wheels; syn7b / syn05 decode at 1 and 2 sequences, both wheels, two rounds; the one-sequence step's timeline (graphs and dependent launch on) on syn05, main's wheel.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
for w in s20e s21fi; do python3 -m pip install --quiet --no-index --no-deps --target /tmp/site_$w .device/ab/$w/*.whl .device/wheels/gguf-*.whl || exit 1; done
export FERRITE_CACHE=/tmp/cache FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf
mkdir -p /root/m "$OUT"
t0=$SECONDS
( PYTHONPATH=/tmp/site_s20e python3 scripts/make_synthetic_model.py /root/m/syn05.gguf --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1
  PYTHONPATH=/tmp/site_s20e python3 scripts/make_synthetic_model.py /root/m/syn7b.gguf --shape 7b --tokenizer-from "$FERRITE_TOKENIZER_GGUF" | tail -1 ) > $OUT/synth.txt 2>&1 &
synth=$!
PYTHONPATH=/tmp/site_s21fi timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_matvec.py -x 2>&1 | tail -4 | tee $OUT/pytest_matvec.txt
echo "tests $((SECONDS-t0)) s"
for w in s20e s21fi; do
  echo "== $w"
  PYTHONPATH=/tmp/site_$w timeout 100 python3 benches/bench_cuda_matvec.py --tiled-only --shapes 7b,real --types Q4_K,Q6_K,Q5_0,Q8_0 --rows 1,2 2>&1
done | tee $OUT/matvec_ab.txt
echo "matvec $((SECONDS-t0)) s"
wait $synth; cat $OUT/synth.txt
echo "synth $((SECONDS-t0)) s"
for b in 1 8; do PYTHONPATH=/tmp/site_s20e timeout 60 python3 benches/profile_cuda_decode.py /root/m/syn05.gguf --child timeline --batch $b --steps 32 2>&1 | tail -40; done | tee $OUT/timeline_05.txt
echo "timeline $((SECONDS-t0)) s"
for round in 1 2; do
  for w in s21fi s20e; do
    for m in syn7b syn05; do
      rem=$((570 - SECONDS + t0)); [ $rem -lt 25 ] && break
      echo "== $m $w round $round"
      PYTHONPATH=/tmp/site_$w timeout $rem python3 benches/bench_generate.py --model /root/m/$m.gguf --device cuda --batches 1,2 --modes t0.8+filters 2>&1 | grep -E "^\| [0-9]"
    done
  done
done 2>&1 | tee $OUT/generate_ab.txt
echo "all $((SECONDS-t0)) s"
