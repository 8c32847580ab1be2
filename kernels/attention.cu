// Causal grouped-query attention over the paged KV cache, and the append of new keys and values.
//
// Cache layout, per layer: [slot][n_kv_heads * head_dim] float32 for K and for V, slots grouped
// in blocks of block_tokens. A sequence's block table lists its blocks in order: position p lives
// in slot table[p / block_tokens] * block_tokens + p % block_tokens.
#include "common.cuh"

// k/v rows of the batch ([n_tokens][kv_width]) into their slots. One block per token.
extern "C" __global__ void kv_append(const float* __restrict__ k, const float* __restrict__ v,
                                     const u32* __restrict__ slots, u32 kv_width, u32 capacity,
                                     float* __restrict__ k_cache, float* __restrict__ v_cache) {
    const u32 t = blockIdx.x;
    const u32 slot = slots[t];
    if (slot >= capacity) return;  // the host checks every slot before the batch is uploaded
    for (u32 e = threadIdx.x; e < kv_width; e += blockDim.x) {
        k_cache[(u64)slot * kv_width + e] = k[(u64)t * kv_width + e];
        v_cache[(u64)slot * kv_width + e] = v[(u64)t * kv_width + e];
    }
}

#define ATTN_WARPS 4

// One block per (token, query head). Each warp takes chunks of 32 keys (warp w: keys 32w ..,
// then 32 * ATTN_WARPS further on): lane j scores key j of the chunk against q, the warp folds
// the chunk into a running softmax (max m, sum l, output o; each lane owns HD/32 output dims),
// and at the end the warps' partial results are merged in shared memory.
template <int HD>
__device__ __forceinline__ void attention(const float* __restrict__ q, const float* __restrict__ k_cache,
                                          const float* __restrict__ v_cache, const u32* __restrict__ positions,
                                          const u32* __restrict__ table_offset, const u32* __restrict__ block_tables,
                                          u32 block_tokens, u32 n_heads, u32 n_kv_heads, float scale,
                                          float* __restrict__ out) {
    constexpr int PER_LANE = (HD + 31) / 32;  // output dims per lane; lanes past HD hold none
    __shared__ float4 q_sh[HD / 4];
    __shared__ float part_m[ATTN_WARPS], part_l[ATTN_WARPS];
    __shared__ float part_o[ATTN_WARPS][HD];

    const u32 t = blockIdx.x, h = blockIdx.y;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 q_width = n_heads * HD, kv_width = n_kv_heads * HD;
    const u32 kvh = h / (n_heads / n_kv_heads);
    const u32 n_ctx = positions[t] + 1;
    const u32* table = block_tables + table_offset[t];
    // The slot of key j: block_tokens is a power of two (the host checks), so shift and mask.
    const u32 bt_shift = __ffs(block_tokens) - 1, bt_mask = block_tokens - 1;
#define KV_SLOT(j) ((u64)table[(j) >> bt_shift] * block_tokens + ((j) & bt_mask))
    const float* kc = k_cache + kvh * HD;
    const float* vc = v_cache + kvh * HD;

    float* q_f = reinterpret_cast<float*>(q_sh);
    for (u32 i = threadIdx.x; i < HD; i += blockDim.x) q_f[i] = q[(u64)t * q_width + (u64)h * HD + i];
    __syncthreads();

    float m = NEG_INF, l = 0.0f;
    float o[PER_LANE];
#pragma unroll
    for (int i = 0; i < PER_LANE; i++) o[i] = 0.0f;

    for (u32 j0 = warp * 32; j0 < n_ctx; j0 += ATTN_WARPS * 32) {
        const u32 j = j0 + lane;
        float s = NEG_INF;
        if (j < n_ctx) {
            const float4* kp = reinterpret_cast<const float4*>(kc + KV_SLOT(j) * kv_width);
            float d = 0.0f;
#pragma unroll
            for (int i = 0; i < HD / 4; i++) {
                const float4 kk = kp[i], qq = q_sh[i];
                d = fmaf(qq.x, kk.x, d);
                d = fmaf(qq.y, kk.y, d);
                d = fmaf(qq.z, kk.z, d);
                d = fmaf(qq.w, kk.w, d);
            }
            s = d * scale;
        }
        // The chunk holds key j0 < n_ctx, so m_new is finite; exp(-inf - m_new) = 0 on the first.
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = expf(m - m_new);
        const float p = j < n_ctx ? expf(s - m_new) : 0.0f;
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) o[i] *= corr;
        const u32 n_valid = min(32u, n_ctx - j0);
        for (u32 jj = 0; jj < n_valid; jj++) {
            const float pj = __shfl_sync(FULL_WARP, p, jj);
            const float* vp = vc + KV_SLOT(j0 + jj) * kv_width;
#pragma unroll
            for (int i = 0; i < PER_LANE; i++)
                if (HD % 32 == 0 || lane + 32 * i < HD) o[i] = fmaf(pj, vp[lane + 32 * i], o[i]);
        }
        m = m_new;
    }

    if (lane == 0) {
        part_m[warp] = m;
        part_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < PER_LANE; i++)
        if (HD % 32 == 0 || lane + 32 * i < HD) part_o[warp][lane + 32 * i] = o[i];
    __syncthreads();
    for (u32 d = threadIdx.x; d < HD; d += blockDim.x) {
        float mm = NEG_INF;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) mm = fmaxf(mm, part_m[w]);
        float ll = 0.0f, oo = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) {
            if (part_m[w] == NEG_INF) continue;  // a warp that saw no key
            const float f = expf(part_m[w] - mm);
            ll += part_l[w] * f;
            oo += part_o[w][d] * f;
        }
        out[(u64)t * q_width + (u64)h * HD + d] = oo / ll;
    }
#undef KV_SLOT
}

// One head dim per module (-DATTN_HEAD_DIM=N), compiled for the model's head dim only.
#ifndef ATTN_HEAD_DIM
#error "attention.cu is compiled with -DATTN_HEAD_DIM=<head dim>"
#endif
extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS)
    attention_heads(const float* __restrict__ q, const float* __restrict__ k_cache, const float* __restrict__ v_cache,
                    const u32* __restrict__ positions, const u32* __restrict__ table_offset,
                    const u32* __restrict__ block_tables, u32 block_tokens, u32 n_heads, u32 n_kv_heads, float scale,
                    float* __restrict__ out) {
    attention<ATTN_HEAD_DIM>(q, k_cache, v_cache, positions, table_offset, block_tables, block_tokens, n_heads, n_kv_heads,
                             scale, out);
}
