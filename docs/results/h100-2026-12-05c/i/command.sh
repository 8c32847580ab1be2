# wheel of 1af7f6a (the final SwiGLU kernel, the huge rule by switch), a fresh H100 lease, no llama.cpp build beside
CUDA_PYTEST_S=200 PENDING_PARTS=huge,swiglu bash scripts/gpu_check.sh run pending
PYTHONPATH=/tmp/site-gpu-check FERRITE_CACHE=/tmp/fc2 timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_model.py -k prebuilt   # 2 passed
