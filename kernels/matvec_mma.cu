// Repacked quantized matrix times 1..NT activation rows, for decode, on the tensor cores:
// y[t][r] = sum_c W[r][c] * x[t][c] (+ bias[r]) (+ y[t][r] when accumulating: the residual
// connection, added here instead of in a launch of its own) for t < n_x <= NT, W in the tiles of
// repacked.cuh (Q5_0, Q8_0, Q4_K, Q6_K; compiled once per type with -DQTYPE=<snake name>).
//
// Exactness. For one or two rows of x (decode of one or two sequences) each x value is split
// into three bf16 parts, hi = bf16(x), mid = bf16(x - hi), lo = bf16(x - hi - mid), whose sum is
// x exactly (8 + 8 + 8 significand bits); the weights' integer codes are exact in bf16; so every
// product the tensor core forms, code * part, is exact, and it accumulates them in float32. For
// 3 to 8 rows, where the mma count per chunk is the kernel's cost, x keeps two parts, hi + mid:
// 16 significand bits, a relative error below 2^-16 per element (the cuBLAS path of larger
// batches rounds x to f16's 11), or on the int8 path two int8 parts (below). The block scales
// (exact float32 products of the file's f16 and integer scale fields, as the CPU computes them)
// multiply the per-block sums afterwards in float32, and Q4_K's mins multiply per-block sums of
// x: d1 * sum(q * x) - m1 * sum(x) is sum((d1 * q - m1) * x), the CPU's weights times x,
// summed in another order. The exception is one or two rows of Q4_K, Q5_0, Q8_0 and Q6_K (the
// types with an int8 path, Tile::S8), where decoding codes into bf16 was most of the kernel's
// instructions: it keeps x as three int8 parts per 256 columns (a
// relative error near 2^-24 of each tile's largest value, 1e-13 of W x on the model's own
// activations) and multiplies on the int8 tensor cores (see "the int8 path" below); from 3 rows,
// up to each type's MMA_S8_MAX_NT (the Rust tile table: Q4_K to 8 rows, Q6_K and Q8_0 to 4), two
// int8 parts.
//
// Work split. A warp owns one tile row (16 weight rows) and a set of column tiles. mma's 8
// columns hold two x rows x three parts (the last two columns zero) or four x rows x two parts,
// so NT rows take NG = ceil(NT / 2) or ceil(NT / 4) mmas per 16-column chunk (the int8 path:
// one m16n8k32 per 32-column sub-block and column group). A block has warps_m x warps_k
// warps (at most 8):
// warps_m tile rows, each with its columns dealt out to warps_k warps (tile wk, wk + warps_k,
// ...), which add their sums through shared memory at the end. The block's warps share x, split
// and staged in shared memory per phase of PHASE columns. blockIdx.y splits the columns further
// (split-K) when that still leaves too few warps: each block then writes its partial sums, and
// the last block of a block row to finish (a counter per block row, reset by that block) adds
// the splits in order. Every sum is taken in a fixed order, so results do not depend on timing.
// (Compiled with -DMMA_STREAM=1, the file holds instead matvec_mma_stream_1, _2, _4 and, for Q4_K,
// _8, which deal a launch's tiles out to the warps in equal shares: see "Stream-K" below.)
//
// One launch, several matrices. Up to three matrices of the same type and width that multiply
// the same x (q, k and v; gate and up) run as one grid: their block rows follow each other along
// blockIdx.x, each writing its own output (and bias). A decode step is a chain of small
// launches, so each launch saved is a few microseconds.
//
// What x is. Besides x itself, the kernel can stage rms_norm(x) * norm_w (norm_w != 0: the
// RMSNorm before q/k/v and gate/up, with each row's 1/rms computed by every block, in float64
// as norm.cu does but by rsqrt: inv_rms_of_sum) or silu(x) * x2 (x2 != 0: SwiGLU, gate and up in,
// before ffn_down), so that neither needs a launch and a buffer of its own. The values are those
// of the separate kernels, but for the order of the float64 sums and double-rounding ties of 1/rms.
// (Where a block stages the whole row at once on the int8 path, the norm's sum of squares comes
// from the values staging loads: stage_x_s8_normed.)
// 1: the weights' loads are marked first to go from L2 (repacked.cuh's RP_EVICT_FIRST), so
// that a matrix streaming through does not push out the windows of weights the step asked L2 for
// ahead (prefetch_window). Only here: the prefill GEMM reads each tile once per block of rows,
// and wants them kept. An experiment, off by default.
#if defined(MMA_EVICT_FIRST) && MMA_EVICT_FIRST
#define RP_EVICT_FIRST 1
#endif
#include "repacked.cuh"

#ifndef QTYPE
#error "matvec_mma.cu is compiled with -DQTYPE=<q5_0|q8_0|q4_k|q6_k>"
#endif
typedef FERRITE_CAT(Rp_, QTYPE) Tile;

// Most warps per block (the host launches 2, 4 or 8).
#define MMA_MAX_WARPS 8
#ifndef MMA_MIN_BLOCKS
#define MMA_MIN_BLOCKS 2
#endif
// 1: before waiting for the previous kernel, one lane of each tile row's first warp asks L2 for
// the row's tiles in this block's column range (one bulk prefetch), so that a warp's tiles after
// its first (which it loads into registers) come from L2 rather than DRAM. Small launches give a
// warp 2-4 tiles; the weights are constant, so this may run before the wait. Off by default:
// H200, 2026-12-04, the 0.5B's decode step took 803 us with it and 780 without (the o projection
// 3.3 -> 3.9 us, the LM head 45 -> 50; only gate/up gained, 6.8 -> 6.4), and the 7B's 337 tok/s
// at one sequence fell to 323. Kept for A/B on other GPUs.
#ifndef MMA_L2_PREFETCH
#define MMA_L2_PREFETCH 0
#endif
// 1: where a block stages the whole row of x in one phase (no column split) with at most
// MMA_STAGE_JOBS 256-column jobs a warp, the RMSNorm's sum of squares is taken from the values staging loads
// anyway, instead of a pass of its own over x before it (one round trip to L2 and a barrier less).
// H200, 2026-12-04: the 0.5B's decode step 855 -> 803 us (gate/up 7.3 -> 6.4 us, q/k/v 5.1 -> 4.5).
#ifndef MMA_FUSED_NORM
#define MMA_FUSED_NORM 1
#endif
// The int8 path's staging: jobs (256 columns of one row of x) a warp loads at once, and so the
// jobs a warp may have where the RMSNorm is folded into staging (stage_x_s8_normed). With 1, a
// 7B's 3,584 columns (14 jobs) take a pass of their own for the norm and two L2 round trips, one
// after the other, to stage; 2 does both in one. 1 by default: H100, 2026-12-05, 2 made the 0.5B
// shapes' one-sequence step 0.768 -> 0.80 ms and the 7B's two-sequence one 3.26 -> 3.30, the 7B's
// one-sequence one 0.5 % faster (docs/BENCHMARKS.md, twenty-ninth session). With 1 the kernels
// are the twenty-eighth session's but for one float64 addition of zero (scripts/sass_same.py).
#ifndef MMA_STAGE_JOBS
#define MMA_STAGE_JOBS 1
#endif
static_assert(MMA_STAGE_JOBS >= 1 && MMA_STAGE_JOBS <= 4, "jobs a warp stages at once");
// Rows of x up to which the tile loop reloads the warp's last tile and is unrolled twice (see
// there); above it, one tile at a time with a conditional hand-over. H200, 2026-12-04: at one
// row the reload took the synthetic 7B's decode from 320 to 334 tok/s; at two rows it cost the
// 0.5B's Q5_0 gate/up 5.6 -> 6.4 us a launch (1,790 -> 1,660 tok/s at two sequences), so 1.
#ifndef MMA_SELF_RELOAD_MAX_NT
#define MMA_SELF_RELOAD_MAX_NT 1
#endif
// 1: on the int8 path, the terms of a tile that are small integers times x's sums go to the
// tensor cores as one mma each (two: x's sums as two int8 digits) instead of a few integer
// instructions a sub-block: Q4_K's mins (four multiply-adds and a shared load a sub-block and
// group, tile_products_s8), and Q6_K's code offset, so that its codes go to the tensor cores as
// unsigned bytes 0..63 (mma's u8 x s8 form) instead of being made signed (twelve instructions a
// sub-block), the -32 coming back as 32 times the chunk scales times x's 16-column sums
// (tile_products_s8_chunks). The same integers, so the same results. Without a GPU
// (scripts/sass_loops.py, sm_90), instructions of the tile loops: Q4_K one row 534 -> 460 a pair
// of tiles, two rows 283 -> 241 a tile, the stream kernel 657 -> 577; Q6_K one row 1058 -> 862,
// two rows 575 -> 473, stream 1208 -> 1036. H200, 2026-12-05: the synthetic 7B's decode step
// 2.835 -> 2.794 ms at one sequence, 3.542 -> 3.466 at two; the 0.5B shapes' within 0.3 %.
// Rows of x up to which the types with an int8 path take it: each type's comes from the Rust tile
// table (src/backend/cuda/repack.rs, int8_max_rows, with the measurements); 2 where a module is
// compiled without it (scripts/sass_loops.py). From 3 rows x is kept as two int8 parts (to about
// 2^-16 of each 256 columns' largest |x|, where two bf16 parts keep 16 bits of each value and
// cuBLAS's f16 from 5 rows 11): at 8 rows, without a GPU (sm_90), a Q4_K tile costs 323
// instructions instead of bf16's 599, Q6_K 657 instead of 751, Q5_0 294 instead of 322, Q8_0 197
// instead of 303. tests/test_cuda_matvec.py models the rounding (as_int8_two_parts).
#ifndef MMA_S8_MAX_NT
#define MMA_S8_MAX_NT 2
#endif
#ifndef MMA_S8_SUMS_MMA
#define MMA_S8_SUMS_MMA 1
#endif

// Columns of x the planned kernel's int8 path stages at once (a phase), at least: 4096 / NT as on
// the bf16 path by default (0), although int8 parts take half of bf16's shared memory. Each phase
// costs the block two barriers and a round trip to L2 for x, with one tile a warp in flight
// across them; at 4 and 8 rows a 7B's 3,584 columns take 4 and 7 phases (its ffn_down's 18,944
// columns 19 and 37, less where split-K splits them), where -DMMA_S8_PHASE=2048 takes 2 (and
// 10; a static_assert bounds the shared memory: 2,048 at 8 rows is the most). Written in the
// fifty-sixth session without a GPU, for an A/B through FERRITE_CUDA_KERNEL_DEFINES; the host
// plans as for 4096 / NT (phase_tiles), which any phase at least that large runs correctly.
#ifndef MMA_S8_PHASE
#define MMA_S8_PHASE 0
#endif
__host__ __device__ constexpr int s8_phase_cols(int nt) {
    return 4096 / nt > MMA_S8_PHASE ? 4096 / nt : MMA_S8_PHASE;
}

// A module of pair kernels (QTYPE_B defined: see "Two types, one launch") holds a second tile type,
// with its own int8 rows (MMA_S8_MAX_NT_B, its type's row of the Rust tile table).
#ifdef QTYPE_B
typedef FERRITE_CAT(Rp_, QTYPE_B) TileB;
#ifndef MMA_S8_MAX_NT_B
#define MMA_S8_MAX_NT_B 2
#endif
#endif
// Rows of x up to which tile type T takes the int8 path.
template <class T>
struct S8MaxNt {
    static constexpr int value = MMA_S8_MAX_NT;
};
#ifdef QTYPE_B
template <>
struct S8MaxNt<TileB> {
    static constexpr int value = MMA_S8_MAX_NT_B;
};
#endif

