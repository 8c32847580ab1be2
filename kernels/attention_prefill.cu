// Causal grouped-query attention of prompt chunks on the tensor cores (flash attention), over the
// paged KV cache of attention.cu (whose kv_append / rope_store have written the chunk's own keys
// and values before this runs). Compiled per head dim (-DATTN_HEAD_DIM=N, a multiple of 16 up to
// 128) and cache element type (-DATTN_KV_F16=1: f16, see common.cuh), beside attention.cu's
// kernels, which keep decode steps (one query row per sequence).
//
// Why: attention.cu gives each query row its own block, which reads every key of its context and
// forms the scores one float32 FMA at a time. A prompt of n tokens then reads n^2 / 2 key rows
// and its work grows as n^2 on the CUDA cores: 4,096 tokens spent most of their time there. Here
// a block takes 16 consecutive query rows of one sequence (a tile) for every query head of one KV
// head (one warp a head, so the heads of a group share each key and value load), streams the keys
// in tiles of PF_KEYS through shared memory, and multiplies on the tensor cores
// (mma.m16n8k16, f16 in, float32 sums) with the online softmax of flash attention.
//
// Precision. Each operand is split into two f16 parts, hi = f16(x) and lo = f16(x - hi) (22
// significand bits together), and a product takes three mmas, hi*hi + hi*lo + lo*hi (the lo*lo
// term is below 2^-22 of it): scores and outputs are float32-class, not f16-class, which matters
// for models whose queries and keys are large (Qwen2's key biases give scores in the hundreds,
// where one f16 rounding would move a softmax weight by a few percent). Values past f16's range
// (|x| > 65504) in q, k or v would not survive the split: no model of this family comes near
// (activations that large appear in the residual stream, not in q, k or v).
//
// The tiles: `tiles[2 i]` is the batch index of tile i's first token, `tiles[2 i + 1]` its rows
// (1..16), tokens of one sequence at consecutive positions (upload_batch builds them, longest
// contexts first so that the last wave is short). Row r of a tile sees keys 0 ..= positions[first]
// + r through the first token's block table.
#include "common.cuh"

#ifndef ATTN_HEAD_DIM
#error "attention_prefill.cu is compiled with -DATTN_HEAD_DIM=<a multiple of 16, at most 128>"
#endif
#define HD ATTN_HEAD_DIM
static_assert(HD % 16 == 0 && HD <= 128, "head dims: multiples of 16 up to 128");

// Query rows per tile (the mma's M) and most warps (query heads) per block.
#define PF_QROWS 16
#define PF_MAX_WARPS 8
// Keys per shared-memory tile: two f16 parts of K and of V in 48 KiB of static shared memory.
#define PF_KEYS (HD <= 64 ? 64 : 32)
// Halves per staged key row: 16 bytes of padding put the 8 rows an mma fragment reads in
// different banks.
#define PF_STRIDE (HD + 8)

