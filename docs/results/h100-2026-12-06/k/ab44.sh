#!/usr/bin/env bash
# The two staging defines beside the landed wheel, then per-kernel timelines of syn7b and syn05 at one sequence.
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out-ab44}; mkdir -p "$out"
AB_MATVEC=0 AB_BATCHES=1,2,4 AB_BATCHES_7B=1,2,4 OUT=$out bash scripts/gpu_ab.sh new sj2 kq2
for m in syn7b syn05; do
  { echo "######## $m, 1 sequence"; PYTHONPATH=/tmp/site-new FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf FERRITE_CACHE=/tmp/cache-new timeout 120 python3 benches/profile_cuda_decode.py /root/m/$m.gguf --child timeline --batch 1 --steps 32 2>&1; } \
    | tee -a $out/timelines.txt | grep -E "us a step on|^\| (matvec|attention|sample|rms|embed)" | cut -c1-110
done
echo "total $SECONDS s"
t0=$SECONDS
PYTHONPATH=/tmp/site-new FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf FERRITE_CACHE=/tmp/cache-new timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py tests/test_cuda_matvec.py tests/test_cuda_engine.py -m "cuda and not model" -k "not real_model" > $out/pytest_rest.txt 2>&1
echo "pytest rc=$? $((SECONDS-t0)) s"; tail -n 3 $out/pytest_rest.txt