__device__ __forceinline__ void mma_bf16(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// float -> bf16 bits, round to nearest even (exact conversion back: bits << 16).
__device__ __forceinline__ u32 bf16_rn(float v) {
    unsigned short h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

// x[n][col .. col + 4) as the kernel multiplies it: silu(x) * x2 when x2 is given, x * inv_rms[n]
// * norm_w when norm_w is; zeros for rows n >= n_x and columns past n_cols. In two steps: the
// loads (X4In), then the arithmetic (x4_of), so that a caller can issue every load of a batch
// before the first x4_of: SwiGLU's division has a slow path that the compiler calls, and it does
// not move loads across a call, so load-compute-load waits out one round trip to L2 per load.
struct X4In {
    float4 x, x2, w;
    bool in;
};
__device__ __forceinline__ X4In load_x4_in(const float* __restrict__ x, const float* __restrict__ x2,
                                           const float* __restrict__ norm_w, u32 n_x, u32 n_cols, u32 n, u32 col) {
    // n_cols is a multiple of 32, so col < n_cols means col + 3 < n_cols, and rows of x start
    // 128-byte aligned: the float4 load is in bounds and aligned.
    X4In r;
    r.in = n < n_x && col < n_cols;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    r.x = r.in ? *reinterpret_cast<const float4*>(x + (u64)n * n_cols + col) : zero;
    r.x2 = r.in && x2 ? *reinterpret_cast<const float4*>(x2 + (u64)n * n_cols + col) : zero;
    r.w = r.in && norm_w ? *reinterpret_cast<const float4*>(norm_w + col) : zero;
    return r;
}
__device__ __forceinline__ float4 x4_of(const X4In& r, bool swiglu, bool norm, const float* inv_rms, u32 n) {
    if (!r.in) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 a = r.x;
    if (swiglu) a = make_float4(silu_times(a.x, r.x2.x), silu_times(a.y, r.x2.y), silu_times(a.z, r.x2.z), silu_times(a.w, r.x2.w));
    if (norm) a = normed4(a, inv_rms[n], r.w);  // as norm.cu
    return a;
}
// The same values in one step, loads and arithmetic interleaved as the compiler likes (where
// three or more rows of x are staged: measured faster so, see stage_x_s8).
__device__ __forceinline__ float4 load_x4(const float* __restrict__ x, const float* __restrict__ x2,
                                          const float* __restrict__ norm_w, const float* inv_rms, u32 n_x, u32 n_cols,
                                          u32 n, u32 col) {
    if (n >= n_x || col >= n_cols) return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 a = *reinterpret_cast<const float4*>(x + (u64)n * n_cols + col);
    if (x2) {
        const float4 u = *reinterpret_cast<const float4*>(x2 + (u64)n * n_cols + col);
        a = make_float4(silu_times(a.x, u.x), silu_times(a.y, u.y), silu_times(a.z, u.z), silu_times(a.w, u.w));
    }
    if (norm_w) a = normed4(a, inv_rms[n], *reinterpret_cast<const float4*>(norm_w + col));  // as norm.cu
    return a;
}

// Stages x[n][col0 .. col0 + len) for n < NT (rows n >= n_x and columns past n_cols as zeros),
// as silu(x) * x2 when x2 is given and as x * inv_rms[n] * norm_w when norm_w is, into xs, split
// in PARTS bf16 parts, and for Q4_K the 32-column sums of each part into xsum.
// Four float4 loads in flight per thread. len is a multiple of 128, so every warp runs the same
// iterations (the shuffles need all lanes).
template <int NT, int PARTS, int XSTRIDE, int NG, int SUMS>
__device__ __forceinline__ void stage_x(const float* __restrict__ x, const float* __restrict__ x2,
                                        const float* __restrict__ norm_w, const float* inv_rms, u32 n_x, u32 n_cols,
                                        u32 col0, u32 len, u16* xs, float (*xsum)[NG][8]) {
    const int per_row = (int)len / 4;
    const int total = NT * per_row;
    for (int base = threadIdx.x; base < total; base += 4 * blockDim.x) {
        float4 v[4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = base + r * (int)blockDim.x;
            const int n = i / per_row, e4 = i % per_row;
            const u32 col = col0 + 4 * e4;
            v[r] = i < total ? load_x4(x, x2, norm_w, inv_rms, n_x, n_cols, (u32)n, col) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = base + r * (int)blockDim.x;
            const int n = i / per_row, e4 = i % per_row;
            const float vv[4] = {v[r].x, v[r].y, v[r].z, v[r].w};
            u32 part[3][4];  // with PARTS = 2, lo is never stored (and compiled away)
            float sum[3] = {0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const u32 hi = bf16_rn(vv[k]);
                const float r1 = __fsub_rn(vv[k], __uint_as_float(hi << 16));
                const u32 mid = bf16_rn(r1);
                const float r2 = __fsub_rn(r1, __uint_as_float(mid << 16));
                const u32 lo = bf16_rn(r2);
                part[0][k] = hi, part[1][k] = mid, part[2][k] = lo;
                sum[0] = __fadd_rn(sum[0], __uint_as_float(hi << 16));
                sum[1] = __fadd_rn(sum[1], __uint_as_float(mid << 16));
                sum[2] = __fadd_rn(sum[2], __uint_as_float(lo << 16));
            }
            if (i < total) {
#pragma unroll
                for (int s = 0; s < PARTS; s++) {
                    *reinterpret_cast<uint2*>(&xs[(n * PARTS + s) * XSTRIDE + 4 * e4]) =
                        make_uint2(part[s][0] | (part[s][1] << 16), part[s][2] | (part[s][3] << 16));
                }
            }
            if constexpr (SUMS > 1) {
                // Eight consecutive lanes hold one 32-column sub-block of one row.
#pragma unroll
                for (int s = 0; s < PARTS; s++) {
                    sum[s] = __fadd_rn(sum[s], __shfl_xor_sync(FULL_WARP, sum[s], 1));
                    sum[s] = __fadd_rn(sum[s], __shfl_xor_sync(FULL_WARP, sum[s], 2));
                    sum[s] = __fadd_rn(sum[s], __shfl_xor_sync(FULL_WARP, sum[s], 4));
                }
                if (i < total && (e4 & 7) == 0) {
#pragma unroll
                    for (int s = 0; s < PARTS; s++) xsum[e4 >> 3][n / (8 / PARTS)][(n % (8 / PARTS)) * PARTS + s] = sum[s];
                }
            }
        }
    }
}

// acc += this tile's products: chunk0 is the phase-local index of the tile's first chunk.
template <int NT, int NG, int SUMS, class T = Tile>
__device__ __forceinline__ void tile_products(const T& w, const u16* xs, const float (*xsum)[NG][8], u32 chunk0,
                                              const int b_off[NG], const bool b_valid[NG], int t, float acc[NG][4]) {
    // This tile's x: B columns and (Q4_K) 32-column sums; every offset below is then a constant.
    const u16* xb[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) xb[j] = xs + b_off[j] + 16 * chunk0;
    const float* xsb = &xsum[chunk0 / 2][0][2 * t];
#pragma unroll
    for (int sb = 0; sb < T::CHUNKS / T::SCALE_CHUNKS; sb++) {
        float c[NG][4];
#pragma unroll
        for (int j = 0; j < NG; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < T::SCALE_CHUNKS; cc++) {
            const int ch = sb * T::SCALE_CHUNKS + cc;
            u32 a[4];
            w.frag(ch, a);
#pragma unroll
            for (int j = 0; j < NG; j++) {
                uint2 b = make_uint2(0u, 0u);
                if (b_valid[j]) b = *reinterpret_cast<const uint2*>(xb[j] + 16 * ch);
                mma_bf16(c[j], a, b.x, b.y);
            }
        }
        float s[2], m[2];
        w.scale(sb, s, m);
#pragma unroll
        for (int j = 0; j < NG; j++) {
            acc[j][0] = fmaf(s[0], c[j][0], acc[j][0]);
            acc[j][1] = fmaf(s[0], c[j][1], acc[j][1]);
            acc[j][2] = fmaf(s[1], c[j][2], acc[j][2]);
            acc[j][3] = fmaf(s[1], c[j][3], acc[j][3]);
            if constexpr (T::HAS_MIN) {
                const float2 xs2 = *reinterpret_cast<const float2*>(xsb + (sb * T::SCALE_CHUNKS / 2) * NG * 8 + j * 8);
                acc[j][0] = fmaf(-m[0], xs2.x, acc[j][0]);
                acc[j][1] = fmaf(-m[0], xs2.y, acc[j][1]);
                acc[j][2] = fmaf(-m[1], xs2.x, acc[j][2]);
                acc[j][3] = fmaf(-m[1], xs2.y, acc[j][3]);
            }
        }
    }
}

// ---- the int8 path: one or two x rows of a type with Tile::S8 (Q4_K, Q5_0, Q8_0, Q6_K), and 3 to
// MMA_S8_MAX_NT rows in two parts (q0 and q1 below: about 2^-16 of the largest value) ----
// x is kept as three int8 parts per 256 columns (one tile): q0 = rint(x / s0) with s0 = max|x|
// / 127, then the remainder x - s0 q0 with step s1 = s0 / 254 (it is at most s0 / 2), and once
// more with s2 = s1 / 254; x = s0 q0 + s1 q1 + s2 q2 up to about 2^-24 of the largest value
// (max|x| / 254^3) (benches/precision_x_parts.py: 2.1e-13 normalized squared error of W x on the
// real model's own ffn_down inputs, where the tests allow 1e-9). The tensor core then forms
// exact integer sums of code * part per sub-block, the sub-block scales (and Q4_K's mins, times
// the integer sums of x, on the tensor cores too) multiply them in int32, exactly, and only each
// tile's total goes to float (rounded to float32 there when above 2^24, as any float32 sum would be): d * sum - dmin *
// sum_of_mins, times the part's scale. One mma a 32-column sub-block holds both rows' three
// parts (mma columns 0-2 and 3-5, as in the bf16 path), and
// decoding a code takes well under one instruction: the point of this path (the bf16 path spends
// most of its instructions turning codes into bf16).

__device__ __forceinline__ void mma_s8(int c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The same with A's bytes unsigned (0..255).
__device__ __forceinline__ void mma_u8s8(int c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 pack_s8(int a, int b, int c, int d) {
    return ((u32)a & 0xffu) | (((u32)b & 0xffu) << 8) | (((u32)c & 0xffu) << 16) | ((u32)d << 24);
}

// Q4_K's int8 path keeps the 32-column sums of x as bytes, in the order of the B fragments of
// the mma that multiplies them by the tile's mins (Rp_q4_k::mins_frag_s8, k = the sub-block):
// for 256-column block blk, half 0 (lo) or 1 (hi) and group j, mma column c's sums of sub-blocks
// 0..7 are 8 consecutive bytes, so lane (g, t) reads its b0 (k = 4t .. 4t+3, column g) as one
// word at 8 g + 4 (t & 1) (lanes t = 2, 3 read what the zero A columns ignore). They take half of
// the int array they live in; this is the byte offset in it of (blk, half, j)'s 64 bytes.
template <int NG>
__device__ __forceinline__ int xsum_bytes_at(int blk, int half, int j) {
    return ((blk * 2 + half) * NG + j) * 64;
}
// Q6_K's likewise with MMA_S8_SUMS_MMA, for its 16-column chunks (Rp_q6_k::scales_frag_s8, k = the
// chunk): mma column c's sums of chunks 0..15 are 16 consecutive bytes, lane (g, t) reads chunks
// 4t .. 4t+3 at 16 g + 4 t. |sum| <= 16 * 127 = 2032, so hi is within +-16.
template <int NG>
__device__ __forceinline__ int xsum_chunk_bytes_at(int blk, int half, int j) {
    return ((blk * 2 + half) * NG + j) * 128;
}
// out = sum over k of A[row][k] * s[k][col] for this lane's four C values, s (k < 32, column g)
// given as two int8 digits, lo at `lo` and hi `hi_stride` bytes on (put_digits): two mmas.
__device__ __forceinline__ void mma_digits(const u32 a[4], const u8* lo, int hi_stride, int out[4]) {
    int cl[4] = {0, 0, 0, 0}, ch[4] = {0, 0, 0, 0};
    mma_s8(cl, a, *reinterpret_cast<const u32*>(lo), 0u);
    mma_s8(ch, a, *reinterpret_cast<const u32*>(lo + hi_stride), 0u);
#pragma unroll
    for (int i = 0; i < 4; i++) out[i] = cl[i] + 128 * ch[i];
}
// Bytes these layouts take for `blocks` 256-column blocks of x (Q6_K's; Q4_K's half), which the
// kernels' int array of 32-column sums (PHASE / 32 x NG x 8 ints) holds exactly.
template <int NG>
__host__ __device__ constexpr int xsum_bytes_needed(int blocks) {
    return blocks * 2 * NG * 128;
}
// sum as two int8 digits, lo + 128 hi (lo within -64 .. 63).
__device__ __forceinline__ void put_digits(u8* lo, int half_stride, int sum) {
    const int hi = (sum + 64) >> 7;
    lo[0] = (u8)(sum - 128 * hi);
    lo[half_stride] = (u8)hi;
}

// 1: a probe build for benches/bench_matvec_chain.py: every kernel taking MATVEC_MMA_PARAMS takes
// one more parameter, `probe` (u64*, null: none), and thread 0 of each block of the planned kernels
// (matvec_mma) stamps points 0..12 into it (MMA_STAMP: common.cuh's probe_stamp; points a block
// does not reach stay as they were): 0..9 in matvec_mma, and inside staging 12 (the block's
// squares of x summed by warp, inv_rms_of_shares), 10 (the RMSNorm's 1 / rms known,
// stage_x_s8_normed) and 11 (warp 0's first 256 columns' largest |x| known, quantize_job_s8),
// through a pointer in shared memory (mma_probe_s) that matvec_mma sets; the other kernels of a
// probe build set it to null. Never compiled by the backend.
#ifndef MMA_PROBE
#define MMA_PROBE 0
#endif
#if MMA_PROBE
#define MMA_PROBE_PARAM , u64* __restrict__ probe
#define MMA_PROBE_ARG , probe
#define MMA_STAMP(point) probe_stamp(probe, point)
__shared__ u64* mma_probe_s;
#define MMA_PROBE_SET(ptr) \
    if (threadIdx.x == 0) mma_probe_s = (ptr)
#define MMA_STAGE_STAMP(point) probe_stamp(mma_probe_s, point)
#else
#define MMA_PROBE_PARAM
#define MMA_PROBE_ARG
#define MMA_STAMP(point)
#define MMA_PROBE_SET(ptr)
#define MMA_STAGE_STAMP(point)
#endif

// Stages x[n][col0 .. col0 + len) (len a multiple of 256) for n < NT, rows past n_x as zeros,
// as x4_of computes it, into xq: row n * PARTS + p holds part p, and in it sub-block s's 32 bytes,
// for lane t of a quad, are b0 = x at columns [4t, 16+4t, 4t+1, 16+4t+1] and b1 = [4t+2, 16+4t+2,
// 4t+3, 16+4t+3] of the sub-block: the order of Tile::frag_s8's codes. xsum[s][j][c] gets the
// integer sum of mma column c's part over sub-block s (with MMA_S8_SUMS_MMA, Q4_K's and Q6_K's
// sums go into the same array as bytes instead, see xsum_bytes_at), xscale[tile][j][c] the part's scale (NaN
// when the tile's x has a value that is not finite, so that it reaches the output as the bf16
// path's would). One warp a 256-column block of one row: lane (sub-block s = lane / 4, t = lane %
// 4) holds the 8 values of its b0 and b1.
// One 256-column job of stage_x_s8: lane (sub-block sb = lane / 4, t = lane % 4) holds the 8
// values r of x row n in block blk of the phase, in b0 / b1 order; they go into xq, xsum and
// xscale as stage_x_s8 says. Every lane of the warp calls it (shuffles, __all_sync).
template <int NG, int XSTRIDE_B, int PARTS = 3, class T = Tile>
__device__ __forceinline__ void quantize_job_s8(float r[8], int n, int blk, u8* xq, int (*xsum)[NG][8],
                                                float (*xscale)[NG][8]) {
    const int lane = threadIdx.x & 31;
    const int sb = lane >> 2, t = lane & 3;
    bool finite = true;
#pragma unroll
    for (int i = 0; i < 8; i++) finite = finite && isfinite(r[i]);
    finite = __all_sync(FULL_WARP, finite);
    constexpr int RPG = 8 / PARTS;  // x rows per mma column group
    const int j = n / RPG;
    // One reduction for every part: the remainder after part p is at most half its
    // step, so part p + 1's step can be the step before it / 254 without measuring its
    // maximum (the same 2^-24 of max|x| in the end; a reduction is five dependent shuffles,
    // on the critical path of a small projection).
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(r[i]));
    amax = warp_max(amax);
    MMA_STAGE_STAMP(11);
    const float scale0 = __fdiv_rn(amax, 127.0f);
    // Capped so that a tiny amax (below 127 / FLT_MAX) cannot make it infinite: the codes
    // are then smaller than they could be (such a tile's x loses precision, not its sign).
    const float inv0 = amax > 0.0f ? fminf(__fdiv_rn(127.0f, amax), 3.4028234e38f) : 0.0f;
#pragma unroll
    for (int p = 0; p < PARTS; p++) {
        const float scale = p == 0 ? scale0 : p == 1 ? scale0 * (1.0f / 254.0f) : scale0 * (1.0f / 64516.0f);
        const float inv = p == 0 ? inv0 : fminf(inv0 * (p == 1 ? 254.0f : 64516.0f), 3.4028234e38f);
        int q[8], sum = 0;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            q[i] = min(max(__float2int_rn(r[i] * inv), -127), 127);
            r[i] = fmaf(-(float)q[i], scale, r[i]);
            sum += q[i];
        }
        if constexpr (T::SCALE_CHUNKS == 1 && MMA_S8_SUMS_MMA) {
            // The two 16-column chunks' sums: r's even entries are columns of the first, the
            // odd ones of the second (see above).
            int c0 = q[0] + q[2] + q[4] + q[6], c1 = q[1] + q[3] + q[5] + q[7];
            c0 += __shfl_xor_sync(FULL_WARP, c0, 1);
            c1 += __shfl_xor_sync(FULL_WARP, c1, 1);
            c0 += __shfl_xor_sync(FULL_WARP, c0, 2);
            c1 += __shfl_xor_sync(FULL_WARP, c1, 2);
            if (t == 0) {
                u8* b = reinterpret_cast<u8*>(&xsum[0][0][0]) + xsum_chunk_bytes_at<NG>(blk, 0, j) + 16 * ((n % RPG) * PARTS + p) + 2 * sb;
                put_digits(b, NG * 128, c0);
                put_digits(b + 1, NG * 128, c1);
            }
        }
        *reinterpret_cast<uint2*>(xq + (n * PARTS + p) * XSTRIDE_B + 256 * blk + 32 * sb + 8 * t) =
            make_uint2(pack_s8(q[0], q[1], q[2], q[3]), pack_s8(q[4], q[5], q[6], q[7]));
        sum += __shfl_xor_sync(FULL_WARP, sum, 1);
        sum += __shfl_xor_sync(FULL_WARP, sum, 2);
        const int col = (n % RPG) * PARTS + p;
        if constexpr (T::HAS_MIN && MMA_S8_SUMS_MMA) {
            // As the B fragment of the mins mma (see xsum_bytes_at): sum = lo + 128 hi, both int8
            // (|sum| <= 32 * 127 = 4064, so hi is within +-32 and lo within -64 .. 63).
            if (t == 0) put_digits(reinterpret_cast<u8*>(&xsum[0][0][0]) + xsum_bytes_at<NG>(blk, 0, j) + 8 * col + sb, NG * 64, sum);
        } else if constexpr (!(T::SCALE_CHUNKS == 1 && MMA_S8_SUMS_MMA)) {
            if (t == 0) xsum[8 * blk + sb][j][col] = sum;
        }
        if (lane == 0) xscale[blk][j][col] = finite ? scale : __int_as_float(0x7fc00000);
    }
}

template <int NT, int NG, int XSTRIDE_B, int PARTS = 3, class T = Tile>
__device__ __forceinline__ void stage_x_s8(const float* __restrict__ x, const float* __restrict__ x2,
                                           const float* __restrict__ norm_w, const float* inv_rms, u32 n_x, u32 n_cols,
                                           u32 col0, u32 len, u8* xq, int (*xsum)[NG][8], float (*xscale)[NG][8]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int sb = lane >> 2, t = lane & 3;
    // A phase of an odd number of 128-column tiles stages the next 128 columns too (PHASE is a
    // multiple of 256; past n_cols load_x4 / load_x4_in give zeros): unused, and harmless to the scale.
    const int blocks = ((int)len + 255) / 256;
    const int jobs = NT * blocks;
    // MMA_STAGE_JOBS of a warp's jobs at a time: their loads go out together (one round trip to
    // L2 for them all, instead of one a job).
    for (int job0 = warp; job0 < jobs; job0 += MMA_STAGE_JOBS * n_warps) {
        // One or two rows (x in three int8 parts): every load of the batch before the first
        // x4_of (H100, thirty-eighth session: the synthetic 7B's one-sequence step 2.733 -> 2.709
        // ms, the 0.5B shapes' within noise). From three rows, load_x4 as before: the loads
        // before all arithmetic measured 0.5-0.8 % slower at four and eight sequences of the
        // 0.5B shapes.
        float r[MMA_STAGE_JOBS][8];
        X4In in_a[MMA_STAGE_JOBS], in_b[MMA_STAGE_JOBS];
#pragma unroll
        for (int u = 0; u < MMA_STAGE_JOBS; u++) {
            const int job = job0 + u * n_warps;
            const int n = job / blocks, blk = job % blocks;
            const u32 c = col0 + 256 * blk + 32 * sb + 4 * t;
            // Rows n >= NT (a job past the last) load zeros, as rows past n_x do.
            const u32 rows = job < jobs ? n_x : 0u;
            if constexpr (NT > 2) {
                const float4 a = load_x4(x, x2, norm_w, inv_rms, rows, n_cols, (u32)n, c);
                const float4 b = load_x4(x, x2, norm_w, inv_rms, rows, n_cols, (u32)n, c + 16);
                r[u][0] = a.x, r[u][1] = b.x, r[u][2] = a.y, r[u][3] = b.y, r[u][4] = a.z, r[u][5] = b.z, r[u][6] = a.w, r[u][7] = b.w;
            } else {
                in_a[u] = load_x4_in(x, x2, norm_w, rows, n_cols, (u32)n, c);
                in_b[u] = load_x4_in(x, x2, norm_w, rows, n_cols, (u32)n, c + 16);
            }
        }
        if constexpr (NT <= 2) {
#pragma unroll
            for (int u = 0; u < MMA_STAGE_JOBS; u++) {
                const u32 n = (u32)((job0 + u * n_warps) / blocks);
                const float4 a = x4_of(in_a[u], x2 != nullptr, norm_w != nullptr, inv_rms, n);
                const float4 b = x4_of(in_b[u], x2 != nullptr, norm_w != nullptr, inv_rms, n);
                r[u][0] = a.x, r[u][1] = b.x, r[u][2] = a.y, r[u][3] = b.y, r[u][4] = a.z, r[u][5] = b.z, r[u][6] = a.w, r[u][7] = b.w;
            }
        }
#pragma unroll
        for (int u = 0; u < MMA_STAGE_JOBS; u++) {
            const int job = job0 + u * n_warps;  // the same for the whole warp
            if (job < jobs) quantize_job_s8<NG, XSTRIDE_B, PARTS, T>(r[u], job / blocks, job % blocks, xq, xsum, xscale);
        }
    }
}

// A row's 1 / rms from the sum of its squares, in float64 and rounded to float once, as norm.cu
// does, but as rsqrt(total * (1 / n_cols) + eps): 1 / n_cols is taken before the sums arrive, and
// the chain after them is a fused multiply-add, the multi-function unit's reciprocal square root
// and its Newton steps (six dependent float64 operations) instead of a division, a square root and
// a reciprocal (about twenty-five, a third of them behind reciprocals) while the block waits at
// the barrier after it. The same float as norm.cu's 1.0 / sqrt(...) but for double-rounding ties
// (both round in float64 first). -DMMA_NORM_RSQRT=0: norm.cu's chain (for A/B; fifty-fifth session,
// H100: the real model's two-sequence decode step 0.627 -> 0.614 ms, one sequence unchanged).
// (The squares and scale in float instead, -DMMA_NORM_F32=1, measured 2 % slower at one sequence
// and was removed.)
#ifndef MMA_NORM_RSQRT
#define MMA_NORM_RSQRT 1
#endif
__device__ __forceinline__ float inv_rms_of_sum(double total, u32 n_cols, float eps, double inv_n) {
#if MMA_NORM_RSQRT
    return (float)rsqrt(fma(total, inv_n, (double)eps));
#else
    return (float)(1.0 / sqrt(total / (double)n_cols + (double)eps));
#endif
}

// inv_rms[n] = 1 / sqrt(mean(x[n]^2) + eps) for n < NT from each thread's share of row n's sum of
// squares (ss[n]): summed by warp, then over the warps through `red` in warp order (the order of
// the float64 additions differs from norm.cu's). Call with every thread; inv_rms is read only
// after the next __syncthreads.
template <int NT>
__device__ __forceinline__ void inv_rms_of_shares(const double (&ss)[NT], double (*red)[NT], u32 n_cols, float eps, float* inv_rms) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const double inv_n = MMA_NORM_RSQRT ? 1.0 / (double)n_cols : 0.0;
#pragma unroll
    for (int n = 0; n < NT; n++) {
        const double w = warp_sum_f64(ss[n]);
        if (lane == 0) red[warp][n] = w;
    }
    __syncthreads();
    MMA_STAGE_STAMP(12);
    if (threadIdx.x < NT) {
        double total = 0.0;
        for (int w = 0; w < n_warps; w++) total += red[w][threadIdx.x];
        inv_rms[threadIdx.x] = inv_rms_of_sum(total, n_cols, eps, inv_n);
    }
}

// stage_x_s8 of a whole row of x (columns from 0; the caller checks that every job fits one of
// a warp's MMA_STAGE_JOBS: NT * ceil(len / 256) <= MMA_STAGE_JOBS * warps) with the RMSNorm folded
// in: each warp loads its jobs' values once, the block sums their squares in float64 and rounds
// each row's 1 / rms to float once (as block_inv_rms does, adding in another order) into inv_rms,
// and the values are then scaled as x4_of scales them. It saves block_inv_rms's pass over x and
// its barrier.
// The norm weights stage_x_s8_normed scales a thread's jobs by, loaded before the kernel waits
// for x (they are constant; after a step's other weights have gone through L2 they come from
// DRAM, a longer round trip than x's from L2). Only the kernels of 128-column tiles (Q5_0, Q8_0)
// do (EARLY_NORM_W there): the K-quant kernels have no registers to hold them through the wait
// (Q4_K's two-row and stream kernels spilled 48-104 bytes), and load them with x.
// MMA_EARLY_NORM_W=0: none do (for A/B).
#ifndef MMA_EARLY_NORM_W
#define MMA_EARLY_NORM_W 1
#endif
struct EarlyNormW {
    float4 a[MMA_STAGE_JOBS], b[MMA_STAGE_JOBS];
};

// Job u of this thread in stage_x_s8_normed (256 columns of row n of x; the thread's columns c ..
// c + 3 and c + 16 .. c + 19 of it): whether it holds x. Zeros stand for rows n >= n_x and columns
// past n_cols, as load_x4_in gives them (n_cols is a multiple of 32, so c < n_cols means c + 19 <
// n_cols too).
template <int NT>
__device__ __forceinline__ bool normed_job(int u, u32 n_x, u32 n_cols, u32 len, int& n, u32& c) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int blocks = ((int)len + 255) / 256;
    const int job = warp + u * n_warps;
    n = job / blocks;
    c = 256 * (job % blocks) + 32 * (lane >> 2) + 4 * (lane & 3);
    const bool has_job = job < NT * blocks;  // the whole warp, or none of it
    return has_job && (u32)n < n_x && c < n_cols;
}

