// Quantized matrix times a few activation rows, for decode: y[t][r] = sum_c W[r][c] * x[t][c]
// (+ bias[r]) (+ y[t][r] when accumulating) for t < n_x <= NT, reading W's ggml blocks straight from device memory.
//
// One warp per weight row. Each lane takes 32-element groups of the row (lane, lane + 32, ...),
// dequantizes a group into registers with the same decoders as the CPU (quant_blocks.cuh, so the
// values are bit-identical), and multiplies it with the matching 32 values of every x row, so
// each weight byte is read once per call however many x rows there are. Consecutive lanes read
// consecutive groups. The warp then sums its lanes.
//
// Measured on an H200 (benches/profile_cuda_decode.py, 2026-12-01): ~10 us a call on average
// over a Qwen2.5-0.5B decode step, far from the bandwidth bound; staging each chunk through
// shared memory with wide loads was slower (12.5 us). See docs/BENCHMARKS.md for the next steps.
//
// Compiled once per weight type (-DQTYPE/-DQ_BLOCK_ELEMS/-DQ_BLOCK_BYTES, see common.cuh). The host
// launches it only when n_cols is a multiple of 32 (x rows are then 16-byte aligned).
#include "quant_blocks.cuh"

#ifndef QTYPE
#error "matvec.cu is compiled with -DQTYPE=<type> -DQ_BLOCK_ELEMS=<block elements> -DQ_BLOCK_BYTES=<block bytes>"
#endif
#define DEQ FERRITE_CAT(deq_, QTYPE)

// Weight rows per thread block (one warp each).
#define MATVEC_WARPS 4

template <int NT>
__device__ __forceinline__ void matvec(const u8* __restrict__ w, u64 row_bytes, u32 n_cols, u32 n_rows,
                                       const float* __restrict__ x, u32 n_x, const float* __restrict__ bias,
                                       float* __restrict__ y, u32 accumulate) {
    dependent_wait();
    const u32 row = blockIdx.x * MATVEC_WARPS + threadIdx.y;
    if (row >= n_rows) return;  // a whole warp leaves together; no block-wide barrier follows
    const u8* wr = w + (u64)row * row_bytes;
    const u32 n_groups = n_cols / 32;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.0f;
    for (u32 g = threadIdx.x; g < n_groups; g += 32) {
        float wv[32];
        deq_group32<DEQ, Q_BLOCK_ELEMS, Q_BLOCK_BYTES>(wr, g, wv);
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < (int)n_x) {
                const float4* xp = reinterpret_cast<const float4*>(x + (u64)t * n_cols + (u64)g * 32);
                float s = 0.0f;
#pragma unroll
                for (int k = 0; k < 8; k++) {
                    const float4 v = __ldg(xp + k);
                    s = fmaf(wv[4 * k], v.x, s);
                    s = fmaf(wv[4 * k + 1], v.y, s);
                    s = fmaf(wv[4 * k + 2], v.z, s);
                    s = fmaf(wv[4 * k + 3], v.w, s);
                }
                acc[t] += s;
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (threadIdx.x == 0) {
        const float b = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < (int)n_x) put(y + (u64)t * n_rows + row, acc[t] + b, accumulate);
    }
}

#define MATVEC_KERNEL(nt)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * MATVEC_WARPS)                                         \
        matvec_##nt(const u8* __restrict__ w, u64 row_bytes, u32 n_cols, u32 n_rows, const float* __restrict__ x, \
                    u32 n_x, const float* __restrict__ bias, float* __restrict__ y, u32 accumulate) {       \
        matvec<nt>(w, row_bytes, n_cols, n_rows, x, n_x, bias, y, accumulate);                              \
    }

MATVEC_KERNEL(1)
MATVEC_KERNEL(2)
MATVEC_KERNEL(4)
MATVEC_KERNEL(8)
