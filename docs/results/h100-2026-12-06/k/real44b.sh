#!/usr/bin/env bash
# llama.cpp (waits for its build) and ferrite's Generator on the real model, one after the other.
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/out-real}; mkdir -p "$out"
export PYTHONPATH=/tmp/site-new FERRITE_TOKENIZER_GGUF=$PWD/.device/tok.gguf FERRITE_CACHE=/tmp/cache-new
bash .device/llamacpp/bench.sh /root/m/model.gguf 1,2,4,8 > $out/llamacpp.txt 2>&1; grep -E "tg128|^\|  *128" $out/llamacpp.txt
timeout 300 python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,2,4,8 --new-tokens 128 --modes t0.8+filters --llamacpp $out/llamacpp.txt > $out/bench_generate.txt 2>&1
tail -n 8 $out/bench_generate.txt
