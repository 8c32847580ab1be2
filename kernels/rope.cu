// Rotary position embedding, in place, one block per token: pair (a, b) of every head is rotated
// by theta_i = pos / scale * freq_base^(-2i / head_dim). neox != 0 pairs (i, i + head_dim/2)
// (qwen2), else (2i, 2i + 1) (llama's GGUF layout); see RopeStyle in src/backend/mod.rs.
//
// The angle and its sine and cosine are computed in float64 and rounded once, as on the CPU, so
// long positions keep their precision; the rotation itself uses the CPU's float32 operations.
#include "common.cuh"

// x holds x_heads heads a token, y y_heads (0: none): q and k of one layer rotate in one launch.
extern "C" __global__ void rope(float* __restrict__ x, u32 x_heads, float* __restrict__ y, u32 y_heads,
                                const u32* __restrict__ positions, u32 head_dim, float freq_base, float scale, u32 neox) {
    dependent_wait();
    const u32 t = blockIdx.x;
    const u32 half = head_dim / 2;
    const double pos = (double)positions[t] / (double)scale;
    for (u32 idx = threadIdx.x; idx < (x_heads + y_heads) * half; idx += blockDim.x) {
        const u32 h = idx / half, i = idx % half;
        float sf, cf;
        rope_sincos(pos, i, head_dim, freq_base, &sf, &cf);
        const u32 a = neox ? i : 2 * i;
        const u32 b = neox ? i + half : 2 * i + 1;
        float* hp = h < x_heads ? x + ((u64)t * x_heads + h) * head_dim : y + ((u64)t * y_heads + (h - x_heads)) * head_dim;
        rotate_pair(hp, hp, a, b, cf, sf);
    }
}

// Most rotated pairs a head has (head_dim <= 512; the host checks).
#define ROPE_MAX_PAIRS 256

// A layer's RoPE and KV write in one launch, one block per token: q (q_heads heads) rotated in
// place, k (kv_heads heads) rotated into the token's slot of k_cache, v copied into v_cache (both
// caches of this layer, [slot][kv_heads * head_dim] of C: float, or f16 bits for rope_store_f16).
// Each pair's angle is computed once per token, as `rope` computes it, and the rotations are
// rope's, so the values are the same bits as rope followed by kv_append.
template <typename C>
__device__ __forceinline__ void rope_store_into(float* __restrict__ q, u32 q_heads, const float* __restrict__ k,
                                                const float* __restrict__ v, u32 kv_heads, const u32* __restrict__ positions,
                                                const u32* __restrict__ slots, u32 capacity, u32 head_dim, float freq_base,
                                                float scale, u32 neox, C* __restrict__ k_cache, C* __restrict__ v_cache) {
    __shared__ float sin_sh[ROPE_MAX_PAIRS], cos_sh[ROPE_MAX_PAIRS];
    dependent_wait();
    const u32 t = blockIdx.x;
    const u32 half = head_dim / 2;
    const double pos = (double)positions[t] / (double)scale;
    for (u32 i = threadIdx.x; i < half; i += blockDim.x) {
        rope_sincos(pos, i, head_dim, freq_base, &sin_sh[i], &cos_sh[i]);
    }
    __syncthreads();
    const u32 slot = slots[t];
    // The host checks every slot before the batch is uploaded: a block never returns here, so
    // q is always rotated.
    if (slot >= capacity) return;
    const u32 kv_width = kv_heads * head_dim;
    for (u32 idx = threadIdx.x; idx < (q_heads + kv_heads) * half; idx += blockDim.x) {
        const u32 h = idx / half, i = idx % half;
        const u32 a = neox ? i : 2 * i;
        const u32 b = neox ? i + half : 2 * i + 1;
        if (h < q_heads) {
            float* hp = q + ((u64)t * q_heads + h) * head_dim;
            rotate_pair(hp, hp, a, b, cos_sh[i], sin_sh[i]);
        } else {
            const u64 off = (u64)(h - q_heads) * head_dim;
            const float* src = k + (u64)t * kv_width + off;
            C* dst = k_cache + (u64)slot * kv_width + off;
            const float2 r = rotated(src[a], src[b], cos_sh[i], sin_sh[i]);
            kv_store(dst + a, r.x);
            kv_store(dst + b, r.y);
        }
    }
    for (u32 e = threadIdx.x; e < kv_width; e += blockDim.x) kv_store(v_cache + (u64)slot * kv_width + e, v[(u64)t * kv_width + e]);
}

#define ROPE_STORE_KERNEL(NAME, C)                                                                                    \
    extern "C" __global__ void NAME(float* __restrict__ q, u32 q_heads, const float* __restrict__ k,                 \
                                    const float* __restrict__ v, u32 kv_heads, const u32* __restrict__ positions,    \
                                    const u32* __restrict__ slots, u32 capacity, u32 head_dim, float freq_base,       \
                                    float scale, u32 neox, C* __restrict__ k_cache, C* __restrict__ v_cache) {        \
        rope_store_into<C>(q, q_heads, k, v, kv_heads, positions, slots, capacity, head_dim, freq_base, scale, neox,   \
                           k_cache, v_cache);                                                                         \
    }
ROPE_STORE_KERNEL(rope_store, float)
ROPE_STORE_KERNEL(rope_store_f16, u16)
