# call 4, same machine (llama.cpp built in call 2)
FERRITE_CUDA_MATVEC_STREAM_ROWS=2 LLAMA_S=200 BENCH_S=150 PENDING_PARTS=beside bash scripts/gpu_check.sh run pending
