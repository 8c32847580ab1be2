// Repacked quantized matrix times many rows of x (batches of 9 or more sequences, prompt chunks),
// on the tensor cores: y[n][r] = out_scale * sum_c W[r][c] * x[n][c] (+ bias[r]) (+ y[n][r] when
// accumulating: the residual connection), x given as f16 (the buffer that cuBLAS's f16 path
// reads, written by rms_norm_f16, swiglu_f16 or the attention, scaled by X_F16_SCALE, which
// out_scale undoes), W in the tiles of repacked.cuh (compiled once per type, -DQTYPE=<snake>).
//
// Why: the cuBLAS path multiplies an f16 copy of each weight, 2 bytes a weight read at every
// step (Q4_K is 0.56) and kept in device memory beside the quantized one; here the tiles are read
// as they are, decoded in registers, once per block of 32 x rows.
//
// Exactness. The codes are small integers, exact in f16; the tensor core forms each code * x
// product exactly and sums in float32. The scale of each scale block (the CPU's float32
// product of the file's fields) multiplies the block's sums afterwards in float32. Q4_K folds
// its integer scales into the codes instead and multiplies its mins with 32-column sums of x
// (see tile_products_folded): d sum(sc q x) - dmin sum(m sum(x)) is sum((d sc q - dmin m) x),
// the CPU's weights times x summed in another order. x itself is rounded to f16 (11 significand
// bits), as for cuBLAS; the weights are exact (cuBLAS's copies round them to f16). (Q6_K cannot
// fold exactly, sc * q reaching 4096; folded with f16 rounding above 2048 it ran no faster: H200,
// 2026-12-03, 7B shapes at 64 rows, gate/up 81.2 against 80.7 us, down 82.7 against 79.2.)
//
// Work split. A block is MMQ_WARPS warps, one 16-row tile row each (blockIdx.y: the block row),
// and MMQ_X_ROWS rows of x (blockIdx.x, the fastest, so that the blocks reading the same tiles
// run together and all but the first find them in L2): a warp's mma columns are 8 rows of x,
// MMQ_GROUPS column groups. (64 rows a block halves the decoding per product, but took 170-190
// registers a thread, one block an SM, and ran slower: see MMQ_X_ROWS in matmul_mma.rs.) The x
// rows are staged in shared memory, a phase of MMQ_PHASE columns at a time (cp.async, the next
// phase's copies in flight during this one's math, two buffers), and shared by the warps; each
// warp loads its own tiles from global memory into registers (the next tile's loads go out
// before the current one's math). blockIdx.z splits the
// columns (split-K) when the matrix has too few block rows to fill the GPU: each split writes its
// partial sums, and the last block of a (block row, x block) to finish adds them in split order
// (split_k_last, sum_splits: a counter each, reset by that block), so results do not depend on
// timing.
#include "repacked.cuh"

#ifndef QTYPE
#error "matmul_mma.cu is compiled with -DQTYPE=<q5_0|q8_0|q4_k|q6_k>"
#endif
typedef FERRITE_CAT(Rp_, QTYPE) Tile;

#define MMQ_WARPS 8
#ifndef MMQ_MIN_BLOCKS
#define MMQ_MIN_BLOCKS 2
#endif
#ifndef MMQ_X_ROWS
#define MMQ_X_ROWS 32
#endif
#define MMQ_GROUPS (MMQ_X_ROWS / 8)
#define MMQ_PHASE 256
// f16 per staged row: rows 32 bytes apart in banks, so a warp's B loads (8 rows x 32 bytes)
// take two wavefronts.
#define MMQ_XSTRIDE (MMQ_PHASE + 16)

constexpr int PHASE_TILES = MMQ_PHASE / Tile::TILE_COLS;
constexpr int PHASE_SUBS = MMQ_PHASE / 32;  // 32-column sums of x per phase (Q4_K's mins)
static_assert(MMQ_PHASE % Tile::TILE_COLS == 0, "a phase holds whole tiles");
static_assert(Tile::SCALE_CHUNKS * 16 <= 32, "a scale block within one 32-column sum");

