# call 1, a fresh H100 80GB (no H200 came), the wheel of cfeedf0 (int8 for 3-8 rows only under
# -DMMA_S8_MAX_NT=8), carried in .device/wheels with .device/llamacpp and .device/tok.gguf
bash .device/llamacpp/build.sh .device/llamacpp      # llama.cpp's build, in the background
PENDING_PARTS=s8rows bash scripts/gpu_check.sh run pending
# pytest_s8rows hit its 300 s step limit while NVRTC compiled the variants (no failure before it:
# pytest_s8rows.log); rerun in call 14 on the same machine with the kernels cached:
#   FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=8 FERRITE_CUDA_MATVEC_MAX_ROWS=8 \
#     python3 -m pytest -q -ra -p no:cacheprovider tests/test_cuda_matvec.py tests/test_cuda_model.py -m "cuda and not model"
#   -> 2 failed, 206 passed, 36 deselected in 70.16s: every matrix-vector test passed; the two
#   failures are test_gpu_rows_gemm_in_a_model[Q5_0/Q4_K], which compares 6-row steps on
#   gemm_f16_rows.cu with cuBLAS and so cannot hold when FERRITE_CUDA_MATVEC_MAX_ROWS=8 sends
#   those rows to the matrix-vector kernels (the same path both times).
