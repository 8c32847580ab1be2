# wheel of fcd1682 with 22fc72f's defaults by environment
export FERRITE_CUDA_MATVEC_STREAM_ROWS=4 FERRITE_CUDA_MATVEC_WIDE_ROWS=8
E2E_PARTS=tests bash scripts/gpu_check.sh run e2e
