// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, one block per row.
//
// As on the CPU, the sum of squares is accumulated in float64 (Qwen2's hidden states reach
// magnitudes in the thousands) and the scale is rounded to float32 once, so both devices produce
// the same bits but for the order of the float64 additions.
#include "common.cuh"

#define NORM_THREADS 256

// 1 / sqrt(mean(x^2) + eps) of the block's row of x, in every thread.
__device__ __forceinline__ float row_inv_rms(const float* __restrict__ xr, u32 width, float eps) {
    __shared__ double partial[NORM_THREADS / 32];
    __shared__ float inv_sh;
    double ss = 0.0;
    for (u32 i = threadIdx.x; i < width; i += NORM_THREADS) {
        const double v = xr[i];
        ss += v * v;
    }
    ss = warp_sum_f64(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < NORM_THREADS / 32; w++) total += partial[w];
        inv_sh = (float)(1.0 / sqrt(total / (double)width + (double)eps));
    }
    __syncthreads();
    return inv_sh;
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm(const float* __restrict__ x, const float* __restrict__ weight, u32 width, float eps,
             float* __restrict__ out) {
    dependent_wait();
    const float* xr = x + (u64)blockIdx.x * width;
    float* orow = out + (u64)blockIdx.x * width;
    const float inv = row_inv_rms(xr, width, eps);
    for (u32 i = threadIdx.x; i < width; i += NORM_THREADS) orow[i] = __fmul_rn(__fmul_rn(xr[i], inv), weight[i]);
}

// rms_norm's values as the cuBLAS path takes them, f16_scaled_bits(value, scale), when only
// cuBLAS's f16 GEMMs read the normalized rows: one launch and a float32 buffer fewer than
// rms_norm followed by to_f16_scaled, with the same bits.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm_f16(const float* __restrict__ x, const float* __restrict__ weight, u32 width, float eps, float scale,
                 u16* __restrict__ out) {
    dependent_wait();
    const float* xr = x + (u64)blockIdx.x * width;
    u16* orow = out + (u64)blockIdx.x * width;
    const float inv = row_inv_rms(xr, width, eps);
    for (u32 i = threadIdx.x; i < width; i += NORM_THREADS)
        orow[i] = f16_scaled_bits(__fmul_rn(__fmul_rn(xr[i], inv), weight[i]), scale);
}
