// Dequantization of every ggml block type to float32, one thread per output element.
//
// Bit-identical to the CPU reference (src/quant): the element decoders in quant_blocks.cuh use
// the CPU's float operations in the same order (ggml's reference order: scale = d * sub_scale
// first, then value * scale [- min]); integer parts are exact either way.
//
// Each kernel: dequant_<type>(const u8* blocks, float* out, u64 n_elems); grid-stride loop, so
// any launch size covers any tensor.
#include "quant_blocks.cuh"

template <float (*F)(const u8*, int), int QK, int BYTES>
__device__ __forceinline__ void dequant_all(const u8* __restrict__ src, float* __restrict__ dst, u64 n_elems) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n_elems; e += stride) {
        u64 blk = e / QK;
        dst[e] = F(src + blk * BYTES, (int)(e - blk * QK));
    }
}

#define DEQUANT_KERNEL(name, qk, bytes) \
    extern "C" __global__ void dequant_##name(const u8* __restrict__ src, float* __restrict__ dst, u64 n_elems) { \
        dependent_wait(); \
        dequant_all<deq_##name, qk, bytes>(src, dst, n_elems); \
    }

FERRITE_BLOCK_TYPES(DEQUANT_KERNEL)
