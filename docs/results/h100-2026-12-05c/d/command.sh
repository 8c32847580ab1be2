# wheel of fcd1682
STREAM4_TESTS=tests/test_cuda_matvec.py PENDING_PARTS=stream4 bash scripts/gpu_check.sh run pending