__device__ __forceinline__ void mma_f16(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes from global memory to shared memory, zeros where src_bytes is 0.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, u32 src_bytes) {
    u32 s;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(src), "r"(src_bytes) : "memory");
}

// Queues the cp.async copies of x's rows n0 .. n0 + rows_here, columns col0 .. col0 + MMQ_PHASE
// into xs (rows past rows_here and columns past n_cols, a whole 8-column chunk since n_cols is
// a multiple of 32, as zeros).
__device__ __forceinline__ void stage_x(const u16* __restrict__ x, u16* xs, u32 n0, u32 rows_here, u32 n_cols, u32 col0) {
    for (int i = threadIdx.x; i < MMQ_X_ROWS * (MMQ_PHASE / 8); i += blockDim.x) {
        const int n = i / (MMQ_PHASE / 8), ch = i % (MMQ_PHASE / 8);
        const u32 col = col0 + 8 * ch;
        const bool in = (u32)n < rows_here && col < n_cols;
        const u16* src = in ? x + (u64)(n0 + n) * n_cols + col : x;
        cp_async16(&xs[n * MMQ_XSTRIDE + 8 * ch], src, in ? 16u : 0u);
    }
}

// acc += this tile's products with the staged x (a type without mins): xt is the tile's first
// column in staged row 0. Every column group is multiplied, rows of x past n_x included
// (zeros): a branch around an mma costs warp synchronizations.
__device__ __forceinline__ void tile_products(const Tile& w, const u16* xt, int g, int t, float acc[MMQ_GROUPS][4]) {
#pragma unroll
    for (int sb = 0; sb < Tile::CHUNKS / Tile::SCALE_CHUNKS; sb++) {
        float c[MMQ_GROUPS][4];
#pragma unroll
        for (int j = 0; j < MMQ_GROUPS; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
        for (int cc = 0; cc < Tile::SCALE_CHUNKS; cc++) {
            const int ch = sb * Tile::SCALE_CHUNKS + cc;
            u32 a[4];
            w.frag_f16(ch, a);
#pragma unroll
            for (int j = 0; j < MMQ_GROUPS; j++) {
                const uint2 b = *reinterpret_cast<const uint2*>(xt + (8 * j + g) * MMQ_XSTRIDE + 16 * ch + 4 * t);
                mma_f16(c[j], a, b.x, b.y);
            }
        }
        float s[2], m[2];
        w.scale(sb, s, m);
#pragma unroll
        for (int j = 0; j < MMQ_GROUPS; j++) {
            acc[j][0] = fmaf(s[0], c[j][0], acc[j][0]);
            acc[j][1] = fmaf(s[0], c[j][1], acc[j][1]);
            acc[j][2] = fmaf(s[1], c[j][2], acc[j][2]);
            acc[j][3] = fmaf(s[1], c[j][3], acc[j][3]);
        }
    }
}

// The same for Q4_K, with its integer sub-block scales folded into the codes: A = sc * code
// (exact in f16), so that one set of sums runs over the whole tile; the mins are one more mma,
// of A = m per sub-block against B = x's 32-column sums as f16 [hi, lo] pairs (22 significand
// bits; xsum_b is the tile's 16 of them a row). Then acc += d * sums - dmin * mins, the CPU's
// (d sc) q - (dmin m) summed in another order: a quarter of the per-sub-block work.
template <class T>
__device__ __forceinline__ void tile_products_folded(const T& w, const u16* xt, const u16 (*xsum_b)[16], int g, int t,
                                                     float acc[MMQ_GROUPS][4]) {
    float c[MMQ_GROUPS][4];
#pragma unroll
    for (int j = 0; j < MMQ_GROUPS; j++) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
    for (int sb = 0; sb < T::CHUNKS / 2; sb++) {
        u32 sc2[2], neg2[2];
        w.scale_pairs_f16(sb, sc2, neg2);
#pragma unroll
        for (int cc = 0; cc < 2; cc++) {
            const int ch = 2 * sb + cc;
            u32 a[4];
            w.frag_f16_scaled(ch, sc2, neg2, a);
#pragma unroll
            for (int j = 0; j < MMQ_GROUPS; j++) {
                const uint2 b = *reinterpret_cast<const uint2*>(xt + (8 * j + g) * MMQ_XSTRIDE + 16 * ch + 4 * t);
                mma_f16(c[j], a, b.x, b.y);
            }
        }
    }
    float d[2], dmin[2];
    w.super_scales(d, dmin);
    u32 am[4];
    w.mins_frag_f16(t, am);
    // The sums' registers hold the mins' products next.
#pragma unroll
    for (int j = 0; j < MMQ_GROUPS; j++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            acc[j][i] = fmaf(d[i >> 1], c[j][i], acc[j][i]);
            c[j][i] = 0.0f;
        }
        const uint2 b = *reinterpret_cast<const uint2*>(&xsum_b[8 * j + g][4 * t]);
        mma_f16(c[j], am, b.x, b.y);
#pragma unroll
        for (int i = 0; i < 4; i++) acc[j][i] = fmaf(-dmin[i >> 1], c[j][i], acc[j][i]);
    }
}

