# wheel of fcd1682 with 22fc72f's defaults by environment: every GPU test without the real model
export FERRITE_CUDA_MATVEC_STREAM_ROWS=4 FERRITE_CUDA_MATVEC_WIDE_ROWS=8
CUDA_PYTEST_S=420 PENDING_PARTS=tests bash scripts/gpu_check.sh run pending
