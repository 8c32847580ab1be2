# call 15, a fresh H100 80GB, the wheel with each tiled type's int8 rows in the tile table
# (Q4_K, Q6_K, Q8_0: 8; Q5_0: 2), carried in .device/wheels with .device/llamacpp and .device/tok.gguf
bash .device/llamacpp/build.sh .device/llamacpp      # in the background (its 16 jobs slowed the tests' NVRTC compiles)
PENDING_PARTS=tests,ab AB_S=240 CUDA_PYTEST_S=200 \
  AB_VARIANTS="default|FERRITE_CUDA_MATVEC_MAX_ROWS=4;bf16|FERRITE_CUDA_KERNEL_DEFINES=-DMMA_S8_MAX_NT=2;rows6|FERRITE_CUDA_MATVEC_MAX_ROWS=6" \
  AB_MODELS="/tmp/synthetic.gguf:3,4,6 /root/m/syn7b.gguf:3,4,6" bash scripts/gpu_check.sh run pending
# pytest_cuda reached its 200 s limit after 186 tests, all passed (pytest_cuda.log): test_cuda_dequant,
# _dlpack, _gemm_f16_rows, every test_cuda_matvec test and 5 of test_cuda_model; call 16 ran the rest.
