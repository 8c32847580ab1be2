# call 1 (first on the machine), wheel 86cd5ea
CUDA_PYTEST_S=280 PENDING_PARTS=tests,on29 bash scripts/gpu_check.sh run pending
