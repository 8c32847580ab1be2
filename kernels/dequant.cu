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
        dequant_all<deq_##name, qk, bytes>(src, dst, n_elems); \
    }

DEQUANT_KERNEL(f32, 1, 4)
DEQUANT_KERNEL(f16, 1, 2)
DEQUANT_KERNEL(bf16, 1, 2)
DEQUANT_KERNEL(q4_0, 32, Q4_0_BYTES)
DEQUANT_KERNEL(q4_1, 32, Q4_1_BYTES)
DEQUANT_KERNEL(q5_0, 32, Q5_0_BYTES)
DEQUANT_KERNEL(q5_1, 32, Q5_1_BYTES)
DEQUANT_KERNEL(q8_0, 32, Q8_0_BYTES)
DEQUANT_KERNEL(iq4_nl, 32, IQ4_NL_BYTES)
DEQUANT_KERNEL(mxfp4, 32, MXFP4_BYTES)
DEQUANT_KERNEL(nvfp4, 64, NVFP4_BYTES)
DEQUANT_KERNEL(q2_k, QK_K, Q2_K_BYTES)
DEQUANT_KERNEL(q3_k, QK_K, Q3_K_BYTES)
DEQUANT_KERNEL(q4_k, QK_K, Q4_K_BYTES)
DEQUANT_KERNEL(q5_k, QK_K, Q5_K_BYTES)
DEQUANT_KERNEL(q6_k, QK_K, Q6_K_BYTES)
DEQUANT_KERNEL(iq2_xxs, QK_K, IQ2_XXS_BYTES)
DEQUANT_KERNEL(iq2_xs, QK_K, IQ2_XS_BYTES)
DEQUANT_KERNEL(iq2_s, QK_K, IQ2_S_BYTES)
DEQUANT_KERNEL(iq3_xxs, QK_K, IQ3_XXS_BYTES)
DEQUANT_KERNEL(iq3_s, QK_K, IQ3_S_BYTES)
DEQUANT_KERNEL(iq1_s, QK_K, IQ1_S_BYTES)
DEQUANT_KERNEL(iq1_m, QK_K, IQ1_M_BYTES)
DEQUANT_KERNEL(iq4_xs, QK_K, IQ4_XS_BYTES)
DEQUANT_KERNEL(tq1_0, QK_K, TQ1_0_BYTES)
DEQUANT_KERNEL(tq2_0, QK_K, TQ2_0_BYTES)