__device__ __forceinline__ void mma_f16(float c[4], const u32 a[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// (x0, x1) as f16x2 (x0 in the low half), round to nearest.
__device__ __forceinline__ u32 f16x2_rn(float x0, float x1) {
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(x1), "f"(x0));
    return d;
}
__device__ __forceinline__ float2 f16x2_to_float2(u32 v) {
    float a, b;
    asm("{ .reg .f16 l, h; mov.b32 {l, h}, %2; cvt.f32.f16 %0, l; cvt.f32.f16 %1, h; }" : "=f"(a), "=f"(b) : "r"(v));
    return make_float2(a, b);
}
// The two f16 parts of (x0, x1): hi = f16(x), lo = f16(x - hi) (the subtraction is exact).
__device__ __forceinline__ void split_f16x2(float x0, float x1, u32& hi, u32& lo) {
    hi = f16x2_rn(x0, x1);
    const float2 h = f16x2_to_float2(hi);
    lo = f16x2_rn(x0 - h.x, x1 - h.y);
}

// Four b16 8x8 matrices from shared memory, transposed (the B fragments of two n-tiles).
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const u16* p) {
    const u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// One block: tile blockIdx.x, KV head blockIdx.y / chunks and its query heads heads_per_block *
// (blockIdx.y % chunks) .. (one warp each; warps past the group only help stage the keys).
extern "C" __global__ void __launch_bounds__(32 * PF_MAX_WARPS)
    attention_prefill(const float* __restrict__ q, const kv_t* __restrict__ k_cache, const kv_t* __restrict__ v_cache,
                      const u32* __restrict__ positions, const u32* __restrict__ table_offset,
                      const u32* __restrict__ block_tables, u32 block_tokens, const u32* __restrict__ tiles,
                      u32 n_heads, u32 n_kv_heads, u32 heads_per_block, float scale, float* __restrict__ out,
                      u16* __restrict__ out_f16, float f16_scale) {
    constexpr int KB = PF_KEYS, S = PF_STRIDE;
    constexpr int KSTEPS = HD / 16;  // 16-dim steps of a score
    constexpr int NKT = KB / 8;      // 8-key column tiles of the scores
    constexpr int NDT = HD / 8;      // 8-dim column tiles of the output
#if ATTN_KV_F16
    // An f16 cache's elements are their own hi parts; their lo parts are zero and left out.
    __shared__ __align__(16) u16 k_hi[KB * S], v_hi[KB * S];
#else
    __shared__ __align__(16) u16 k_hi[KB * S], k_lo[KB * S], v_hi[KB * S], v_lo[KB * S];
#endif
    __shared__ u32 slot_of[KB];

    const u32 lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const u32 group = n_heads / n_kv_heads;
    const u32 chunks = gridDim.y / n_kv_heads;  // blocks per KV head
    const u32 kvh = blockIdx.y / chunks, head_in_group = (blockIdx.y % chunks) * heads_per_block + warp;
    const bool active = head_in_group < group;
    const u32 h = kvh * group + head_in_group;
    const u32 q_width = n_heads * HD, kv_width = n_kv_heads * HD;

    // The batch description is the step's own upload (see dependent_wait); the rest may be an
    // earlier kernel's output.
    const u32 t0 = tiles[2 * blockIdx.x], rows = tiles[2 * blockIdx.x + 1];
    const u32 pos0 = positions[t0];
    const u32* table = block_tables + table_offset[t0];
    const u32 n_keys = pos0 + rows;  // the last row's context
    const u32 bt_shift = __ffs(block_tokens) - 1, bt_mask = block_tokens - 1;
    dependent_wait();

    // This warp's queries (rows g and g + 8 of the tile) as A fragments, times the softmax scale,
    // in two f16 parts; rows past the tile are zeros (their results are never written).
    u32 qa_hi[KSTEPS][4], qa_lo[KSTEPS][4];
    {
        const bool in0 = active && g < rows, in1 = active && g + 8 < rows;
        const float* q0 = q + (u64)(t0 + g) * q_width + (u64)h * HD + 2 * t;
        const float* q1 = q0 + 8 * (u64)q_width;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ks++) {
            const float2 zero = make_float2(0.0f, 0.0f);
            const float2 a = in0 ? *reinterpret_cast<const float2*>(q0 + 16 * ks) : zero;
            const float2 b = in1 ? *reinterpret_cast<const float2*>(q1 + 16 * ks) : zero;
            const float2 c = in0 ? *reinterpret_cast<const float2*>(q0 + 16 * ks + 8) : zero;
            const float2 d = in1 ? *reinterpret_cast<const float2*>(q1 + 16 * ks + 8) : zero;
            split_f16x2(a.x * scale, a.y * scale, qa_hi[ks][0], qa_lo[ks][0]);
            split_f16x2(b.x * scale, b.y * scale, qa_hi[ks][1], qa_lo[ks][1]);
            split_f16x2(c.x * scale, c.y * scale, qa_hi[ks][2], qa_lo[ks][2]);
            split_f16x2(d.x * scale, d.y * scale, qa_hi[ks][3], qa_lo[ks][3]);
        }
    }

    // Running softmax of rows g and g + 8: max, this lane's part of the sum, output columns
    // 8 dt + 2t, +1 (o[dt][0..1] row g, o[dt][2..3] row g + 8).
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;
    float o[NDT][4];
#pragma unroll
    for (int dt = 0; dt < NDT; dt++) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;

    const kv_t* kc = k_cache + kvh * HD;
    const kv_t* vc = v_cache + kvh * HD;
    for (u32 kb0 = 0; kb0 < n_keys; kb0 += KB) {
        __syncthreads();  // every warp is done with the previous tile
        for (u32 i = threadIdx.x; i < KB; i += blockDim.x) {
            // Keys past the context read its last key (a valid slot); the mask drops them.
            const u32 key = min(kb0 + i, n_keys - 1);
            slot_of[i] = table[key >> bt_shift] * block_tokens + (key & bt_mask);
        }
        __syncthreads();
        // The tile's keys and values, split, four floats a thread at a time (consecutive threads
        // along a key row: coalesced loads).
        for (u32 i = threadIdx.x; i < KB * HD / 4; i += blockDim.x) {
            const u32 key = i / (HD / 4), d4 = i % (HD / 4);
            const u64 at = (u64)slot_of[key] * kv_width + 4 * d4;
#if ATTN_KV_F16
            *reinterpret_cast<uint2*>(&k_hi[key * S + 4 * d4]) = *reinterpret_cast<const uint2*>(kc + at);
            *reinterpret_cast<uint2*>(&v_hi[key * S + 4 * d4]) = *reinterpret_cast<const uint2*>(vc + at);
#else
            const float4 kk = kv_load4(kc + at, 0);
            const float4 vv = kv_load4(vc + at, 0);
            uint2 hi, lo;
            split_f16x2(kk.x, kk.y, hi.x, lo.x);
            split_f16x2(kk.z, kk.w, hi.y, lo.y);
            *reinterpret_cast<uint2*>(&k_hi[key * S + 4 * d4]) = hi;
            *reinterpret_cast<uint2*>(&k_lo[key * S + 4 * d4]) = lo;
            split_f16x2(vv.x, vv.y, hi.x, lo.x);
            split_f16x2(vv.z, vv.w, hi.y, lo.y);
            *reinterpret_cast<uint2*>(&v_hi[key * S + 4 * d4]) = hi;
            *reinterpret_cast<uint2*>(&v_lo[key * S + 4 * d4]) = lo;
#endif
        }
        __syncthreads();
        if (!active) continue;

        // Scores of rows g, g + 8 against keys kb0 + 8 j + 2t, +1.
        float s[NKT][4];
#pragma unroll
        for (int j = 0; j < NKT; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const u16* kh = k_hi + (8 * j + g) * S + 2 * t;
#if !ATTN_KV_F16
            const u16* kl = k_lo + (8 * j + g) * S + 2 * t;
#endif
#pragma unroll
            for (int ks = 0; ks < KSTEPS; ks++) {
                const u32 bh0 = *reinterpret_cast<const u32*>(kh + 16 * ks), bh1 = *reinterpret_cast<const u32*>(kh + 16 * ks + 8);
                // The small terms first.
                mma_f16(s[j], qa_lo[ks], bh0, bh1);
#if !ATTN_KV_F16
                const u32 bl0 = *reinterpret_cast<const u32*>(kl + 16 * ks), bl1 = *reinterpret_cast<const u32*>(kl + 16 * ks + 8);
                mma_f16(s[j], qa_hi[ks], bl0, bl1);
#endif
                mma_f16(s[j], qa_hi[ks], bh0, bh1);
            }
        }
        // Causal mask: row r sees keys up to pos0 + r (which also drops the keys past the
        // context). Only the tiles that reach past pos0 need it.
        if (kb0 + KB > pos0 + 1) {
#pragma unroll
            for (int j = 0; j < NKT; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const u32 key = kb0 + 8 * j + 2 * t + (e & 1), r = g + 8 * (e >> 1);
                    if (key > pos0 + r) s[j][e] = NEG_INF;
                }
            }
        }
        // Online softmax. Key 0 is in every row's context and in the first tile, so the running
        // maxima are finite from the first tile on (a later tile may hold no key of a row).
        float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
        for (int j = 0; j < NKT; j++) mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1])), mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_WARP, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(FULL_WARP, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_WARP, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(FULL_WARP, mx1, 2));
        const float new0 = fmaxf(m0, mx0), new1 = fmaxf(m1, mx1);
        const float corr0 = expf(m0 - new0), corr1 = expf(m1 - new1);
        m0 = new0, m1 = new1;
        l0 *= corr0, l1 *= corr1;