extern "C" __global__ void __launch_bounds__(32 * MMQ_WARPS, MMQ_MIN_BLOCKS)
    matmul_mma(const u8* __restrict__ tiles, u32 m_tiles, u32 n_rows, u32 k_tiles, u32 n_cols, const u16* __restrict__ x,
               u32 n_x, const float* __restrict__ bias, float* __restrict__ y, float out_scale, u32 accumulate,
               float* __restrict__ partials, u32* __restrict__ counters, u32 k_tiles_per_split) {
    __shared__ __align__(16) u16 xs[2][MMQ_X_ROWS * MMQ_XSTRIDE];
    // Q4_K: the phase's 32-column sums of x, split in f16 [hi, lo] pairs, 16 f16 a row and tile:
    // the B operand of the mins' mma.
    __shared__ __align__(16) u16 xsums[Tile::HAS_MIN ? PHASE_TILES : 1][MMQ_X_ROWS][16];
    __shared__ u32 s_last;

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 mt = blockIdx.y * MMQ_WARPS + warp;
    const bool active = mt < m_tiles;
    const u32 n0 = blockIdx.x * MMQ_X_ROWS;
    const u32 rows_here = min(n_x - n0, (u32)MMQ_X_ROWS);
    const u32 split = blockIdx.z, n_splits = gridDim.z;
    const u32 kt_begin = split * k_tiles_per_split;
    const u32 kt_end = min(kt_begin + k_tiles_per_split, k_tiles);
    const u8* tile_row = tiles + (u64)mt * k_tiles * Tile::TILE_BYTES;

    // The first tile's loads go out before x is staged (weights are constant).
    Tile cur;
    if (active && kt_begin < kt_end) cur.load(tile_row + (u64)kt_begin * Tile::TILE_BYTES, lane);
    dependent_wait();

    float acc[MMQ_GROUPS][4];
#pragma unroll
    for (int j = 0; j < MMQ_GROUPS; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

    // Phase i's x is staged into buffer i % 2 while phase i - 1's is multiplied.
    stage_x(x, xs[0], n0, rows_here, n_cols, kt_begin * Tile::TILE_COLS);
    u32 buf = 0;
    for (u32 p = kt_begin; p < kt_end; p += PHASE_TILES, buf ^= 1) {
        const u32 p_end = min(p + PHASE_TILES, kt_end);
        asm volatile("cp.async.wait_all;" ::: "memory");
        // This phase's x has landed, and every warp is done with the other buffer (and xsum).
        __syncthreads();
        if (p_end < kt_end) stage_x(x, xs[buf ^ 1], n0, rows_here, n_cols, p_end * Tile::TILE_COLS);
        if constexpr (Tile::HAS_MIN) {
            // Thread i sums sub-block i % PHASE_SUBS of row i / PHASE_SUBS: a warp reads whole
            // rows, without bank conflicts.
            for (int i = threadIdx.x; i < PHASE_SUBS * MMQ_X_ROWS; i += blockDim.x) {
                const int s = i % PHASE_SUBS, n = i / PHASE_SUBS;
                const u16* v = &xs[buf][n * MMQ_XSTRIDE + 32 * s];
                float sum = 0.0f;
#pragma unroll
                for (int k = 0; k < 32; k += 8) {
                    const uint4 w = *reinterpret_cast<const uint4*>(v + k);
                    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        sum += rp_half(ws[e] & 0xffffu);
                        sum += rp_half(ws[e] >> 16);
                    }
                }
                // Saturated as x itself is (a finite sum beyond f16's range would give hi = inf
                // and lo = -inf, NaN for the whole row): only sums of x near 2^24 reach it.
                const u32 hi = f16_scaled_bits(sum, 1.0f);
                xsums[s / 8][n][2 * (s % 8)] = (u16)hi;
                xsums[s / 8][n][2 * (s % 8) + 1] = f16_scaled_bits(__fsub_rn(sum, rp_half(hi)), 1.0f);
            }
            __syncthreads();
        }
        if (!active) continue;
        for (u32 kt = p; kt < p_end; kt++) {
            const bool more = kt + 1 < kt_end;
            Tile nxt;
            if (more) nxt.load(tile_row + (u64)(kt + 1) * Tile::TILE_BYTES, lane);
            if constexpr (Tile::HAS_MIN) {
                tile_products_folded(cur, xs[buf] + (kt - p) * Tile::TILE_COLS, xsums[kt - p], g, t, acc);
            } else {
                tile_products(cur, xs[buf] + (kt - p) * Tile::TILE_COLS, g, t, acc);
            }
            if (more) cur = nxt;
        }
    }

    // Lane (g, t) holds, for weight rows g and g + 8 of its tile row, x rows 8j + 2t and
    // 8j + 2t + 1 of each group j.
    const u32 r0 = mt * RP_TILE_ROWS + g, r1 = r0 + 8;
    const u32 rows_pad = gridDim.y * MMQ_WARPS * RP_TILE_ROWS, n_pad = gridDim.x * MMQ_X_ROWS;
#pragma unroll
    for (int j = 0; j < MMQ_GROUPS; j++) {
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const u32 nl = 8 * j + 2 * t + u, n = n0 + nl;
            if (!active || nl >= rows_here) continue;
            const float v0 = acc[j][u] * out_scale, v1 = acc[j][2 + u] * out_scale;
            if (n_splits == 1) {
                if (r0 < n_rows) put(y + (u64)n * n_rows + r0, v0 + (bias ? bias[r0] : 0.0f), accumulate);
                if (r1 < n_rows) put(y + (u64)n * n_rows + r1, v1 + (bias ? bias[r1] : 0.0f), accumulate);
            } else {
                float* dst = partials + ((u64)split * n_pad + n) * rows_pad;
                dst[r0] = v0;
                dst[r1] = v1;
            }
        }
    }
    if (n_splits == 1) return;

    // Split-K: the last block of this (block row, x block) to finish adds the splits in order.
    const u32 counter = blockIdx.y * gridDim.x + blockIdx.x;
    if (!split_k_last(&counters[counter], n_splits, s_last)) return;
    const u32 row_begin = blockIdx.y * MMQ_WARPS * RP_TILE_ROWS;
    const u32 row_end = min(row_begin + MMQ_WARPS * RP_TILE_ROWS, n_rows);
    const u32 nr = row_end > row_begin ? row_end - row_begin : 0;
    const u64 stride = (u64)n_pad * rows_pad;
    for (u32 i = threadIdx.x; i < rows_here * nr; i += blockDim.x) {
        const u32 n = n0 + i / nr, row = row_begin + i % nr;
        const float* src = partials + (u64)n * rows_pad + row;
        put(y + (u64)n * n_rows + row, sum_splits(src, stride, n_splits) + (bias ? bias[row] : 0.0f), accumulate);
    }
    if (threadIdx.x == 0) counters[counter] = 0;  // ready for the next launch
}