// The weights of stage_x_s8_normed's jobs for this thread.
template <int NT>
__device__ __forceinline__ EarlyNormW early_norm_w(const float* __restrict__ norm_w, u32 n_x, u32 n_cols, u32 len) {
    EarlyNormW w;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int u = 0; u < MMA_STAGE_JOBS; u++) {
        int n;
        u32 c;
        const bool in = normed_job<NT>(u, n_x, n_cols, len, n, c);
        w.a[u] = in ? *reinterpret_cast<const float4*>(norm_w + c) : zero;
        w.b[u] = in ? *reinterpret_cast<const float4*>(norm_w + c + 16) : zero;
    }
    return w;
}

// EARLY: the norm weights are `early`'s (early_norm_w), not loaded here.
template <int NT, int NG, int XSTRIDE_B, int PARTS = 3, bool EARLY = false, class T = Tile>
__device__ __forceinline__ void stage_x_s8_normed(const float* __restrict__ x, const float* __restrict__ norm_w,
                                                  const EarlyNormW& early, float eps, u32 n_x, u32 n_cols, u32 len, u8* xq,
                                                  int (*xsum)[NG][8], float (*xscale)[NG][8], float* inv_rms) {
    __shared__ double red[MMA_MAX_WARPS][NT];
    const int warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int blocks = ((int)len + 255) / 256;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 a[MMA_STAGE_JOBS], b[MMA_STAGE_JOBS], wa[MMA_STAGE_JOBS], wb[MMA_STAGE_JOBS];
    bool in[MMA_STAGE_JOBS];
    double ss[NT];
#pragma unroll
    for (int i = 0; i < NT; i++) ss[i] = 0.0;
#pragma unroll
    for (int u = 0; u < MMA_STAGE_JOBS; u++) {
        int n;
        u32 c;
        in[u] = normed_job<NT>(u, n_x, n_cols, len, n, c);
        a[u] = in[u] ? *reinterpret_cast<const float4*>(x + (u64)n * n_cols + c) : zero;
        b[u] = in[u] ? *reinterpret_cast<const float4*>(x + (u64)n * n_cols + c + 16) : zero;
        if constexpr (EARLY) {
            wa[u] = early.a[u];
            wb[u] = early.b[u];
        } else {
            wa[u] = in[u] ? *reinterpret_cast<const float4*>(norm_w + c) : zero;
            wb[u] = in[u] ? *reinterpret_cast<const float4*>(norm_w + c + 16) : zero;
        }
    }
#pragma unroll
    for (int u = 0; u < MMA_STAGE_JOBS; u++) {
        const int n = (warp + u * n_warps) / blocks;
        const double sq = (double)a[u].x * a[u].x + (double)a[u].y * a[u].y + (double)a[u].z * a[u].z + (double)a[u].w * a[u].w +
                          (double)b[u].x * b[u].x + (double)b[u].y * b[u].y + (double)b[u].z * b[u].z + (double)b[u].w * b[u].w;
#pragma unroll
        for (int i = 0; i < NT; i++) ss[i] += i == n ? sq : 0.0;
    }
    inv_rms_of_shares<NT>(ss, red, n_cols, eps, inv_rms);
    MMA_STAGE_STAMP(10);
    __syncthreads();
#pragma unroll
    for (int u = 0; u < MMA_STAGE_JOBS; u++) {
        const int job = warp + u * n_warps;
        if (job >= NT * blocks) break;  // the whole warp
        const int n = job / blocks;
        if (in[u]) {
            // RMSNorm as norm.cu computes it (x4_of's operations).
            a[u] = normed4(a[u], inv_rms[n], wa[u]);
            b[u] = normed4(b[u], inv_rms[n], wb[u]);
        }
        float r[8] = {a[u].x, b[u].x, a[u].y, b[u].y, a[u].z, b[u].z, a[u].w, b[u].w};
        quantize_job_s8<NG, XSTRIDE_B, PARTS, T>(r, n, job % blocks, xq, xsum, xscale);
    }
}

// acc += tile `tile` (of the phase) times x, the int8 way (see above), for a K-quant (Q4_K:
// integer sub-block scales and mins, float super-block scales).
template <class T, int NG>
__device__ __forceinline__ void tile_products_s8(const T& w, const u8* xq, const int (*xsum)[NG][8],
                                                 const float (*xscale)[NG][8], u32 tile, const int b_off[NG], int t,
                                                 float acc[NG][4]) {
    const u8* xb[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) xb[j] = xq + b_off[j] + 256 * tile;
    int dot[NG][4], mins[NG][4];
#pragma unroll
    for (int j = 0; j < NG; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) dot[j][i] = mins[j][i] = 0;
    }
#if !MMA_S8_SUMS_MMA
    const int* xsb = &xsum[8 * tile][0][2 * t];
#endif
#pragma unroll
    for (int sb = 0; sb < 8; sb++) {
        u32 a[4];
        w.frag_s8(sb, a);
        int sc[2], m[2];
        w.scale_s8(sb, sc, m);
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const uint2 b = *reinterpret_cast<const uint2*>(xb[j] + 32 * sb);
            int c[4] = {0, 0, 0, 0};
            mma_s8(c, a, b.x, b.y);
            dot[j][0] += sc[0] * c[0], dot[j][1] += sc[0] * c[1];
            dot[j][2] += sc[1] * c[2], dot[j][3] += sc[1] * c[3];
#if !MMA_S8_SUMS_MMA
            const int2 xs2 = *reinterpret_cast<const int2*>(xsb + sb * NG * 8 + j * 8);
            mins[j][0] += m[0] * xs2.x, mins[j][1] += m[0] * xs2.y;
            mins[j][2] += m[1] * xs2.x, mins[j][3] += m[1] * xs2.y;
#endif
        }
    }
#if MMA_S8_SUMS_MMA
    // sum over sub-blocks of m * sum(x), for the whole tile: two mmas (x's sums as lo + 128 hi).
    {
        u32 am[4];
        w.mins_frag_s8(t, am);
        const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const u8* lo = reinterpret_cast<const u8*>(&xsum[0][0][0]) + xsum_bytes_at<NG>((int)tile, 0, j) + 8 * g + 4 * (t & 1);
            mma_digits(am, lo, NG * 64, mins[j]);
        }
    }