#pragma unroll
        for (int dt = 0; dt < NDT; dt++) o[dt][0] *= corr0, o[dt][1] *= corr0, o[dt][2] *= corr1, o[dt][3] *= corr1;
#pragma unroll
        for (int j = 0; j < NKT; j++) {
            s[j][0] = expf(s[j][0] - new0), s[j][1] = expf(s[j][1] - new0);
            s[j][2] = expf(s[j][2] - new1), s[j][3] = expf(s[j][3] - new1);
            l0 += s[j][0] + s[j][1], l1 += s[j][2] + s[j][3];
        }

        // o += p v, 16 keys a step: the scores' accumulator layout is the A fragment's.
        const u32 vrow = (lane & 7) + ((lane >> 3) & 1) * 8, vcol = (lane >> 4) * 8;
#pragma unroll
        for (int kk = 0; kk < KB / 16; kk++) {
            u32 ph[4], pl[4];
            split_f16x2(s[2 * kk][0], s[2 * kk][1], ph[0], pl[0]);
            split_f16x2(s[2 * kk][2], s[2 * kk][3], ph[1], pl[1]);
            split_f16x2(s[2 * kk + 1][0], s[2 * kk + 1][1], ph[2], pl[2]);
            split_f16x2(s[2 * kk + 1][2], s[2 * kk + 1][3], ph[3], pl[3]);
            const int at = (16 * kk + vrow) * S + vcol;
#pragma unroll
            for (int dp = 0; dp < HD / 16; dp++) {
                u32 bh[4];
                ldmatrix_x4_trans(bh, v_hi + at + 16 * dp);
#if ATTN_KV_F16
                mma_f16(o[2 * dp], pl, bh[0], bh[1]);
                mma_f16(o[2 * dp], ph, bh[0], bh[1]);
                mma_f16(o[2 * dp + 1], pl, bh[2], bh[3]);
                mma_f16(o[2 * dp + 1], ph, bh[2], bh[3]);
#else
                u32 bl[4];
                ldmatrix_x4_trans(bl, v_lo + at + 16 * dp);
                mma_f16(o[2 * dp], pl, bh[0], bh[1]);
                mma_f16(o[2 * dp], ph, bl[0], bl[1]);
                mma_f16(o[2 * dp], ph, bh[0], bh[1]);
                mma_f16(o[2 * dp + 1], pl, bh[2], bh[3]);
                mma_f16(o[2 * dp + 1], ph, bl[2], bl[3]);
                mma_f16(o[2 * dp + 1], ph, bh[2], bh[3]);
#endif
            }
        }
    }
    if (!active) return;

    l0 += __shfl_xor_sync(FULL_WARP, l0, 1);
    l0 += __shfl_xor_sync(FULL_WARP, l0, 2);
    l1 += __shfl_xor_sync(FULL_WARP, l1, 1);
    l1 += __shfl_xor_sync(FULL_WARP, l1, 2);
    const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const u32 r = g + 8 * half;
        if (r >= rows) continue;
        const float inv = half ? inv1 : inv0;
        const u64 base = (u64)(t0 + r) * q_width + (u64)h * HD + 2 * t;
#pragma unroll
        for (int dt = 0; dt < NDT; dt++) {
            const float a = o[dt][2 * half] * inv, b = o[dt][2 * half + 1] * inv;
            if (out_f16) {
                // The output goes only to cuBLAS's f16 GEMM (attn_output), as it takes it.
                out_f16[base + 8 * dt] = f16_scaled_bits(a, f16_scale);
                out_f16[base + 8 * dt + 1] = f16_scaled_bits(b, f16_scale);
            } else {
                *reinterpret_cast<float2*>(out + base + 8 * dt) = make_float2(a, b);
            }
        }
    }
}
