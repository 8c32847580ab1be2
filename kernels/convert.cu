// Conversions for the half-precision GEMM path (src/backend/cuda/matmul.rs): float32 -> f16 with
// a power-of-two scale, the largest |x| of a buffer (to choose a weight's scale), and a weight's
// columns times the RMSNorm weight before it (a stacked copy with the norm folded in).
#include "common.cuh"

// out[i] = f16_scaled_bits(x[i], scale) (common.cuh). Producers that feed only the cuBLAS path
// write these bits themselves (rms_norm_f16, swiglu_f16): this kernel serves the other inputs.
extern "C" __global__ void to_f16_scaled(const float* __restrict__ x, u16* __restrict__ out, u64 n, float scale) {
    dependent_wait();
    GRID_STRIDE(i, n) { out[i] = f16_scaled_bits(x[i], scale); }
}

// *result = max(*result, max |x[i]|) as float bits: non-negative floats order as their bit
// patterns, so an integer atomicMax is a float max (a NaN's bits exceed infinity's: the host
// sees a non-finite maximum either way).
extern "C" __global__ void abs_max(const float* __restrict__ x, u64 n, u32* __restrict__ result) {
    dependent_wait();
    u32 m = 0;
    GRID_STRIDE(i, n) { m = max(m, __float_as_uint(fabsf(x[i]))); }
    for (int off = 16; off > 0; off >>= 1) m = max(m, __shfl_xor_sync(FULL_WARP, m, off));
    if ((threadIdx.x & 31) == 0) atomicMax(result, m);
}

// x[i] *= g[i % width] over n values (rows of `width`): a weight's float32 rows times the
// RMSNorm weight of its input, folded into its f16 copy (matmul.rs, `make_f16_stack`).
extern "C" __global__ void scale_columns(float* __restrict__ x, const float* __restrict__ g, u32 width, u64 n) {
    dependent_wait();
    GRID_STRIDE(i, n) { x[i] = __fmul_rn(x[i], g[i % width]); }
}
