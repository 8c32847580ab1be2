# main 27807ad's wheel (stream kernel and MMA_S8_SUMS_MMA both off by default), .device/wheels and .device/tok.gguf carried
CUDA_PYTEST_S=160 PENDING_PARTS=stream,sums bash scripts/gpu_check.sh run pending
