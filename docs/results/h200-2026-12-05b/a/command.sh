# main 27807ad's wheel (stream kernel and MMA_S8_SUMS_MMA both off by default), .device/wheels and .device/tok.gguf carried; gpu_check.sh as at that commit (its `sums` part then ran with the sums on, its stream_ab variants were off / large / sums on)
CUDA_PYTEST_S=160 PENDING_PARTS=stream,sums bash scripts/gpu_check.sh run pending
