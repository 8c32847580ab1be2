// A weight's resident f16 copy times a few rows of f16 x (decode of 5-16 sequences), on the
// tensor cores: out[t][r] = alpha * sum_c W[r][c] * x[t][c] (+ out[t][r] when accumulating: the
// residual connection), W m x k and x n x k (n <= 8 * NB), both f16 with rows k values apart,
// sums in float32: cublasGemmEx's problem as the cuBLAS path poses it (matmul.rs, gemm_f16_raw),
// in a kernel of ferrite's own for the shapes where cuBLAS took ~4.3 us whatever the size
// (q/k/v, o: 2 MB of f16, 0.6 us of bandwidth) and split the long-k ones (ffn_down) into a
// second reduction launch (H200, 2026-12-04: bench_cublaslt_algos.py; no cuBLASLt algorithm
// did better than 5 %).
//
// Why it can be short: at 8 rows of x the weights are the bytes, and the m16n8k16 mma takes
// exactly 16 weight rows by 8 x rows. A sum over k may take the columns in any order as long
// as W and x take the same one, so each lane loads 8 consecutive columns (16 bytes) of weight
// rows g and g + 8 and of x row g (g = lane / 4, at column 8 * (lane % 4) of a 32-column
// chunk), and feeds them to two mmas as the fragments' k slots: no shuffles, no shared memory
// on the way in, and a warp's load of a chunk is 8 rows x 64 contiguous bytes.
//
// Work split. A block owns one tile of 16 weight rows and all of k, dealt out to its warps in
// contiguous runs of chunks; the warps add their sums through shared memory in warp order, so
// the result does not depend on timing. A warp's first weight loads are issued before the
// dependent wait (weights are constant, see common.cuh), which hides the DRAM latency of a
// small matrix behind the previous kernel's tail.
//
// SwiGLU in the epilogue (the _swiglu kernels): on the stacked copy of gate and up (gate's rows,
// then up's), a block owns tile i of gate's rows and tile i of up's, so that it holds both
// halves of its 16 features and writes silu(gate) * up as f16 for ffn_down's GEMM, with the
// operations of swiglu_f16 (elementwise.cu) on the values the plain kernel would have written:
// the same bits, one launch (and a float32 round trip) fewer a layer. Each x fragment then feeds
// both tiles' mmas. (Taking 8 rows of each in one tile instead keeps the plain kernel's grid,
// twice as many blocks: 10.46 us a launch where the plain GEMM and swiglu_f16 took 9.81 + 1.86,
// and a decode step of 8 sequences no faster than the launches apart; H100, 2026-12-05.)

//
// The RMSNorm around the GEMMs (the norm_ arguments; matmul.rs, `NormSource`). In a decode step
// of 5-16 sequences x is normalized twice a layer, once before q/k/v and once before gate/up, a
// launch each that only rounds x * (1 / rms) * g to f16. Instead the o and ffn_down GEMMs, which
// add into x and so hold its final values, also write f16(x * src_scale) and the sum of squares of
// their 16 values of each x row (one double a block and row: `out_parts[row * gridDim.x +
// block]`); the stacked q/k/v and gate/up copies hold W * g (the norm weight folded in when the
// copy is made), and their GEMM multiplies its sums by the row's 1 / rms, from those parts added
// in a fixed order (`in_parts`, ceil(k / 16) doubles a row), as norm.cu computes it: the same
// product with the rounding moved from x * r * g to x and W * g (scripts/norm_fold_accuracy.py
// measures what that costs: nothing beyond today's error on the real model). The first layer's
// x, which the embedding wrote, gets its source from norm.cu's norm_source, with the same sums.

#include "common.cuh"

// Most warps a block (the host picks 1 to this many, about 4 chunks a warp).
#define GEMM_ROWS_MAX_WARPS 16
// 32-column chunks a warp loads at once (per weight row pair: 2 x 16 bytes per lane each).
#define GEMM_ROWS_CHUNKS 4
// Shared-memory row of one x row's 16 partial sums, padded so that the lanes' stores of an
// mma's accumulators fall in distinct banks (8 * t + g).
#define GEMM_ROWS_PAD 20

