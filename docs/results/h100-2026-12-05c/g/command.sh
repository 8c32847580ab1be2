# wheel of fcd1682 with 22fc72f's defaults by environment; the wheel installed by the calls before
export FERRITE_CUDA_MATVEC_STREAM_ROWS=4 FERRITE_CUDA_MATVEC_WIDE_ROWS=8 PYTHONPATH=/tmp/site-gpu-check FERRITE_CACHE=/tmp/ferrite-cache PYTHONUNBUFFERED=1
bash .device/llamacpp/bench.sh /root/m/model.gguf 1,2,4,8 > $OUT/llama_real.txt 2>&1
python3 benches/bench_generate.py --model /root/m/model.gguf --device cuda --batches 1,2,4,8 --modes t0.8+filters,greedy --llamacpp $OUT/llama_real.txt > $OUT/gen_real.txt 2>&1
bash .device/llamacpp/bench.sh /root/m/syn7b.gguf 4 > $OUT/llama_syn7b_4.txt 2>&1
python3 benches/bench_generate.py --model /root/m/syn7b.gguf --device cuda --batches 4 --modes t0.8+filters --llamacpp $OUT/llama_syn7b_4.txt > $OUT/gen_syn7b_4.txt 2>&1
timeout 90 python3 benches/profile_cuda_decode.py /root/m/model.gguf --child timeline --batch 1 --steps 32 > $OUT/timeline_real_b1.txt 2>&1
timeout 90 python3 benches/profile_cuda_decode.py /root/m/model.gguf --child timeline --batch 8 --steps 32 > $OUT/timeline_real_b8.txt 2>&1