#endif
    float d[2], dmin[2];
    w.super_scales(d, dmin);
#pragma unroll
    for (int j = 0; j < NG; j++) {
        const float2 s = *reinterpret_cast<const float2*>(&xscale[tile][j][2 * t]);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i >> 1;
            const float v = fmaf(d[h], (float)dot[j][i], -__fmul_rn(dmin[h], (float)mins[j][i]));
            acc[j][i] = fmaf((i & 1) ? s.y : s.x, v, acc[j][i]);
        }
    }
}

// acc += tile `tile` (of the phase) times x, the int8 way, for a type with a float scale per
// 32-column block (Q5_0, Q8_0: 128-column tiles, two to one 256-column x scale): each block's
// integer sum (less the code offset times the integer sum of x) goes to float with its scale.
template <class T, int NG>
__device__ __forceinline__ void tile_products_s8_blocks(const T& w, const u8* xq, const int (*xsum)[NG][8],
                                                        const float (*xscale)[NG][8], u32 tile, const int b_off[NG], int t,
                                                        float acc[NG][4]) {
    constexpr int SUBS = T::TILE_COLS / 32;
    const u32 blk = tile * T::TILE_COLS / 256, sb0 = tile * SUBS % 8;
    const u8* xb[NG];
    float2 s[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) {
        xb[j] = xq + b_off[j] + 256 * blk + 32 * sb0;
        s[j] = *reinterpret_cast<const float2*>(&xscale[blk][j][2 * t]);
    }
    const int* xsb = &xsum[8 * blk + sb0][0][2 * t];
    float part[NG][4];  // the tile's sum of block scale times integer sum, per mma column
#pragma unroll
    for (int j = 0; j < NG; j++) part[j][0] = part[j][1] = part[j][2] = part[j][3] = 0.0f;
#pragma unroll
    for (int sb = 0; sb < SUBS; sb++) {
        u32 a[4];
        w.frag_s8(sb, a);
        float d[2];
        w.block_scale(sb, d);
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const uint2 b = *reinterpret_cast<const uint2*>(xb[j] + 32 * sb);
            int c[4] = {0, 0, 0, 0};
            mma_s8(c, a, b.x, b.y);
            if constexpr (T::S8_OFFSET != 0) {
                const int2 xs2 = *reinterpret_cast<const int2*>(xsb + sb * NG * 8 + j * 8);
                c[0] -= T::S8_OFFSET * xs2.x, c[1] -= T::S8_OFFSET * xs2.y;
                c[2] -= T::S8_OFFSET * xs2.x, c[3] -= T::S8_OFFSET * xs2.y;
            }
#pragma unroll
            for (int i = 0; i < 4; i++) part[j][i] = fmaf((float)c[i], d[i >> 1], part[j][i]);
        }
    }
#pragma unroll
    for (int j = 0; j < NG; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = fmaf((i & 1) ? s[j].y : s[j].x, part[j][i], acc[j][i]);
    }
}

// acc += tile `tile` (of the phase) times x, the int8 way, for Q6_K: a signed int8 scale per
// 16-column chunk, so each 32-column sub-block takes two mmas, one with each chunk's columns
// of x (the other's bytes masked to zero), whose integer sums the two scales multiply; the tile's
// total goes to float once, times the super-block scale d.
template <class T, int NG>
__device__ __forceinline__ void tile_products_s8_chunks(const T& w, const u8* xq, const int (*xsum)[NG][8],
                                                        const float (*xscale)[NG][8], u32 tile, const int b_off[NG], int t,
                                                        float acc[NG][4]) {
    const u8* xb[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) xb[j] = xq + b_off[j] + 256 * tile;
    int dot[NG][4];
#pragma unroll
    for (int j = 0; j < NG; j++) dot[j][0] = dot[j][1] = dot[j][2] = dot[j][3] = 0;
#pragma unroll
    for (int sb = 0; sb < 8; sb++) {
        u32 a[4];
#if MMA_S8_SUMS_MMA
        w.frag_u8(sb, a);
#else
        w.frag_s8(sb, a);
#endif
        int sc0[2], sc1[2];
        w.scale_s8_chunks(sb, sc0, sc1);
#pragma unroll
        for (int j = 0; j < NG; j++) {
            // x's bytes are masked instead of the codes' (a code times a zero byte adds nothing
            // either way): two registers a chunk instead of four.
            const uint2 b = *reinterpret_cast<const uint2*>(xb[j] + 32 * sb);
            int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
#if MMA_S8_SUMS_MMA
            mma_u8s8(c0, a, b.x & 0x00FF00FFu, b.y & 0x00FF00FFu);
            mma_u8s8(c1, a, b.x & 0xFF00FF00u, b.y & 0xFF00FF00u);
#else
            mma_s8(c0, a, b.x & 0x00FF00FFu, b.y & 0x00FF00FFu);
            mma_s8(c1, a, b.x & 0xFF00FF00u, b.y & 0xFF00FF00u);
#endif
#pragma unroll
            for (int i = 0; i < 4; i++) dot[j][i] += sc0[i >> 1] * c0[i] + sc1[i >> 1] * c1[i];
        }
    }
#if MMA_S8_SUMS_MMA
    // The codes' -32: dot -= 32 * sum over chunks of sc * sum(x), two mmas (x's sums as lo + 128 hi).
    {
        u32 as[4];
        w.scales_frag_s8(t, as);
        const int g = (threadIdx.x & 31) >> 2;
#pragma unroll
        for (int j = 0; j < NG; j++) {
            const u8* lo = reinterpret_cast<const u8*>(&xsum[0][0][0]) + xsum_chunk_bytes_at<NG>((int)tile, 0, j) + 16 * g + 4 * t;
            int offsets[4];
            mma_digits(as, lo, NG * 128, offsets);
#pragma unroll
            for (int i = 0; i < 4; i++) dot[j][i] -= 32 * offsets[i];
        }
    }
#endif
    float d[2];
    w.super_scale(d);
#pragma unroll
    for (int j = 0; j < NG; j++) {
        const float2 s = *reinterpret_cast<const float2*>(&xscale[tile][j][2 * t]);
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = fmaf((i & 1) ? s.y : s.x, __fmul_rn(d[i >> 1], (float)dot[j][i]), acc[j][i]);
    }
}

// acc += tile `tile` (of the phase) times x on the int8 path, as the type's scales are laid out.
template <int NG, class T = Tile>
__device__ __forceinline__ void tile_products_s8_of_type(const T& w, const u8* xq, const int (*xsum)[NG][8],
                                                         const float (*xscale)[NG][8], u32 tile, const int b_off[NG], int t,
                                                         float acc[NG][4]) {
    if constexpr (T::HAS_MIN) {
        tile_products_s8<T, NG>(w, xq, xsum, xscale, tile, b_off, t, acc);
    } else if constexpr (T::SCALE_CHUNKS == 1) {
        tile_products_s8_chunks<T, NG>(w, xq, xsum, xscale, tile, b_off, t, acc);
    } else {
        tile_products_s8_blocks<T, NG>(w, xq, xsum, xscale, tile, b_off, t, acc);
    }
}

// inv_rms[n] = 1 / sqrt(mean(x[n]^2) + eps) for n < n_x, by the whole block: the squares summed
// in float64 and the scale rounded to float once, as norm.cu does (the order of the float64
// additions differs, and inv_rms_of_sum takes rsqrt).
template <int NT>
__device__ __forceinline__ void block_inv_rms(const float* __restrict__ x, u32 n_x, u32 n_cols, float eps, float* inv_rms) {
    __shared__ double red[MMA_MAX_WARPS][NT];
    double ss[NT];
#pragma unroll
    for (int n = 0; n < NT; n++) ss[n] = 0.0;
    for (u32 c4 = threadIdx.x; c4 < n_cols / 4; c4 += blockDim.x) {
#pragma unroll
        for (int n = 0; n < NT; n++) {
            if ((u32)n < n_x) {
                const float4 v = *reinterpret_cast<const float4*>(x + (u64)n * n_cols + 4 * c4);
                ss[n] += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
            }
        }
    }
    inv_rms_of_shares<NT>(ss, red, n_cols, eps, inv_rms);
    // The callers' next __syncthreads (before staging x) publishes inv_rms.
}

// The matrices of one launch (see "One launch, several matrices"): segment s has m_tiles[s]
// tile rows (0: unused) and takes the next ceil(m_tiles[s] / warps_m) block rows.
struct Segments {
    const u8* tiles[3];
    const float* bias[3];
    float* y[3];
    u32 m_tiles[3];
    u32 n_rows[3];
};

// Row u (0 or 1) of a column group's sums where x has three parts (mma columns 0-2 row 0, 3-5
// row 1), added over the parts and the quad: lane t == 0 of each quad ends with rows g (v0) and
// g + 8 (v1). The planned kernel's epilogue and the fused FFN's.
__device__ __forceinline__ void row_sums(const float acc[4], int t, int u, float& v0, float& v1) {
    if (u == 0) {
        v0 = t == 0 ? acc[0] + acc[1] : t == 1 ? acc[0] : 0.0f;
        v1 = t == 0 ? acc[2] + acc[3] : t == 1 ? acc[2] : 0.0f;
    } else {
        v0 = t == 1 ? acc[1] : t == 2 ? acc[0] + acc[1] : 0.0f;
        v1 = t == 1 ? acc[3] : t == 2 ? acc[2] + acc[3] : 0.0f;
    }
    v0 += __shfl_xor_sync(FULL_WARP, v0, 1);
    v1 += __shfl_xor_sync(FULL_WARP, v1, 1);
    v0 += __shfl_xor_sync(FULL_WARP, v0, 2);
    v1 += __shfl_xor_sync(FULL_WARP, v1, 2);
}

template <int NT, class T = Tile>
__device__ __forceinline__ void matvec_mma(const Segments& segs, u32 k_tiles, u32 n_cols, const float* __restrict__ x,
                                           const float* __restrict__ x2, const float* __restrict__ norm_w, float eps,
                                           u32 n_x, float* __restrict__ partials, u32* __restrict__ counters,
                                           u32 k_tiles_per_split, u32 warps_m, u32 accumulate, const PrefetchWindow& ahead MMA_PROBE_PARAM) {
    MMA_STAMP(0);
    MMA_PROBE_SET(probe);
    constexpr bool S8 = T::S8 && NT <= S8MaxNt<T>::value;      // the int8 path (see above)
    constexpr int PARTS = NT <= 2 ? 3 : 2;                    // bf16 (or int8) parts of each x value
    constexpr int RPG = 8 / PARTS;                            // x rows per mma (column group)
    constexpr int NG = (NT + RPG - 1) / RPG;                  // mma column groups
    constexpr int PHASE = S8 ? s8_phase_cols(NT) : 4096 / NT;  // x columns staged at once
    constexpr int XSTRIDE = PHASE + 16;                       // bf16 per staged row: 32 bytes apart in banks
    constexpr int XSTRIDE_B = PHASE + 32;                     // int8 path: bytes per staged row, likewise
    constexpr int PHASE_TILES = PHASE / T::TILE_COLS;
    constexpr int SUMS = T::HAS_MIN || S8 ? PHASE / 32 : 1;  // 32-column sums of x (Q4_K's mins, the int8 path)
    constexpr bool SELF_RELOAD = NT <= MMA_SELF_RELOAD_MAX_NT;    // the tile loop's hand-over (below)
    static_assert(PHASE % T::TILE_COLS == 0 && PHASE % 256 == 0, "phase holds whole tiles");
    static_assert(!S8 || PARTS * NT * XSTRIDE_B <= 34 * 1024, "staged x leaves room in the 48 KiB of static shared memory");
    static_assert(!S8 || T::TILE_COLS == 256 || T::TILE_COLS == 128, "the int8 path's x scales cover 256 columns: one tile or two");

    // Staged x. bf16: row (n * PARTS + part) of XSTRIDE bf16, part 0 = hi, 1 = mid, 2 = lo.
    // int8: row (n * PARTS + part) of XSTRIDE_B bytes, in stage_x_s8's order.
    __shared__ __align__(16) u8 xs_bytes[S8 ? PARTS * NT * XSTRIDE_B : 2 * PARTS * NT * XSTRIDE];
    u16* const xs = reinterpret_cast<u16*>(xs_bytes);
    // xsum[s][j][col]: sum over the 32 columns of sub-block s of mma column col of group j
    // (float on the bf16 path, int32 on the int8 path, or bytes: see xsum_bytes_at);
    // xscale[tile][j][col]: that column's int8 scale.
    __shared__ __align__(16) union {
        float f[SUMS][NG][8];
        int i[SUMS][NG][8];
    } xsums;
    __shared__ __align__(16) float xscale[S8 ? PHASE / 256 : 1][NG][8];
    static_assert(!S8 || xsum_bytes_needed<NG>(PHASE / 256) <= (int)sizeof(xsums.i), "x's sums as bytes fit the array");
    __shared__ u32 s_last;
    __shared__ float inv_rms[NT];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    // Warp (wm, wk): tile row wm of the block's warps_m, column tiles wk, wk + warps_k, ... of
    // the split's range.
    warps_m = max(warps_m, 1u);
    const u32 warps_k = max((blockDim.x >> 5) / warps_m, 1u);
    const u32 wm = (u32)warp % warps_m, wk = (u32)warp / warps_m;
    // This block's matrix (segment), its block row in it, and its first tile row among all the
    // segments' (which places its partial sums).
    const u32 blocks0 = (segs.m_tiles[0] + warps_m - 1) / warps_m, blocks1 = (segs.m_tiles[1] + warps_m - 1) / warps_m;
    const int seg = blockIdx.x < blocks0 ? 0 : blockIdx.x < blocks0 + blocks1 ? 1 : 2;
    const u32 block_row = blockIdx.x - (seg >= 1 ? blocks0 : 0) - (seg == 2 ? blocks1 : 0);
    const u32 tile_base = (seg >= 1 ? segs.m_tiles[0] : 0) + (seg == 2 ? segs.m_tiles[1] : 0);
    const u8* __restrict__ tiles = seg == 0 ? segs.tiles[0] : seg == 1 ? segs.tiles[1] : segs.tiles[2];
    const float* __restrict__ bias = seg == 0 ? segs.bias[0] : seg == 1 ? segs.bias[1] : segs.bias[2];
    float* __restrict__ y = seg == 0 ? segs.y[0] : seg == 1 ? segs.y[1] : segs.y[2];
    const u32 m_tiles = seg == 0 ? segs.m_tiles[0] : seg == 1 ? segs.m_tiles[1] : segs.m_tiles[2];
    const u32 n_rows = seg == 0 ? segs.n_rows[0] : seg == 1 ? segs.n_rows[1] : segs.n_rows[2];
    const u32 mt = block_row * warps_m + wm;
    const bool active = mt < m_tiles && wk < warps_k;
    const u32 split = blockIdx.y, n_splits = gridDim.y;
    const u32 kt_begin = split * k_tiles_per_split;
    const u32 kt_end = min(kt_begin + k_tiles_per_split, k_tiles);
    const u8* tile_row = tiles + (u64)mt * k_tiles * T::TILE_BYTES;

    // The first tile's loads go out before x is staged: the two latencies overlap.
    T cur;
    if (active && kt_begin + wk < kt_end) cur.load(tile_row + (u64)(kt_begin + wk) * T::TILE_BYTES, lane, !S8);
    // The bias this lane adds (rows g and g + 8 of its tile row) is constant too: for one or
    // two x rows (latency-bound) it is loaded now; with more, the registers are worth more.
    const u32 r0 = mt * RP_TILE_ROWS + g, r1 = r0 + 8;
    const bool early_bias = NT <= 2 && bias != nullptr && active && wk == 0 && t == 0 && n_splits == 1;
    const float b0 = early_bias && r0 < n_rows ? bias[r0] : 0.0f;
    const float b1 = early_bias && r1 < n_rows ? bias[r1] : 0.0f;
#if MMA_L2_PREFETCH && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (active && wk == 0 && lane == 0 && kt_end > kt_begin + warps_k) {
        // Tiles are 16-byte multiples from a 16-byte aligned base: the bulk prefetch's terms
        // (sm_90 and later).
        const u8* first = tile_row + (u64)kt_begin * T::TILE_BYTES;
        const u32 bytes = (kt_end - kt_begin) * T::TILE_BYTES;
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(first), "r"(bytes) : "memory");
    }