__device__ __forceinline__ uint4 ld_weights(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ void mma_f16(float c[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Where the sums go: float32 rows (`out`, ldc floats apart, alpha * sum, added to what is there
// with `accumulate`), or (SWIGLU) f16 rows of the m features (`out_f16`, m values apart:
// f16_scaled_bits(silu(alpha * gate sum) * (alpha * up sum), scale)).
struct RowsOut {
    float* out;
    u32 ldc, accumulate;
    u16* out_f16;
    float scale;
};

// The norm moved around the GEMM (see the top): as a consumer, `in_parts` (null: none) holds the
// producer's sums of squares of x, ceil(k / 16) a row, and the sums are multiplied by 1 / rms; as
// a producer (the plain kernel), `src_f16` (null: none) takes f16_scaled_bits(new value,
// src_scale) of the output, rows m apart, and `out_parts` the sums of squares of the new values,
// gridDim.x a row.
struct RowsNorm {
    const double* in_parts;
    float eps;
    u16* src_f16;
    float src_scale;
    double* out_parts;
};

// Sums of squares a row that the block copies into shared memory (cp.async, issued right after
// the dependent wait, so that their latency hides behind the main loop; k <= 896, the real
// model's width): 8 * NB rows of them fit beside `part` under 48 KB. Wider rows are read from
// global memory in the epilogue.
#define NORM_PARTS_SHARED_ROW 56
// The largest kernel's static shared memory (SwiGLU, 16 rows: `part`, `inv_rms`, `parts_sh`)
// within the 48 KB a block may declare.
static_assert(4 * GEMM_ROWS_MAX_WARPS * 2 * 16 * GEMM_ROWS_PAD + 4 * 16 + 8 * 16 * NORM_PARTS_SHARED_ROW <= 48 * 1024,
              "gemm_f16_rows.cu's shared arrays exceed 48 KB");
// Parts a lane adds at once (a row of up to 128 parts in one round trip when read from global).
#define NORM_PARTS_LANE 4

__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
    const u32 s = (u32)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(s), "l"(src) : "memory");
}

// This lane's share of row `xrow`'s sums of squares: parts lane, lane + 32, ... added in that
// order (absent ones as zeros, which change no sum).
__device__ __forceinline__ double norm_parts_share(const double* parts, u32 n_parts, u32 xrow, u32 lane) {
    const double* row = parts + (u64)xrow * n_parts;
    double v[NORM_PARTS_LANE];
#pragma unroll
    for (int c = 0; c < NORM_PARTS_LANE; c++) {
        const u32 b = lane + 32 * c;
        v[c] = b < n_parts ? row[b] : 0.0;
    }
    double s = v[0];
#pragma unroll
    for (int c = 1; c < NORM_PARTS_LANE; c++) s += v[c];
    for (u32 b = lane + 32 * NORM_PARTS_LANE; b < n_parts; b += 32) s += row[b];
    return s;
}

// 1 / rms of a row of `width` from the lanes' shares (all lanes call; lane 0's tree order is the
// result's), as norm.cu's row_inv_rms rounds it.
__device__ __forceinline__ float norm_inv_rms(double share, u32 width, float eps) {
    const double total = __shfl_sync(FULL_WARP, warp_sum_f64(share), 0);
    return (float)(1.0 / sqrt(total / (double)width + (double)eps));
}

// k % 32 == 0, w and x 16-byte aligned, m >= 1, 1 <= n <= 8 * NB (the host checks); a grid of
// ceil(m / 16) blocks of 32 to 32 * GEMM_ROWS_MAX_WARPS threads; warp i takes chunks
// [i * chunks_per_warp, (i + 1) * chunks_per_warp) of the k / 32. SWIGLU: w holds 2m rows (gate's
// m, then up's), and block i takes tile i of each (TILES = 2).
template <int NB, bool SWIGLU>
__device__ __forceinline__ void gemm_f16_rows(const u16* __restrict__ w, const u16* __restrict__ x, const RowsOut& o, u32 m,
                                              u32 k, u32 n, float alpha, u32 chunks_per_warp, const RowsNorm& nrm) {
    constexpr int TILES = SWIGLU ? 2 : 1;
    __shared__ float part[GEMM_ROWS_MAX_WARPS][TILES * 8 * NB * GEMM_ROWS_PAD];
    __shared__ float inv_rms[8 * NB];
    __shared__ double parts_sh[8 * NB * NORM_PARTS_SHARED_ROW];
    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const u32 g = lane >> 2, t = lane & 3;
    const u32 row0 = blockIdx.x * 16;
    const u32 n_chunks = k / 32;
    const u32 c_begin = min(warp * chunks_per_warp, n_chunks), c_end = min(c_begin + chunks_per_warp, n_chunks);
    // Rows past m (the last tile of a ragged m) read row m - 1 and their sums are dropped.
    const uint4* wa[TILES];
    const uint4* wb[TILES];
#pragma unroll
    for (int q = 0; q < TILES; q++) {
        wa[q] = reinterpret_cast<const uint4*>(w + ((u64)q * m + min(row0 + g, m - 1)) * k) + t;
        wb[q] = reinterpret_cast<const uint4*>(w + ((u64)q * m + min(row0 + g + 8, m - 1)) * k) + t;
    }
    uint4 a[TILES][GEMM_ROWS_CHUNKS], b[TILES][GEMM_ROWS_CHUNKS];
#pragma unroll
    for (u32 u = 0; u < GEMM_ROWS_CHUNKS; u++) {
        if (c_begin + u < c_end) {
#pragma unroll
            for (int q = 0; q < TILES; q++) {
                a[q][u] = ld_weights(wa[q] + (c_begin + u) * 4);
                b[q][u] = ld_weights(wb[q] + (c_begin + u) * 4);
            }
        }
    }
    dependent_wait();
    const u32 n_in_parts = (k + 15) / 16;
    const bool parts_shared = nrm.in_parts && n_in_parts <= NORM_PARTS_SHARED_ROW;
    if (parts_shared) {
        for (u32 i = threadIdx.x; i < n * n_in_parts; i += blockDim.x) cp_async8(&parts_sh[i], nrm.in_parts + i);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    // x rows past n likewise read row n - 1 and their sums are dropped.
    const uint4* xr[NB];
#pragma unroll
    for (int j = 0; j < NB; j++) xr[j] = reinterpret_cast<const uint4*>(x + (u64)min(g + 8 * j, n - 1) * k) + t;
    float acc[TILES][NB][4];
#pragma unroll
    for (int q = 0; q < TILES; q++)
#pragma unroll
        for (int j = 0; j < NB; j++) acc[q][j][0] = acc[q][j][1] = acc[q][j][2] = acc[q][j][3] = 0.0f;
    for (u32 c = c_begin; c < c_end; c += GEMM_ROWS_CHUNKS) {
        if (c != c_begin) {
#pragma unroll
            for (u32 u = 0; u < GEMM_ROWS_CHUNKS; u++) {
                if (c + u < c_end) {
#pragma unroll
                    for (int q = 0; q < TILES; q++) {
                        a[q][u] = ld_weights(wa[q] + (c + u) * 4);
                        b[q][u] = ld_weights(wb[q] + (c + u) * 4);
                    }
                }
            }
        }
        uint4 xv[NB][GEMM_ROWS_CHUNKS];
#pragma unroll
        for (u32 u = 0; u < GEMM_ROWS_CHUNKS; u++) {
#pragma unroll
            for (int j = 0; j < NB; j++) {
                if (c + u < c_end) xv[j][u] = __ldg(xr[j] + (c + u) * 4);
            }
        }
#pragma unroll
        for (u32 u = 0; u < GEMM_ROWS_CHUNKS; u++) {
            if (c + u < c_end) {
#pragma unroll
                for (int q = 0; q < TILES; q++) {
#pragma unroll
                    for (int j = 0; j < NB; j++) {
                        // k slots 2t, 2t+1 | 2t+8, 2t+9 of the first mma are columns 8t+0,1 |
                        // 8t+2,3 of the chunk, of the second 8t+4,5 | 8t+6,7: the same for W and x.
                        mma_f16(acc[q][j], a[q][u].x, b[q][u].x, a[q][u].y, b[q][u].y, xv[j][u].x, xv[j][u].y);
                        mma_f16(acc[q][j], a[q][u].z, b[q][u].z, a[q][u].w, b[q][u].w, xv[j][u].z, xv[j][u].w);
                    }
                }
            }
        }
    }
    // Accumulators: acc[q][j][0] row g, x row 8j + 2t; [1] row g, 8j + 2t + 1; [2] and [3] row
    // g + 8. Tile q's rows sit 8 * NB * GEMM_ROWS_PAD floats after tile q - 1's.
    float* p = part[warp];
#pragma unroll
    for (int q = 0; q < TILES; q++) {
#pragma unroll
        for (int j = 0; j < NB; j++) {
            const u32 t0 = q * 8 * NB + 8 * j + 2 * t;
            p[t0 * GEMM_ROWS_PAD + g] = acc[q][j][0];
            p[(t0 + 1) * GEMM_ROWS_PAD + g] = acc[q][j][1];
            p[t0 * GEMM_ROWS_PAD + g + 8] = acc[q][j][2];
            p[(t0 + 1) * GEMM_ROWS_PAD + g + 8] = acc[q][j][3];
        }
    }
    if (nrm.in_parts) {
        // The sums in shared memory once every thread's copies have landed; the same order of
        // additions from either place. Warp-uniform loop: every lane takes the same branches.
        const double* parts = nrm.in_parts;
        if (parts_shared) {
            asm volatile("cp.async.wait_all;" ::: "memory");
            __syncthreads();
            parts = parts_sh;
        }
        for (u32 xrow = warp; xrow < n; xrow += n_warps) {
            const float inv = norm_inv_rms(norm_parts_share(parts, n_in_parts, xrow, lane), k, nrm.eps);
            if (lane == 0) inv_rms[xrow] = inv;
        }
    }
    __syncthreads();
    // Tile q's sum of output row r for x row xrow, over the warps in warp order.
    auto sum_of = [&](u32 q, u32 xrow, u32 r) {
        const u32 i = (q * 8 * NB + xrow) * GEMM_ROWS_PAD + r;
        float sum = part[0][i];
        for (u32 wi = 1; wi < n_warps; wi++) sum += part[wi][i];
        return sum;
    };
    // The loop's trip count is the same for the 32 lanes of a warp (16 * 8 * NB and blockDim.x
    // are multiples of 32), and the 16 outputs of one x row are 16 lanes of one half-warp: the
    // producer's sum of squares is a shuffle over them.
    for (u32 i = threadIdx.x; i < 16 * 8 * NB; i += blockDim.x) {
        const u32 xrow = i / 16, r = i % 16;
        const bool live = xrow < n && row0 + r < m;
        const float inv = nrm.in_parts && xrow < n ? inv_rms[xrow] : 1.0f;
        float value = 0.0f;
        if (live) {
            if constexpr (SWIGLU) {
                // The values the plain kernel writes for gate and up (alpha * sum), then swiglu_f16's.
                const float gate = alpha * sum_of(0, xrow, r), up = alpha * sum_of(1, xrow, r);
                const float g = nrm.in_parts ? gate * inv : gate, u = nrm.in_parts ? up * inv : up;
                o.out_f16[(u64)xrow * m + row0 + r] = f16_scaled_bits(silu_times(g, u), o.scale);
            } else {
                float* y = o.out + (u64)xrow * o.ldc + row0 + r;
                const float product = nrm.in_parts ? alpha * sum_of(0, xrow, r) * inv : alpha * sum_of(0, xrow, r);
                // put()'s sum, kept for the norm's producer outputs.
                value = o.accumulate ? *y + product : product;
                *y = value;
                if (nrm.src_f16) nrm.src_f16[(u64)xrow * m + row0 + r] = f16_scaled_bits(value, nrm.src_scale);
            }
        }
        if (!SWIGLU && nrm.out_parts) {
            const double sq = half_warp_sum_f64((double)value * value);
            if (r == 0 && xrow < n) nrm.out_parts[(u64)xrow * gridDim.x + blockIdx.x] = sq;
        }
    }
}

#define GEMM_F16_ROWS_KERNEL(NAME, NB)                                                                                     \
    extern "C" __global__ void __launch_bounds__(32 * GEMM_ROWS_MAX_WARPS)                                                \
        NAME(const u16* __restrict__ w, const u16* __restrict__ x, float* __restrict__ out, u32 m, u32 k, u32 n, u32 ldc,   \
             float alpha, u32 accumulate, u32 chunks_per_warp, const double* __restrict__ in_parts, float eps,           \
             u16* __restrict__ src_f16, float src_scale, double* __restrict__ out_parts) {                               \
        const RowsOut o = {out, ldc, accumulate, nullptr, 0.0f};                                                        \
        const RowsNorm nrm = {in_parts, eps, src_f16, src_scale, out_parts};                                            \
        gemm_f16_rows<NB, false>(w, x, o, m, k, n, alpha, chunks_per_warp, nrm);                                         \
    }
GEMM_F16_ROWS_KERNEL(gemm_f16_rows_8, 1)
GEMM_F16_ROWS_KERNEL(gemm_f16_rows_16, 2)

// w: the stacked copy of gate (m rows) and up (m rows); out_f16: n rows of the m features.
#define GEMM_F16_ROWS_SWIGLU_KERNEL(NAME, NB)                                                                              \
    extern "C" __global__ void __launch_bounds__(32 * GEMM_ROWS_MAX_WARPS)                                                \
        NAME(const u16* __restrict__ w, const u16* __restrict__ x, u16* __restrict__ out_f16, u32 m, u32 k, u32 n,        \
             float alpha, float scale, u32 chunks_per_warp, const double* __restrict__ in_parts, float eps) {            \
        const RowsOut o = {nullptr, 0, 0, out_f16, scale};                                                              \
        const RowsNorm nrm = {in_parts, eps, nullptr, 0.0f, nullptr};                                                   \
        gemm_f16_rows<NB, true>(w, x, o, m, k, n, alpha, chunks_per_warp, nrm);                                          \
    }
GEMM_F16_ROWS_SWIGLU_KERNEL(gemm_f16_rows_swiglu_8, 1)
GEMM_F16_ROWS_SWIGLU_KERNEL(gemm_f16_rows_swiglu_16, 2)
