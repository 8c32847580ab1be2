# call 5, same machine (gpu_check.sh with tests/test_readme.py ignored)
FERRITE_CUDA_MATVEC_STREAM_ROWS=2 CUDA_PYTEST_S=300 PENDING_PARTS=tests bash scripts/gpu_check.sh run pending
# call 6: the prebuilt-kernels test alone, without and with the switch
for r in '' 2; do FERRITE_CUDA_MATVEC_STREAM_ROWS=$r python3 -m pytest -q -s -p no:cacheprovider 'tests/test_cuda_model.py::test_gpu_prebuilt_kernels_compile_nothing_and_compute_what_nvrtc_compiles[float32]'; done
# both: {'prebuilt_kernels': True, 'kernels_compiled': 1} 1 {'prebuilt_kernels': False, 'kernels_compiled': 14} 14