#endif
    // Where the RMSNorm goes inside staging (stage_x_s8_normed below): FUSES_NORM.
#define FUSES_NORM                                                                                                            \
    (MMA_FUSED_NORM && S8 && norm_w != nullptr && x2 == nullptr && n_splits == 1 && k_tiles <= (u32)PHASE_TILES &&            \
     NT * ((k_tiles * T::TILE_COLS + 255) / 256) <= MMA_STAGE_JOBS * (blockDim.x >> 5))
    constexpr bool EARLY_NORM_W = MMA_EARLY_NORM_W && T::TILE_COLS < 256;  // see EarlyNormW
    const EarlyNormW early_w = early_norm_w<NT>(norm_w, EARLY_NORM_W && FUSES_NORM ? n_x : 0, n_cols, k_tiles * T::TILE_COLS);
    // The step's weights ahead of this launch's (the window the host gives: the bytes this
    // launch reads, a fixed distance further on in the step's order; none unless asked for).
    prefetch_window(ahead);
    MMA_STAMP(1);
    // Weights are constant; everything from here on may be the previous kernel's output.
    dependent_wait();
    MMA_STAMP(2);
    // What a one- or two-row projection adds its products to (the residual stream), loaded
    // before the work so that the epilogue does not wait for it. Two rows but for Q6_K
    // (SCALE_CHUNKS 1), whose two-row kernel has no registers to spare (it spilled ten words).
    constexpr int NPREV = NT == 2 && T::SCALE_CHUNKS != 1 ? 2 : 1;
    float prev[NPREV][2];
#pragma unroll
    for (int n = 0; n < NPREV; n++) prev[n][0] = prev[n][1] = 0.0f;
    if constexpr (NT == 1) {
        if (accumulate && active && wk == 0 && t == 0 && n_splits == 1) {
            if (r0 < n_rows) prev[0][0] = y[r0];
            if (r1 < n_rows) prev[0][1] = y[r1];
        }
    } else if constexpr (NT == NPREV) {
#pragma unroll
        for (int n = 0; n < NPREV; n++) {
            if (accumulate && active && wk == 0 && t == 0 && n_splits == 1 && (u32)n < n_x) {
                if (r0 < n_rows) prev[n][0] = y[(u64)n * n_rows + r0];
                if (r1 < n_rows) prev[n][1] = y[(u64)n * n_rows + r1];
            }
        }
    }
    // The RMSNorm inside staging (stage_x_s8_normed) where the block stages the whole row in one
    // phase with at most MMA_STAGE_JOBS jobs a warp; otherwise its own pass first.
    const bool fused_norm = FUSES_NORM;
#undef FUSES_NORM
    if (norm_w && !fused_norm) block_inv_rms<NT>(x, n_x, n_cols, eps, inv_rms);

    // This lane's B column in each group: x row n = RPG * j + g / PARTS, part g % PARTS (with
    // three parts, columns 6 and 7 are zero).
    int b_off[NG];
    bool b_valid[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) {
        const int n = RPG * j + g / PARTS;
        b_valid[j] = g < RPG * PARTS && n < NT;
        b_off[j] = !b_valid[j] ? 0 : S8 ? (n * PARTS + g % PARTS) * XSTRIDE_B + 8 * t : (n * PARTS + g % PARTS) * XSTRIDE + 4 * t;
        // The int8 path loads B unpredicated: a column no x row fills reads row 0's part 0, so
        // its products are not zero; its scale in xscale (and its sum in xsum) is, which cancels them.
        if (S8 && !b_valid[j]) b_off[j] = 8 * t;
    }
    // The sums and scales of columns no x row fills stay zero.
    if constexpr (T::HAS_MIN || S8) {
        for (int i = threadIdx.x; i < SUMS * NG * 8; i += blockDim.x) {
            if constexpr (S8) (&xsums.i[0][0][0])[i] = 0;
            else (&xsums.f[0][0][0])[i] = 0.0f;
        }
    }
    if constexpr (S8) {
        for (int i = threadIdx.x; i < (PHASE / 256) * NG * 8; i += blockDim.x) (&xscale[0][0][0])[i] = 0.0f;
    }

    float acc[NG][4];
#pragma unroll
    for (int j = 0; j < NG; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    MMA_STAMP(3);

    for (u32 p = kt_begin; p < kt_end; p += PHASE_TILES) {
        const u32 p_end = min(p + PHASE_TILES, kt_end);
        __syncthreads();  // the previous phase's readers are done with xs / xsum
        if constexpr (S8) {
            if (fused_norm) {
                stage_x_s8_normed<NT, NG, XSTRIDE_B, PARTS, EARLY_NORM_W, T>(x, norm_w, early_w, eps, n_x, n_cols, k_tiles * T::TILE_COLS,
                                                                             xs_bytes, xsums.i, xscale, inv_rms);
            } else {
                stage_x_s8<NT, NG, XSTRIDE_B, PARTS, T>(x, x2, norm_w, inv_rms, n_x, n_cols, p * T::TILE_COLS,
                                                        (p_end - p) * T::TILE_COLS, xs_bytes, xsums.i, xscale);
            }
        } else {
            stage_x<NT, PARTS, XSTRIDE, NG, SUMS>(x, x2, norm_w, inv_rms, n_x, n_cols, p * T::TILE_COLS,
                                                  (p_end - p) * T::TILE_COLS, xs, xsums.f);
        }
        __syncthreads();
        MMA_STAMP(4);
        if (!active) continue;
        // This warp's tiles of the phase (any warps_k is correct; the host keeps warps_k <=
        // PHASE_TILES so that every warp has work in every phase).
#pragma unroll(SELF_RELOAD ? 2 : 1)
        for (u32 kt = p + (wk + warps_k - (p - kt_begin) % warps_k) % warps_k; kt < p_end; kt += warps_k) {
            // The next tile's loads (maybe the next phase's) go out before this one's math. The
            // last tile loads itself again (a valid address, read once more from L2) instead of
            // loading nothing, so that the hand-over below is a plain copy: a conditional one
            // took a select per register, 24 to 34 instructions a tile.
            const bool more = kt + warps_k < kt_end;
            T nxt;
            if (SELF_RELOAD) nxt.load(tile_row + (u64)(more ? kt + warps_k : kt) * T::TILE_BYTES, lane, !S8);
            else if (more) nxt.load(tile_row + (u64)(kt + warps_k) * T::TILE_BYTES, lane, !S8);
            if constexpr (S8 && T::HAS_MIN) {
                tile_products_s8<T, NG>(cur, xs_bytes, xsums.i, xscale, kt - p, b_off, t, acc);
            } else if constexpr (S8 && T::SCALE_CHUNKS == 1) {
                tile_products_s8_chunks<T, NG>(cur, xs_bytes, xsums.i, xscale, kt - p, b_off, t, acc);
            } else if constexpr (S8) {
                tile_products_s8_blocks<T, NG>(cur, xs_bytes, xsums.i, xscale, kt - p, b_off, t, acc);
            } else {
                tile_products<NT, NG, SUMS, T>(cur, xs, xsums.f, (kt - p) * T::CHUNKS, b_off, b_valid, t, acc);
            }
            if (SELF_RELOAD || more) cur = nxt;
        }
    }
    MMA_STAMP(5);

    // Warps that split the columns of one tile row add their sums in order, through the
    // staging buffer (free now: every warp is past its last phase).
    if (warps_k > 1) {
        float* red = reinterpret_cast<float*>(xs_bytes);  // [warp][lane][NG * 4]: NG * 4 KiB <= sizeof xs_bytes
        __syncthreads();
#pragma unroll
        for (int j = 0; j < NG; j++) {
#pragma unroll
            for (int i = 0; i < 4; i++) red[(warp * 32 + lane) * (NG * 4) + j * 4 + i] = acc[j][i];
        }
        __syncthreads();
        if (wk == 0) {
            for (u32 k = 1; k < warps_k; k++) {
                const int w = (int)(k * warps_m + wm);
#pragma unroll
                for (int j = 0; j < NG; j++) {
#pragma unroll
                    for (int i = 0; i < 4; i++) acc[j][i] += red[(w * 32 + lane) * (NG * 4) + j * 4 + i];
                }
            }
        }
    }
    const bool writer = active && wk == 0;
    MMA_STAMP(6);

    // Lane (g, t) holds, for rows g and g+8, mma columns 2t and 2t+1 of each group: add each x
    // row's parts. Three parts: columns 0-2 are row 2j (lanes t = 0, 1), columns 3-5 row 2j+1
    // (t = 1, 2). Two parts: columns 2t, 2t+1 are row 4j + t, whole in one lane.
    // Partial sums of every segment, one after the other: rows_pad rows per split and x row.
    const u32 rows_pad = (segs.m_tiles[0] + segs.m_tiles[1] + segs.m_tiles[2]) * RP_TILE_ROWS;
    const u32 part0 = tile_base * RP_TILE_ROWS;
    const auto emit = [&](u32 n, float v0, float v1) {
        if (n_splits == 1) {
            if constexpr (NT == 1) {
                // put() with the bias and the old value loaded early: old + (sum + bias).
                if (r0 < n_rows) y[r0] = accumulate ? prev[0][0] + (v0 + b0) : v0 + b0;
                if (r1 < n_rows) y[r1] = accumulate ? prev[0][1] + (v1 + b1) : v1 + b1;
            } else if constexpr (NT == NPREV) {
                // The same for two rows (row n's, selected without indexing registers by a variable).
                const float p0 = n == 0 ? prev[0][0] : prev[1][0], p1 = n == 0 ? prev[0][1] : prev[1][1];
                if (r0 < n_rows) y[(u64)n * n_rows + r0] = accumulate ? p0 + (v0 + b0) : v0 + b0;
                if (r1 < n_rows) y[(u64)n * n_rows + r1] = accumulate ? p1 + (v1 + b1) : v1 + b1;
            } else if constexpr (NT == 2) {
                if (r0 < n_rows) put(y + (u64)n * n_rows + r0, v0 + b0, accumulate);
                if (r1 < n_rows) put(y + (u64)n * n_rows + r1, v1 + b1, accumulate);
            } else {
                if (r0 < n_rows) put(y + (u64)n * n_rows + r0, v0 + (bias ? bias[r0] : 0.0f), accumulate);
                if (r1 < n_rows) put(y + (u64)n * n_rows + r1, v1 + (bias ? bias[r1] : 0.0f), accumulate);
            }
        } else {
            float* dst = partials + ((u64)split * NT + n) * rows_pad + part0;
            dst[r0] = v0;
            dst[r1] = v1;
        }
    };
#pragma unroll
    for (int j = 0; j < NG; j++) {
        if constexpr (PARTS == 3) {
#pragma unroll
            for (int u = 0; u < 2; u++) {
                const u32 n = 2 * j + u;
                float v0, v1;
                row_sums(acc[j], t, u, v0, v1);
                if (writer && t == 0 && n < n_x) emit(n, v0, v1);
            }
        } else {
            const u32 n = RPG * j + t;
            if (writer && n < n_x) emit(n, acc[j][0] + acc[j][1], acc[j][2] + acc[j][3]);
        }
    }
    MMA_STAMP(7);
    if (n_splits == 1) return;

    // Split-K: the last block of this block row to finish adds the splits in order.
    if (!split_k_last(&counters[blockIdx.x], n_splits, s_last)) return;
    MMA_STAMP(8);
    const u32 row_begin = block_row * warps_m * RP_TILE_ROWS;
    const u32 row_end = min(row_begin + warps_m * RP_TILE_ROWS, n_rows);
    const u32 nr = row_end > row_begin ? row_end - row_begin : 0;
    for (u32 i = threadIdx.x; i < n_x * nr; i += blockDim.x) {
        const u32 n = i / nr, row = row_begin + i % nr;
        const float* src = partials + (u64)n * rows_pad + part0 + row;
        const u64 stride = (u64)NT * rows_pad;
        put(y + (u64)n * n_rows + row, sum_splits(src, stride, n_splits) + (bias ? bias[row] : 0.0f), accumulate);
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // ready for the next launch
    MMA_STAMP(9);
}

// The parameters of every kernel of this file, one list for the host (matvec.rs's launch_tiled):
// up to three matrices (segments 1 and 2 unused: m_tiles1 = m_tiles2 = 0, their pointers then
// never read), x and what staging makes of it, split-K scratch, the plan, the L2 prefetch window,
// and first_b (the pair kernels' first segment of the second type; the others ignore it).
#define MATVEC_MMA_PARAMS                                                                                                     \
    const u8* tiles0, const u8* tiles1, const u8* tiles2, const float* bias0, const float* bias1, const float* bias2,       \
        float* y0, float* y1, float* y2, u32 m_tiles0, u32 m_tiles1, u32 m_tiles2, u32 n_rows0, u32 n_rows1, u32 n_rows2,    \
        u32 k_tiles, u32 n_cols, const float* __restrict__ x, const float* __restrict__ x2, const float* __restrict__ norm_w, \
        float eps, u32 n_x, float* __restrict__ partials, u32* __restrict__ counters, u32 k_tiles_per_split, u32 warps_m,   \
        u32 accumulate, const u64* __restrict__ pf_ranges, u32 pf_n_ranges, u32 pf_first, u64 pf_offset_bytes,              \
        u64 pf_len_bytes, u32 first_b MMA_PROBE_PARAM
// The Segments and PrefetchWindow of those parameters.
#define MATVEC_MMA_UNPACK                                                                                                     \
    const Segments segs = {{tiles0, tiles1, tiles2}, {bias0, bias1, bias2}, {y0, y1, y2}, {m_tiles0, m_tiles1, m_tiles2},     \
                           {n_rows0, n_rows1, n_rows2}};                                                                       \
    const PrefetchWindow ahead = {pf_ranges, pf_n_ranges, pf_first, pf_offset_bytes, pf_len_bytes};

#define MATVEC_MMA_KERNEL(nt)                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * MMA_MAX_WARPS, MMA_MIN_BLOCKS) matvec_mma_##nt(MATVEC_MMA_PARAMS) {      \
        MATVEC_MMA_UNPACK                                                                                                     \
        matvec_mma<nt>(segs, k_tiles, n_cols, x, x2, norm_w, eps, n_x, partials, counters, k_tiles_per_split, warps_m, \
                       accumulate, ahead MMA_PROBE_ARG);                                                               \
    }

