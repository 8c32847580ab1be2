// Conversions for the half-precision GEMM path (src/backend/cuda/matmul.rs): float32 -> f16 with
// a power-of-two scale, and the largest |x| of a buffer (to choose a weight's scale).
#include "common.cuh"

// Largest finite f16.
#define F16_MAX 65504.0f

// out[i] = f16(x[i] * scale), round to nearest even. The scale is a power of two, so the product
// is exact and the only rounding is the f16's; finite values beyond the f16 range saturate at
// +-65504 rather than becoming infinities that would turn a whole output row into NaN, while an
// infinity or a NaN that came in stays one (an overflow upstream must not be hidden).
extern "C" __global__ void to_f16_scaled(const float* __restrict__ x, u16* __restrict__ out, u64 n, float scale) {
    dependent_wait();
    GRID_STRIDE(i, n) {
        float v = x[i] * scale;
        if (fabsf(v) > F16_MAX && fabsf(v) < __int_as_float(0x7f800000)) v = copysignf(F16_MAX, v);
        out[i] = f32_to_f16(v);
    }
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
