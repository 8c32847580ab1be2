//! CUDA backend: device memory, NVRTC-compiled kernels from kernels/, cuBLAS.