// Two types, one launch (a module compiled with -DQTYPE_B too holds only these). A 7B's Q4_K_M
// has q and k in Q4_K and, on half its layers, v in Q6_K, which no exact conversion makes one
// type (Q5_0 and Q8_0 groups are widened to Q8_0 on the host instead). Segments from first_b on
// are TileB's: the host orders a launch's matrices by type. Each block is one segment's, so it
// runs that type's code and staging from beginning to end, with the plan the host made for the
// launch's tile rows together; the block's static shared memory is both instantiations'.
// H100, the synthetic 7B's one-sequence step (docs/BENCHMARKS.md, forty-first session): such a
// layer's q/k/v took two launches of 8.8-10 us each.
#define MATVEC_MMA_PAIR_KERNEL(nt)                                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * MMA_MAX_WARPS, MMA_MIN_BLOCKS) matvec_mma_pair_##nt(MATVEC_MMA_PARAMS) { \
        MATVEC_MMA_UNPACK                                                                                                     \
        /* The block's segment as matvec_mma finds it (through a shared helper, the SASS moved). */                           \
        const u32 wm = max(warps_m, 1u), blocks0 = (m_tiles0 + wm - 1) / wm, blocks1 = (m_tiles1 + wm - 1) / wm;              \
        const u32 seg = blockIdx.x < blocks0 ? 0 : blockIdx.x < blocks0 + blocks1 ? 1 : 2;                                    \
        if (seg < first_b)                                                                                                    \
            matvec_mma<nt, Tile>(segs, k_tiles, n_cols, x, x2, norm_w, eps, n_x, partials, counters, k_tiles_per_split,       \
                                 warps_m, accumulate, ahead MMA_PROBE_ARG);                                                   \
        else                                                                                                                  \
            matvec_mma<nt, TileB>(segs, k_tiles, n_cols, x, x2, norm_w, eps, n_x, partials, counters, k_tiles_per_split,      \
                                  warps_m, accumulate, ahead MMA_PROBE_ARG);                                                  \
    }

#if defined(QTYPE_B)
MATVEC_MMA_PAIR_KERNEL(1)
MATVEC_MMA_PAIR_KERNEL(2)
MATVEC_MMA_PAIR_KERNEL(4)
#elif !MMA_STREAM && !MMA_FFN
MATVEC_MMA_KERNEL(1)
MATVEC_MMA_KERNEL(2)
MATVEC_MMA_KERNEL(4)
MATVEC_MMA_KERNEL(8)
#endif

#if MMA_STREAM
// ---- Stream-K: one, two, four or eight rows of x (three and four; five to eight), matrices of many tiles ----
// The kernel above gives each warp the tiles of one tile row (or a column range of one), so a
// launch's speed depends on how its block rows fall into waves: with a few waves, the last one
// runs part-empty, and every block pays for staging x (and its norm) again; the alternatives, more
// tile rows a block or column splits, leave SMs short of warps or add split-K round trips. (H200,
// the same tile loop on 3584 columns of Q4_K at one row, docs/BENCHMARKS.md, nineteenth session's
// sweep: 78 % of the copy bandwidth on the 152064-row LM head, 36 waves of blocks; at most 48 %
// on the 18944-row gate/up, whatever the plan.)
//
// Here the grid is as many blocks as the GPU holds at once, and the launch's U tiles, over every
// segment's tile rows, are dealt out to its W warps (at most U) in equal shares whatever the shape
// (Stream-K, Osama et al., PPoPP 2023): warp w takes the tiles [first(w), first(w + 1)) in this
// order: phase by phase (STREAM_PHASE columns of x, the most a block stages at once), and within
// a phase tile row by tile row. A tile row's tiles within one phase are a slice; x one phase wide
// (the LM heads, a 7B's gate/up) makes every slice a whole row. A block stages the phases its
// warps' shares touch (one, sometimes two), one after the other, and its warps multiply their tiles
// of each phase in order, one tile ahead in registers as above.
//
// A tile row whose tiles all fell to one warp is written by it. Any other row is written by the
// last of its warps to finish: each writes its piece of the row's sums (one slice, or the part of
// one in its share) to `partials`, adds the piece's tiles to the row's counter, and the one that
// brings the count to the row's tiles adds the pieces in (phase, warp) order, so results do not
// depend on timing, and resets the counter. A piece's slot (NT x 16 floats: x rows, tile rows):
// 2w for the slice warp w's share begins in, 2w + 1 for the one it ends in, 2 W + s for a whole
// slice s between them (only with several phases, where a whole slice is not a whole row).
// partials holds (2 W + S) x NT x 16 floats (S: the slices, phases x tile rows, with several
// phases; none with one), counters one per tile row (zero between launches). The host takes this
// kernel only where its counts fit 32 bits with room to spare.

constexpr int STREAM_PHASE = 4096;
// The tile loop unrolled twice (no hand-over copies) except for Q6_K, whose two tiles in flight
// leave too few registers for the loop's bookkeeping: unrolled twice, the one-phase loop spilled
// 20 values a pair of tiles (sm_90); once, it spills none, at 532 instructions a tile against the
// twenty-eighth session's 518 (unrolled twice, before the phases).
#ifndef STREAM_UNROLL
#define STREAM_UNROLL (Tile::SCALE_CHUNKS == 1 ? 1 : 2)
#endif
constexpr u32 STREAM_PHASE_TILES = STREAM_PHASE / Tile::TILE_COLS;
// The order of a launch's tiles (above), and the warps' equal shares of it: the first `rem`
// warps take q + 1 tiles, the others q.
struct StreamOrder {
    u32 m_all, k_tiles, n_phases, phase_units;  // tile rows, column tiles, phases, tiles a phase (all rows)
    u32 units, warps, q, rem;

    __device__ u32 width(u32 ph) const { return min(STREAM_PHASE_TILES, k_tiles - ph * STREAM_PHASE_TILES); }
    // The first tile of warp w's share; first(warps) == units.
    __device__ u32 first(u32 w) const { return w * q + min(w, rem); }
    // The warp whose share holds tile u.
    __device__ u32 owner(u32 u) const { return u < rem * (q + 1) ? u / (q + 1) : rem + (u - rem * (q + 1)) / q; }
    // Tile u's phase, tile row and column tile.
    __device__ void locate(u32 u, u32& ph, u32& r, u32& kt) const {
        ph = u / phase_units;
        const u32 local = u - ph * phase_units, w = width(ph);
        r = local / w;
        kt = ph * STREAM_PHASE_TILES + local % w;
    }
    __device__ u32 slice_of(u32 u) const {
        u32 ph, r, kt;
        locate(u, ph, r, kt);
        return ph * m_all + r;
    }
    __device__ u32 slice_begin(u32 ph, u32 r) const { return ph * phase_units + r * width(ph); }
    // The slot of warp w's piece of slice s (see above): by where s lies in w's share.
    __device__ u32 slot(u32 s, u32 w) const {
        return s == slice_of(first(w)) ? 2 * w : s == slice_of(first(w + 1) - 1) ? 2 * w + 1 : 2 * warps + s;
    }
};

// Whether a launch's x has several phases, as a type (the stream kernel's tile loop is compiled
// for each).
template <bool B>
struct StreamPhases {
    static constexpr bool value = B;
};

// The order of m_all tile rows of k_tiles column tiles over this grid's warps (blocks of
// warps_here warps).
__device__ __forceinline__ StreamOrder stream_order(u32 m_all, u32 k_tiles, u32 warps_here) {
    StreamOrder ord;
    ord.m_all = m_all;
    ord.k_tiles = max(k_tiles, 1u);
    ord.n_phases = (ord.k_tiles + STREAM_PHASE_TILES - 1) / STREAM_PHASE_TILES;
    ord.phase_units = ord.m_all * STREAM_PHASE_TILES;
    ord.units = ord.m_all * ord.k_tiles;
    // Shares are taken over at most one warp a tile, so that none is empty; warps past them idle.
    ord.warps = max(min(gridDim.x * warps_here, ord.units), 1u);
    ord.q = ord.units / ord.warps;
    ord.rem = ord.units % ord.warps;
    return ord;
}

// What stream_finish_slice and stream_finish_slice_8 do once lane (g, t == 0) holds v[n], rows g
// and g + 8 of x row n's sums (for every n < NT): the write, or the piece and the row's count.
template <int NT>
__device__ __forceinline__ void stream_write_slice(const StreamOrder& ord, float (&v)[NT][2], float* y, const float* bias, u32 n_rows,
                                                  u32 row0, u32 r, u32 ph, u32 piece_tiles, u32 m_all, u32 n_x, float* partials,
                                                  u32* counters, u32 accumulate) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    if (piece_tiles == ord.k_tiles) {
        if (t == 0) {
#pragma unroll
            for (int n = 0; n < NT; n++) {
                if ((u32)n >= n_x) break;
                if (row0 + g < n_rows) put(y + (u64)n * n_rows + row0 + g, v[n][0] + (bias ? bias[row0 + g] : 0.0f), accumulate);
                if (row0 + g + 8 < n_rows) put(y + (u64)n * n_rows + row0 + g + 8, v[n][1] + (bias ? bias[row0 + g + 8] : 0.0f), accumulate);
            }
        }
        return;
    }
    const u32 w = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const u32 slot = ord.slot(ph * m_all + r, w);
    float* piece = partials + slot * (NT * RP_TILE_ROWS);
    if (t == 0) {
#pragma unroll
        for (int n = 0; n < NT; n++) {
            piece[n * RP_TILE_ROWS + g] = v[n][0];
            piece[n * RP_TILE_ROWS + g + 8] = v[n][1];
        }
    }
    __threadfence();
    __syncwarp();
    u32 last = 0;
    if (lane == 0) last = atomicAdd(&counters[r], piece_tiles) + piece_tiles == ord.k_tiles;
    if (!__shfl_sync(FULL_WARP, last, 0)) return;
    // Every lane orders its reads after lane 0's count (a shuffle is no memory ordering).
    __threadfence();
    __syncwarp();
    for (u32 i = lane; i < NT * RP_TILE_ROWS; i += 32) {
        // Entry i: x row n = i / 16, the tile row's row i % 16 (four rows: two entries a lane).
        float sum = 0.0f;
        for (u32 p = 0; p < ord.n_phases; p++) {
            const u32 s = p * ord.m_all + r, begin = ord.slice_begin(p, r);
            const u32 v_last = ord.owner(begin + ord.width(p) - 1);
            for (u32 vw = ord.owner(begin); vw <= v_last; vw++) {
                const u32 v_slot = ord.slot(s, vw);
                sum += __ldcg(partials + v_slot * (NT * RP_TILE_ROWS) + i);
            }
        }
        const u32 n = i / RP_TILE_ROWS, row = row0 + i % RP_TILE_ROWS;
        if (n < n_x && row < n_rows) put(y + (u64)n * n_rows + row, sum + (bias ? bias[row] : 0.0f), accumulate);
    }
    if (lane == 0) counters[r] = 0;  // ready for the next launch
}

// This warp's sums of `piece_tiles` tiles of tile row r in phase ph (acc0..3: its mma sums, NT
// rows of x, n_x of them real) are done: writes the row (rows row0 .. row0 + 15 of each y row,
// those below n_rows) if they are all of its tiles, else the piece, and adds the pieces if it is
// the last of the row's warps to finish (see above). Every lane calls it; out of line, since a
// warp finishes a slice every STREAM_PHASE_TILES tiles at most (the tile loop stays short). (What
// it needs beyond that is recomputed here from the launch's shape: the tile loop is short of
// registers.)
template <int NT>
__device__ __noinline__ void stream_finish_slice(float acc0, float acc1, float acc2, float acc3, float* y, const float* bias,
                                                 u32 n_rows, u32 row0, u32 r, u32 ph, u32 piece_tiles, u32 m_all, u32 k_tiles,
                                                 u32 n_x, float* partials, u32* counters, u32 accumulate) {
    const int t = threadIdx.x & 3;
    const StreamOrder ord = stream_order(m_all, k_tiles, blockDim.x >> 5);
    // One or two rows, three parts: x row 0's are mma columns 0-2 (lanes t = 0: columns 0, 1;
    // t = 1: column 2), row 1's columns 3-5 (t = 1: column 3; t = 2: columns 4, 5). Four rows, two
    // parts: row n's are columns 2n and 2n + 1, lane t = n's. As in matvec_mma's emit.
    constexpr int PARTS = NT <= 2 ? 3 : 2;
    float v[NT][2];
#pragma unroll
    for (int n = 0; n < NT; n++) {
        if (PARTS == 2) {
            v[n][0] = t == n ? acc0 + acc1 : 0.0f;
            v[n][1] = t == n ? acc2 + acc3 : 0.0f;
        } else if (n == 0) {
            v[n][0] = t == 0 ? acc0 + acc1 : t == 1 ? acc0 : 0.0f;
            v[n][1] = t == 0 ? acc2 + acc3 : t == 1 ? acc2 : 0.0f;
        } else {
            v[n][0] = t == 1 ? acc1 : t == 2 ? acc0 + acc1 : 0.0f;
            v[n][1] = t == 1 ? acc3 : t == 2 ? acc2 + acc3 : 0.0f;
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            v[n][h] += __shfl_xor_sync(FULL_WARP, v[n][h], 1);
            v[n][h] += __shfl_xor_sync(FULL_WARP, v[n][h], 2);
        }
    }
    stream_write_slice<NT>(ord, v, y, bias, n_rows, row0, r, ph, piece_tiles, m_all, n_x, partials, counters, accumulate);
}

// Eight rows, two parts, two column groups: row n's are group n / 4's columns 2 (n % 4) and
// 2 (n % 4) + 1, lane t = n % 4's (a: group 0's sums, b: group 1's).
__device__ __noinline__ void stream_finish_slice_8(float a0, float a1, float a2, float a3, float b0, float b1, float b2, float b3,
                                                   float* y, const float* bias, u32 n_rows, u32 row0, u32 r, u32 ph,
                                                   u32 piece_tiles, u32 m_all, u32 k_tiles, u32 n_x, float* partials,
                                                   u32* counters, u32 accumulate) {
    const int t = threadIdx.x & 3;
    const StreamOrder ord = stream_order(m_all, k_tiles, blockDim.x >> 5);
    float v[8][2];
#pragma unroll
    for (int n = 0; n < 8; n++) {
        const bool mine = t == n % 4;
        v[n][0] = mine ? (n < 4 ? a0 + a1 : b0 + b1) : 0.0f;
        v[n][1] = mine ? (n < 4 ? a2 + a3 : b2 + b3) : 0.0f;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            v[n][h] += __shfl_xor_sync(FULL_WARP, v[n][h], 1);
            v[n][h] += __shfl_xor_sync(FULL_WARP, v[n][h], 2);
        }
    }
    stream_write_slice<8>(ord, v, y, bias, n_rows, row0, r, ph, piece_tiles, m_all, n_x, partials, counters, accumulate);
}

