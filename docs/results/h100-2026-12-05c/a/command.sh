# wheel of fcd1682 (wide rule and SwiGLU in the stacked GEMM, both by switch), llama.cpp building beside
CUDA_PYTEST_S=240 PENDING_PARTS=swiglu,wide bash scripts/gpu_check.sh run pending
