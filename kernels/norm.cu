// RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, one block per row.
//
// As on the CPU, the sum of squares is accumulated in float64 (Qwen2's hidden states reach
// magnitudes in the thousands) and the scale is rounded to float32 once, so both devices produce
// the same bits but for the order of the float64 additions.
//
// A batch of decode rows is a few dozen blocks, so a launch is as long as one block's chain of
// memory round trips: each thread loads its share of the row as float4s, all at once, keeps up
// to NORM_CACHED4 of them in registers for the second pass (rows up to 4,096 wide are read once),
// and loads its weights before the reduction. A loop of dependent scalar loads instead took
// about 10 us a launch at 64 rows of 3,584 (H200, 2026-12-04), for 2 MB of data.
#include "common.cuh"

#define NORM_THREADS 256
#define NORM_CACHED4 4

// This thread's float4s of a row: the first NORM_CACHED4 of a stride-NORM_THREADS loop over the
// row's n4 float4s (zeros past the end), and n4 itself.
struct RowPart {
    float4 v[NORM_CACHED4];
    u32 n4;
};

__device__ __forceinline__ RowPart load_row_part(const float* __restrict__ row, u32 n4) {
    RowPart p;
    p.n4 = n4;
    const float4* r4 = reinterpret_cast<const float4*>(row);
#pragma unroll
    for (int r = 0; r < NORM_CACHED4; r++) {
        const u32 i = threadIdx.x + r * NORM_THREADS;
        p.v[r] = i < p.n4 ? r4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
    return p;
}

__device__ __forceinline__ double squares(float4 v) {
    return (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
}

// 1 / sqrt(mean(x^2) + eps) of the row `xr`, whose first float4s this thread holds in `xp`, in
// every thread.
__device__ __forceinline__ float row_inv_rms(const float* __restrict__ xr, const RowPart& xp, u32 width, float eps) {
    __shared__ double partial[NORM_THREADS / 32];
    __shared__ float inv_sh;
    double ss = 0.0;
#pragma unroll
    for (int r = 0; r < NORM_CACHED4; r++) ss += squares(xp.v[r]);
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    for (u32 i = threadIdx.x + NORM_CACHED4 * NORM_THREADS; i < xp.n4; i += NORM_THREADS) ss += squares(x4[i]);
    for (u32 i = 4 * xp.n4 + threadIdx.x; i < width; i += NORM_THREADS) {
        const double v = xr[i];
        ss += v * v;
    }
    ss = warp_sum_f64(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        double total = threadIdx.x < NORM_THREADS / 32 ? partial[threadIdx.x] : 0.0;
        total = warp_sum_f64(total);
        if (threadIdx.x == 0) inv_sh = (float)(1.0 / sqrt(total / (double)width + (double)eps));
    }
    __syncthreads();
    return inv_sh;
}


// Where the normalized row goes: float32 as it is, or the f16 bits the cuBLAS path takes.
struct ToF32 {
    float* row;
    __device__ void put(u32 i, float v) const { row[i] = v; }
    __device__ void put4(u32 i, float4 v) const { *reinterpret_cast<float4*>(row + i) = v; }
};
struct ToF16 {
    u16* row;
    float scale;
    __device__ void put(u32 i, float v) const { row[i] = f16_scaled_bits(v, scale); }
    __device__ void put4(u32 i, float4 v) const {
        const u32 lo = f16_scaled_bits(v.x, scale) | (u32)f16_scaled_bits(v.y, scale) << 16;
        const u32 hi = f16_scaled_bits(v.z, scale) | (u32)f16_scaled_bits(v.w, scale) << 16;
        *reinterpret_cast<uint2*>(row + i) = make_uint2(lo, hi);
    }
};

// The block's row of x normalized, element by element into `out` (a ToF32 or ToF16 of the row).
// `out_base`: the start of the output (its rows are width elements apart, as x's are). Rows go
// as float4s when the width is a multiple of 4 and every array starts 16-byte aligned (always
// so for the backend's buffers), else element by element.
template <typename Out>
__device__ __forceinline__ void rms_norm_row(const float* __restrict__ x, const float* __restrict__ weight, u32 width,
                                             float eps, const void* out_base, const Out& out) {
    const bool vectors = width % 4 == 0 && (((u64)x | (u64)weight | (u64)out_base) & 15) == 0;
    const u32 n4 = vectors ? width / 4 : 0;
    // The weights are no kernel's output: loaded before the wait for the one before.
    const RowPart wp = load_row_part(weight, n4);
    dependent_wait();
    const float* xr = x + (u64)blockIdx.x * width;
    const RowPart xp = load_row_part(xr, n4);
    const float inv = row_inv_rms(xr, xp, width, eps);
#pragma unroll
    for (int r = 0; r < NORM_CACHED4; r++) {
        const u32 i = threadIdx.x + r * NORM_THREADS;
        if (i < xp.n4) out.put4(4 * i, normed4(xp.v[r], inv, wp.v[r]));
    }
    const float4* x4 = reinterpret_cast<const float4*>(xr);
    const float4* w4 = reinterpret_cast<const float4*>(weight);
    for (u32 i = threadIdx.x + NORM_CACHED4 * NORM_THREADS; i < xp.n4; i += NORM_THREADS) out.put4(4 * i, normed4(x4[i], inv, w4[i]));
    for (u32 i = 4 * xp.n4 + threadIdx.x; i < width; i += NORM_THREADS) out.put(i, normed(xr[i], inv, weight[i]));
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm(const float* __restrict__ x, const float* __restrict__ weight, u32 width, float eps,
             float* __restrict__ out) {
    rms_norm_row(x, weight, width, eps, out, ToF32{out + (u64)blockIdx.x * width});
}

// rms_norm's values as the cuBLAS path takes them, f16_scaled_bits(value, scale), when only
// cuBLAS's f16 GEMMs read the normalized rows: one launch and a float32 buffer fewer than
// rms_norm followed by to_f16_scaled, with the same bits.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    rms_norm_f16(const float* __restrict__ x, const float* __restrict__ weight, u32 width, float eps, float scale,
                 u16* __restrict__ out) {
    rms_norm_row(x, weight, width, eps, out, ToF16{out + (u64)blockIdx.x * width, scale});
}

// x's norm source (matmul.rs, NormSource; gemm_f16_rows.cu) where no GEMM wrote x (the first
// layer's, after the embedding): f16_scaled_bits(x, scale) of the block's row, and the sum of
// squares of each 16 of its values, added as the producer GEMM adds them (a shuffle over a
// half-warp, offsets 8, 4, 2, 1), into parts[row * ceil(width / 16) + group]. Rows of a width
// that is a multiple of 16 (the host checks).
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    norm_source(const float* __restrict__ x, u32 width, float scale, u16* __restrict__ out, double* __restrict__ parts) {
    dependent_wait();
    const float* xr = x + (u64)blockIdx.x * width;
    const u32 n_parts = width / 16;
    // NORM_THREADS is a multiple of 16: each half-warp takes one group of 16 values a pass.
    for (u32 base = 0; base < width; base += NORM_THREADS) {
        const u32 i = base + threadIdx.x;
        const float v = i < width ? xr[i] : 0.0f;
        if (i < width) out[(u64)blockIdx.x * width + i] = f16_scaled_bits(v, scale);
        const double sq = half_warp_sum_f64((double)v * v);
        if (i % 16 == 0 && i < width) parts[(u64)blockIdx.x * n_parts + i / 16] = sq;
    }
}