template <int NT>
__device__ __forceinline__ void matvec_mma_stream(const Segments& segs, u32 k_tiles, u32 n_cols, const float* __restrict__ x,
                                                  const float* __restrict__ x2, const float* __restrict__ norm_w, float eps,
                                                  u32 n_x, float* __restrict__ partials, u32* __restrict__ counters,
                                                  u32 accumulate, const PrefetchWindow& ahead) {
    static_assert(Tile::S8, "the stream kernel runs the int8 path (not with -DRP_Q6_K_S8=0)");
    // One or two rows of x in three int8 parts, or four in two: one mma column group holds every
    // row's parts (as in matvec_mma); eight rows in two parts take two groups.
    static_assert(NT == 1 || NT == 2 || NT == 4 || NT == 8, "the stream kernel takes one, two, four or eight rows of x");
    constexpr int PARTS = NT <= 2 ? 3 : 2;
    constexpr int NG = NT <= 4 ? 1 : 2;
    constexpr int PHASE = STREAM_PHASE, XSTRIDE_B = PHASE + 32, SUMS = PHASE / 32;
    // Eight rows' x (66 KB) is past static shared memory's 48 KiB: it is the launch's dynamic
    // shared memory (matvec.rs's stream_dynamic_shared_bytes).
    __shared__ __align__(16) u8 xs_static[NT <= 4 ? PARTS * NT * XSTRIDE_B : 16];
    extern __shared__ __align__(16) u8 xs_dynamic[];
    u8* const xs_bytes = NT <= 4 ? xs_static : xs_dynamic;
    __shared__ __align__(16) int xsums[SUMS][NG][8];
    static_assert(xsum_bytes_needed<NG>(PHASE / 256) <= (int)sizeof(xsums), "x's sums as bytes fit the array");
    __shared__ __align__(16) float xscale[PHASE / 256][NG][8];
    __shared__ float inv_rms[NT];

    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const u32 warps_here = blockDim.x >> 5, w = blockIdx.x * warps_here + (threadIdx.x >> 5);
    const u32 m0 = segs.m_tiles[0], m01 = m0 + segs.m_tiles[1], m_all = m01 + segs.m_tiles[2];
    const StreamOrder ord = stream_order(m_all, k_tiles, warps_here);
    const u32 u_begin = w < ord.warps ? ord.first(w) : ord.units;
    const u32 u_end = w < ord.warps ? ord.first(w + 1) : ord.units;
    // Tile row r (over all segments) in its segment's buffer.
    const auto row_tiles = [&](u32 r) {
        const u8* base = r < m0 ? segs.tiles[0] : r < m01 ? segs.tiles[1] : segs.tiles[2];
        const u32 local = r < m0 ? r : r < m01 ? r - m0 : r - m01;
        return base + (u64)local * k_tiles * Tile::TILE_BYTES;
    };
    u32 ph = 0, r = 0, kt = 0;
    if (u_begin < u_end) ord.locate(u_begin, ph, r, kt);
    // The first tile's loads go out before x is staged (weights are constant).
    Tile cur;
    if (u_begin < u_end) cur.load(row_tiles(r) + (u64)kt * Tile::TILE_BYTES, lane, false);
    // Where the RMSNorm goes inside staging (below): FUSES_NORM.
#define FUSES_NORM                                                                                                            \
    (MMA_FUSED_NORM && norm_w != nullptr && x2 == nullptr && ord.n_phases == 1 &&                                            \
     NT * ((k_tiles * Tile::TILE_COLS + 255) / 256) <= MMA_STAGE_JOBS * warps_here)
    constexpr bool EARLY_NORM_W = MMA_EARLY_NORM_W && Tile::TILE_COLS < 256;  // see EarlyNormW
    const EarlyNormW early_w = early_norm_w<NT>(norm_w, EARLY_NORM_W && blockIdx.x * warps_here < ord.warps && FUSES_NORM ? n_x : 0,
                                                n_cols, k_tiles * Tile::TILE_COLS);
    prefetch_window(ahead);
    dependent_wait();
    // Blocks without a share (a launch of fewer tiles than warps) have nothing to stage.
    const u32 w0 = blockIdx.x * warps_here;
    if (w0 >= ord.warps) return;
    // The phases this block's shares touch.
    const u32 ph_lo = ord.first(w0) / ord.phase_units;
    const u32 ph_hi = (ord.first(min(w0 + warps_here, ord.warps)) - 1) / ord.phase_units;

    // The RMSNorm inside staging where x is one phase and each warp has at most MMA_STAGE_JOBS
    // 256-column jobs (as in matvec_mma); otherwise its own pass over the whole row first.
    const bool fused_norm = FUSES_NORM;
#undef FUSES_NORM
    if (norm_w && !fused_norm) block_inv_rms<NT>(x, n_x, n_cols, eps, inv_rms);
    // Columns no x row fills keep zero sums and scales (see matvec_mma); staging writes only
    // the others, so once is enough for every phase.
    for (int i = threadIdx.x; i < SUMS * NG * 8; i += blockDim.x) (&xsums[0][0][0])[i] = 0;
    for (int i = threadIdx.x; i < (PHASE / 256) * NG * 8; i += blockDim.x) (&xscale[0][0][0])[i] = 0.0f;

    // B column g is x row g / PARTS's part g % PARTS, staged row g (lanes g < PARTS NT); the
    // others read row 0's part 0 again, which their zero scales cancel (see b_off in matvec_mma).
    // (Eight rows: group 1's column g is staged row 8 + g.)
    int b_off[NG];
#pragma unroll
    for (int j = 0; j < NG; j++) b_off[j] = 8 * j + g < PARTS * NT ? (8 * j + g) * XSTRIDE_B + 8 * t : 8 * t;
    float acc[NG][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
    const u8* tile = row_tiles(r) + (u64)kt * Tile::TILE_BYTES;
    u32 piece_tiles = 0;
    // The warp's n_here tiles of phase p, from (r, kt) on; ends_here: its share ends with them.
    // Compiled twice: x of one phase (the LM heads, a 7B's gate/up) needs none of the phase
    // bookkeeping, which costs a few instructions a tile.
    const auto multiply = [&](auto several, u32 p, u32 n_here, bool ends_here) {
        constexpr bool PHASES = decltype(several)::value;
        const u32 p_col_tile = PHASES ? p * STREAM_PHASE_TILES : 0;
        const u32 p_end_tile = PHASES ? p_col_tile + min(STREAM_PHASE_TILES, k_tiles - p_col_tile) : k_tiles;
#pragma unroll(STREAM_UNROLL)
        for (u32 i = 0; i < n_here; i++) {
            // The next tile's loads go out before this one's math; the last tile loads itself again
            // (a plain hand-over, as in matvec_mma). After a slice's last tile: the next row's
            // first in this phase, or the next phase's first row (with one phase, the last row's
            // last tile is the launch's last: no next).
            const bool more = i + 1 < n_here || !ends_here, slice_end = kt + 1 == p_end_tile;
            const bool row_next = r + 1 < m_all;
            const u8* next;
            if constexpr (PHASES) {
                next = !more ? tile
                       : !slice_end ? tile + Tile::TILE_BYTES
                       : row_next ? row_tiles(r + 1) + (u64)p_col_tile * Tile::TILE_BYTES
                                  : row_tiles(0) + (u64)p_end_tile * Tile::TILE_BYTES;
            } else {
                next = !more ? tile : slice_end ? row_tiles(r + 1) : tile + Tile::TILE_BYTES;
            }
            Tile nxt;
            nxt.load(next, lane, false);
            tile_products_s8_of_type<NG>(cur, xs_bytes, xsums, xscale, kt - p_col_tile, b_off, t, acc);
            piece_tiles++;
            if (slice_end || !more) {
                const int seg = r < m0 ? 0 : r < m01 ? 1 : 2;
                const u32 row0 = (r < m0 ? r : r < m01 ? r - m0 : r - m01) * RP_TILE_ROWS;
                // Selects, not an index: an indexed struct member would go to local memory.
                float* y = seg == 0 ? segs.y[0] : seg == 1 ? segs.y[1] : segs.y[2];
                const float* bias = seg == 0 ? segs.bias[0] : seg == 1 ? segs.bias[1] : segs.bias[2];
                const u32 n_rows = seg == 0 ? segs.n_rows[0] : seg == 1 ? segs.n_rows[1] : segs.n_rows[2];
                if constexpr (NG == 1) {
                    stream_finish_slice<NT>(acc[0][0], acc[0][1], acc[0][2], acc[0][3], y, bias, n_rows, row0, r, p, piece_tiles,
                                            m_all, k_tiles, n_x, partials, counters, accumulate);
                } else {
                    stream_finish_slice_8(acc[0][0], acc[0][1], acc[0][2], acc[0][3], acc[1][0], acc[1][1], acc[1][2], acc[1][3], y,
                                          bias, n_rows, row0, r, p, piece_tiles, m_all, k_tiles, n_x, partials, counters, accumulate);
                }
#pragma unroll
                for (int j = 0; j < NG; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
                piece_tiles = 0;
            }
            cur = nxt;
            tile = next;
            if (!slice_end) {
                kt++;
            } else if (!PHASES || row_next) {
                r++;
                kt = p_col_tile;
            } else {
                r = 0;
                kt = p_end_tile;
            }
        }
    };
    if (ord.n_phases == 1) {
        __syncthreads();  // the zeros above
        if (fused_norm) {
            stage_x_s8_normed<NT, NG, XSTRIDE_B, PARTS, EARLY_NORM_W>(x, norm_w, early_w, eps, n_x, n_cols, k_tiles * Tile::TILE_COLS,
                                                                      xs_bytes, xsums, xscale, inv_rms);
        } else {
            stage_x_s8<NT, NG, XSTRIDE_B, PARTS>(x, x2, norm_w, inv_rms, n_x, n_cols, 0, k_tiles * Tile::TILE_COLS, xs_bytes, xsums,
                                                 xscale);
        }
        __syncthreads();
        multiply(StreamPhases<false>{}, 0, u_end - u_begin, true);
        return;
    }
    u32 u = u_begin;
    for (u32 p = ph_lo; p <= ph_hi; p++) {
        __syncthreads();  // the zeros above, or the previous phase's readers done with xs / xsums
        const u32 p_col_tile = p * STREAM_PHASE_TILES;
        stage_x_s8<NT, NG, XSTRIDE_B, PARTS>(x, x2, norm_w, inv_rms, n_x, n_cols, p_col_tile * Tile::TILE_COLS,
                                             min(STREAM_PHASE_TILES, k_tiles - p_col_tile) * Tile::TILE_COLS, xs_bytes, xsums, xscale);
        __syncthreads();
        // This warp's tiles of phase p (none if its share lies in another of the block's phases);
        // its share goes on past them unless it ends in this phase.
        const u32 u_stop = min(u_end, (p + 1) * m_all * STREAM_PHASE_TILES);
        const u32 n_here = u_stop > u ? u_stop - u : 0;
        multiply(StreamPhases<true>{}, p, n_here, u_stop == u_end);
        u = max(u, u_stop);
    }
}

// The stream kernels (see above), with matvec_mma_1's arguments (k_tiles_per_split and warps_m
// unused: the grid and block sizes are their plan).
#define MATVEC_MMA_STREAM_KERNEL(nt)                                                                                          \
    extern "C" __global__ void __launch_bounds__(32 * MMA_MAX_WARPS, MMA_MIN_BLOCKS) matvec_mma_stream_##nt(MATVEC_MMA_PARAMS) { \
        MATVEC_MMA_UNPACK                                                                                                     \
        MMA_PROBE_SET(nullptr);                                                                                               \
        matvec_mma_stream<nt>(segs, k_tiles, n_cols, x, x2, norm_w, eps, n_x, partials, counters, accumulate, ahead);      \
    }
MATVEC_MMA_STREAM_KERNEL(1)
MATVEC_MMA_STREAM_KERNEL(2)
MATVEC_MMA_STREAM_KERNEL(4)
// Eight rows only for a type whose int8 path goes that far (Q4_K): the host takes it for no other.
#if MMA_S8_MAX_NT >= 8
MATVEC_MMA_STREAM_KERNEL(8)
#endif
#endif  // MMA_STREAM

#if MMA_FFN
// ---- The feed-forward block of one or two rows in one launch: x += down(silu(gate(n)) * up(n)), n = rms_norm(x) ----
// At one sequence a layer's two FFN launches (gate/up, then ffn_down) are a chain of small steps:
// each pays a launch hand-over, staging its x, and ffn_down (few rows, long ones) split-K's round
// trip on top (H100, forty-third session: 6.3 + 7.4 us a layer of the 0.5B, for 9 MB of weights).
// Here one grid does both. The intermediate columns are dealt out in slices of FFN_SLICE = 256
// (one int8 scale block of ffn_down's x), a slice to a cluster of FFN_RANKS = 8 blocks; block
// `rank` of slice j computes the 32 values h[j 256 + 32 rank ..] from two tile rows of gate and two
// of up (its warps: tile row warp % 4, column tiles warp / 4, warp / 4 + 2, ...), pushes them into
// every block of its cluster (st.async into distributed shared memory, each receiver counting the
// bytes on an mbarrier), and each then multiplies the slice's ffn_down tile column by the slice's h
// for its share of ffn_down's tile rows (a warp a tile row). Two cluster barriers around reads of
// the peers' h instead cost 0.9 us a launch (bench_ffn_chain.py, H100: a barrier's release is a
// GPU-scope fence). The slices'
// partial sums meet as split-K's do: the last block of each rank's rows to finish adds them in
// slice order to the residual, so results do not depend on timing.
//
// A block's gate/up tiles (at most FFN_GU_TILES a warp) are loaded before the kernel waits for the
// previous one, its ffn_down tiles after its gate/up products (FFN_EARLY_DOWN). The host takes
// this kernel only where that holds (src/backend/cuda/ffn.rs): one or two rows, gate and up of the
// module's type and ffn_down of QTYPE_DOWN, both on the int8 path, the intermediate size a multiple
// of 256, the hidden size at most FFN_MAX_COLS = 1024 (two warps' FFN_GU_TILES gate/up tiles; 8
// ffn_down tile rows a block; NT x 4 staging jobs, one a warp), on sm_90 or later (clusters). The
// products are those of the two launches (the same tile sums, the same staging of x and of h); the
// sums of ffn_down add up in another order (by slices of 256 columns), so the bits differ from theirs.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
// Clusters and distributed shared memory are sm_90's: before it the module holds no kernel (the
// host never asks for one there).
#else
#ifndef QTYPE_DOWN
#error "matvec_mma.cu with -DMMA_FFN=1 needs -DQTYPE_DOWN=<ffn_down's type>"
#endif
typedef FERRITE_CAT(Rp_, QTYPE_DOWN) TileD;
constexpr int FFN_RANKS = 8, FFN_SLICE = 256, FFN_H_PER_RANK = FFN_SLICE / FFN_RANKS, FFN_MAX_COLS = 1024;
// Gate/up tiles a warp holds: two warps a tile row span FFN_MAX_COLS columns.
constexpr int FFN_GU_TILES = FFN_MAX_COLS / 2 / Tile::TILE_COLS;
// Columns of x the gate/up staging holds.
constexpr int FFN_PHASE = FFN_MAX_COLS;
// 1: the ffn_down tiles are loaded before the wait too; 0 (the default): after the gate/up products,
// so that their latency overlaps the h exchange. Loading them early held more registers through the
// wait and spilled with Q8_0's or Q6_K's gate/up tiles (72-152 bytes, sm_90); with Q5_0's, the
// real model's, it spilled none and was still slower: H100, forty-sixth session, the 0.5B shapes'
// decode step 0.691 -> 0.677 ms at one sequence, 0.723 -> 0.712 at two (three rounds), the real
// model's Generator 1,426 -> 1,460 tok/s at one sequence (docs/BENCHMARKS.md).
#ifndef FFN_EARLY_DOWN
#define FFN_EARLY_DOWN 0
#endif
// Gate/up tiles a warp loads before the wait (of its FFN_GU_TILES, capped there; the rest after
// it, before x is staged): two by default. This launch starts while the o projection before it
// still runs, and its weight loads slow that one: with all four of Q5_0's early the o projection
// took 4.95 us a layer at one sequence, with two 4.02 (3.34 with the FFN not fused). The 0.5B
// shapes' decode step, all / three / two / one / none early: 0.678 / 0.666 / 0.660 / 0.663 / 0.680
// ms at one sequence, 0.712 / 0.706 / 0.705 / 0.710 / 0.720 at two; the real model's Generator at
// one sequence 1,460 -> 1,480 tok/s (H100, forty-seventh session, docs/BENCHMARKS.md).
// -DFFN_GU_EARLY=N through FERRITE_CUDA_KERNEL_DEFINES.
#ifndef FFN_GU_EARLY
#define FFN_GU_EARLY 2
#endif
static_assert(FFN_GU_EARLY >= 0, "gate/up tiles loaded before the wait");
constexpr int FFN_GU_EARLY_TILES = FFN_GU_EARLY < FFN_GU_TILES ? FFN_GU_EARLY : FFN_GU_TILES;
constexpr int FFN_DOWN_TILES = FFN_SLICE / TileD::TILE_COLS;  // ffn_down tiles of a slice, a tile row
static_assert(FFN_H_PER_RANK == 2 * RP_TILE_ROWS, "a block's h comes from two tile rows each of gate and up");
static_assert(Tile::S8 && TileD::S8, "the fused FFN runs on the int8 path");

// 1: a probe build for benches/bench_ffn_chain.py: ffn_mma_1 / _2 take one more parameter, `probe`
// (u64*, null: none), and thread 0 of each block stamps points 0..15 into it (FFN_STAMP: common.cuh's
// probe_stamp; points a block does not reach stay as they were). Never compiled by the backend.
#ifndef FFN_PROBE
#define FFN_PROBE 0
#endif
#if FFN_PROBE
#define FFN_PROBE_PARAM , u64* __restrict__ probe
#define FFN_PROBE_ARG , probe
#define FFN_STAMP(point) probe_stamp(probe, point)
#else
#define FFN_PROBE_PARAM
#define FFN_PROBE_ARG
#define FFN_STAMP(point)
#endif

__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_arrive_relaxed() { asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory"); }
__device__ __forceinline__ u32 cluster_map(u32 local, u32 rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    return remote;
}
// The 0.5B's 19 slices' sums in one round trip (sum_splits_batched).
constexpr u32 FFN_SUM_BATCH = 24;

// gate/up/down: repacked tiles (gate and up: Tile, n_inter x n_cols; down: TileD, n_cols x
// n_inter); x: NT residual rows of n_cols floats, which get the block's output added; norm_w and
// eps: the RMSNorm before gate/up; partials: n_inter / 256 x NT x n_cols floats; counters:
// FFN_RANKS words, zero between launches. Grid: n_inter / 256 clusters of FFN_RANKS blocks of 256
// threads. With n_cols <= FFN_MAX_COLS, stage_x_s8_normed's jobs (NT x ceil(n_cols / 256)) fit the
// block's warps at two rows too.
template <int NT>
__device__ __forceinline__ void ffn_mma(const u8* __restrict__ gate, const u8* __restrict__ up, const u8* __restrict__ down, u32 n_cols,
                                        u32 n_inter, float* __restrict__ x, const float* __restrict__ norm_w, float eps,
                                        float* __restrict__ partials, u32* __restrict__ counters FFN_PROBE_PARAM) {
    FFN_STAMP(0);
    static_assert(NT == 1 || NT == 2, "one or two rows: three int8 parts of each in one mma column group");
    constexpr int NG = 1, PARTS = 3;
    constexpr int XSTRIDE_B = FFN_PHASE + 32, XSTRIDE_D = FFN_SLICE + 32;
    __shared__ __align__(16) u8 xq[PARTS * NT * XSTRIDE_B];
    __shared__ __align__(16) int xsum[FFN_PHASE / 32][NG][8];
    __shared__ __align__(16) float xscale[FFN_PHASE / 256][NG][8];
    __shared__ __align__(16) u8 hq[PARTS * NT * XSTRIDE_D];
    __shared__ __align__(16) int hsum[FFN_SLICE / 32][NG][8];
    __shared__ __align__(16) float hscale[1][NG][8];
    __shared__ __align__(16) float red[4][32][4];
    __shared__ __align__(16) float gu[NT][2 * FFN_H_PER_RANK];
    // The cluster's h, rank by rank, each rank's pushed here by its block; h_bar counts the bytes.
    __shared__ __align__(16) float h_all[NT][FFN_RANKS][FFN_H_PER_RANK];
    __shared__ __align__(8) u64 h_bar;
    __shared__ float inv_rms[NT];
    __shared__ u32 s_last;
    static_assert(xsum_bytes_needed<NG>(FFN_PHASE / 256) <= (int)sizeof(xsum), "x's sums as bytes fit the array");
    static_assert(xsum_bytes_needed<NG>(1) <= (int)sizeof(hsum), "h's sums as bytes fit the array");

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 rank = blockIdx.x % FFN_RANKS, slice = blockIdx.x / FFN_RANKS, n_slices = gridDim.x / FFN_RANKS;
    const u32 k_tiles = n_cols / Tile::TILE_COLS, kd_tiles = n_inter / TileD::TILE_COLS;
    const u32 md_tiles = n_cols / RP_TILE_ROWS, down_tile_rows = (md_tiles + FFN_RANKS - 1) / FFN_RANKS;  // a rank's

    // This warp's gate/up tile row (0, 1: gate; 2, 3: up) and its column tiles wk, wk + 2, ...
    const u32 wm = (u32)warp & 3u, wk = (u32)warp >> 2;
    const u32 gu_row = slice * (FFN_SLICE / RP_TILE_ROWS) + rank * 2 + (wm & 1u);
    const u8* gu_tiles = (wm < 2 ? gate : up) + (u64)gu_row * k_tiles * Tile::TILE_BYTES;
    Tile w[FFN_GU_TILES];
    // This warp's gate/up tiles [from, to): columns wk, wk + 2, ...
    const auto load_gu = [&](int from, int to) {
#pragma unroll
        for (int i = from; i < to; i++) {
            const u32 kt = wk + 2 * i;
            if (kt < k_tiles) w[i].load(gu_tiles + (u64)kt * Tile::TILE_BYTES, lane, false);
        }
    };
    load_gu(0, FFN_GU_EARLY_TILES);
    // This warp's ffn_down tile row (if any) and the slice's tiles in it.
    const u32 md = rank * down_tile_rows + (u32)warp;
    const bool down_warp = (u32)warp < down_tile_rows && md < md_tiles;
    TileD wd[FFN_DOWN_TILES];
    const auto load_down = [&]() {
        if (down_warp) {
#pragma unroll
            for (int i = 0; i < FFN_DOWN_TILES; i++)
                wd[i].load(down + ((u64)md * kd_tiles + slice * FFN_DOWN_TILES + i) * TileD::TILE_BYTES, lane, false);
        }
    };
    if (FFN_EARLY_DOWN) load_down();
    constexpr bool EARLY_NORM_W = MMA_EARLY_NORM_W && Tile::TILE_COLS < 256;
    const u32 len = k_tiles * Tile::TILE_COLS;
    const EarlyNormW early_w = early_norm_w<NT>(norm_w, EARLY_NORM_W ? (u32)NT : 0u, n_cols, len);
    // The sums and scales of mma columns no x row fills stay zero.
    for (int i = threadIdx.x; i < (FFN_PHASE / 32) * NG * 8; i += blockDim.x) (&xsum[0][0][0])[i] = 0;
    for (int i = threadIdx.x; i < (FFN_PHASE / 256) * NG * 8; i += blockDim.x) (&xscale[0][0][0])[i] = 0.0f;
    for (int i = threadIdx.x; i < (FFN_SLICE / 32) * NG * 8; i += blockDim.x) (&hsum[0][0][0])[i] = 0;
    if (threadIdx.x < NG * 8) (&hscale[0][0][0])[threadIdx.x] = 0.0f;
    // This lane's B column: x row g / 3's part g % 3 for g < 3 NT (see matvec_mma); other lanes read
    // row 0's part 0, whose products the zero scales of their columns cancel.
    const int col = g < PARTS * NT ? (g / PARTS) * PARTS + g % PARTS : -1;
    const int b_off_x[NG] = {col >= 0 ? col * XSTRIDE_B + 8 * t : 8 * t};
    const int b_off_h[NG] = {col >= 0 ? col * XSTRIDE_D + 8 * t : 8 * t};
    const u32 h_bar_local = (u32)__cvta_generic_to_shared(&h_bar);
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(h_bar_local) : "memory");
        asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(h_bar_local), "r"((u32)(FFN_RANKS * NT * FFN_H_PER_RANK * 4))
                     : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // Every peer's mbarrier is ready before any block pushes to it.
    cluster_arrive_relaxed();
    cluster_wait();
    __syncthreads();
    FFN_STAMP(1);

    dependent_wait();
    FFN_STAMP(2);
    // The rest of the gate/up tiles (FFN_GU_EARLY_TILES), their latency overlapping the staging of x.
    load_gu(FFN_GU_EARLY_TILES, FFN_GU_TILES);
    stage_x_s8_normed<NT, NG, XSTRIDE_B, PARTS, EARLY_NORM_W, Tile>(x, norm_w, early_w, eps, NT, n_cols, len, xq, xsum, xscale, inv_rms);
    __syncthreads();
    FFN_STAMP(3);
    float acc[NG][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int i = 0; i < FFN_GU_TILES; i++) {
        const u32 kt = wk + 2 * i;
        if (kt < k_tiles) tile_products_s8_of_type<NG, Tile>(w[i], xq, xsum, xscale, kt, b_off_x, t, acc);
    }
    FFN_STAMP(4);
    if (!FFN_EARLY_DOWN) load_down();
    // The two warps of a tile row add their sums in order (as the planned kernel's warps_k = 2).
    if (wk == 1) {
#pragma unroll
        for (int i = 0; i < 4; i++) red[wm][lane][i] = acc[0][i];
    }
    __syncthreads();
    if (wk == 0) {
#pragma unroll
        for (int i = 0; i < 4; i++) acc[0][i] += red[wm][lane][i];
#pragma unroll
        for (int u = 0; u < NT; u++) {
            float v0, v1;
            row_sums(acc[0], t, u, v0, v1);
            if (t == 0) {
                gu[u][wm * RP_TILE_ROWS + g] = v0 + 0.0f;  // + the absent bias, as the planned kernel writes it
                gu[u][wm * RP_TILE_ROWS + g + 8] = v1 + 0.0f;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < NT * FFN_H_PER_RANK) {
        const int u = threadIdx.x / FFN_H_PER_RANK, i = threadIdx.x % FFN_H_PER_RANK;
        const float hv = silu_times(gu[u][i], gu[u][FFN_H_PER_RANK + i]);
        const u32 dst = (u32)__cvta_generic_to_shared(&h_all[u][rank][i]);
#pragma unroll
        for (u32 p = 0; p < FFN_RANKS; p++)
            asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(cluster_map(dst, p)),
                         "r"(__float_as_uint(hv)), "r"(cluster_map(h_bar_local, p))
                         : "memory");
    }
    FFN_STAMP(5);
    if (warp < NT) {
        u32 done = 0;
        while (!done)
            asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], 0;\n selp.u32 %0, 1, 0, p;\n}"
                         : "=r"(done) : "r"(h_bar_local) : "memory");
        FFN_STAMP(6);
        float r[8];
        const float4 a4 = *reinterpret_cast<const float4*>(&h_all[warp][g][4 * t]);
        const float4 b4 = *reinterpret_cast<const float4*>(&h_all[warp][g][16 + 4 * t]);
        r[0] = a4.x, r[1] = b4.x, r[2] = a4.y, r[3] = b4.y, r[4] = a4.z, r[5] = b4.z, r[6] = a4.w, r[7] = b4.w;
        quantize_job_s8<NG, XSTRIDE_D, PARTS, TileD>(r, warp, 0, hq, hsum, hscale);
    }
    __syncthreads();
    // Pushes land in live blocks only: a block goes on only once all its bytes are in, and none
    // exits before every block of the cluster has had all of its own (this arrive, met at the end).
    cluster_arrive_relaxed();
    FFN_STAMP(7);
    if (down_warp) {
        float dacc[NG][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int i = 0; i < FFN_DOWN_TILES; i++) tile_products_s8_of_type<NG, TileD>(wd[i], hq, hsum, hscale, i, b_off_h, t, dacc);
#pragma unroll
        for (int u = 0; u < NT; u++) {
            float v0, v1;
            row_sums(dacc[0], t, u, v0, v1);
            if (t == 0) {
                float* dst = partials + ((u64)slice * NT + u) * n_cols + md * RP_TILE_ROWS;
                dst[g] = v0;
                dst[g + 8] = v1;
            }
        }
    }
    FFN_STAMP(8);
    cluster_wait();  // every block of the cluster has received every h
    FFN_STAMP(9);
    // The last block of this rank's rows adds the slices' sums to the residual, in slice order. No
    // block still stages x then: each slice's block of this rank has received its cluster's every h,
    // which a block pushes only after staging.
    if (!split_k_last_acq_rel(&counters[rank], n_slices, s_last)) return;
    FFN_STAMP(10);
    const u32 row_begin = rank * down_tile_rows * RP_TILE_ROWS, row_end = min(row_begin + down_tile_rows * RP_TILE_ROWS, n_cols);
    const u32 nr = row_end > row_begin ? row_end - row_begin : 0;
    for (u32 i = threadIdx.x; i < NT * nr; i += blockDim.x) {
        const u32 u = i / nr, row = row_begin + i % nr;
        put(x + (u64)u * n_cols + row, sum_splits_batched<FFN_SUM_BATCH>(partials + (u64)u * n_cols + row, (u64)NT * n_cols, n_slices) + 0.0f, 1);
    }
    if (threadIdx.x == 0) counters[rank] = 0;  // ready for the next launch
#if FFN_PROBE
    __syncthreads();
    FFN_STAMP(11);
#endif
}

#define FFN_MMA_KERNEL(nt)                                                                                                    \
    extern "C" __global__ void __cluster_dims__(FFN_RANKS, 1, 1) __launch_bounds__(32 * MMA_MAX_WARPS, MMA_MIN_BLOCKS)        \
        ffn_mma_##nt(const u8* __restrict__ gate, const u8* __restrict__ up, const u8* __restrict__ down, u32 n_cols, u32 n_inter, \
                     float* __restrict__ x, const float* __restrict__ norm_w, float eps, float* __restrict__ partials,         \
                     u32* __restrict__ counters FFN_PROBE_PARAM) {                                                           \
        MMA_PROBE_SET(nullptr);                                                                                               \
        ffn_mma<nt>(gate, up, down, n_cols, n_inter, x, norm_w, eps, partials, counters FFN_PROBE_ARG);                    \
    }
FFN_MMA_KERNEL(1)
FFN_MMA_KERNEL(2)
#endif  // sm_90
#endif  // MMA_FFN
