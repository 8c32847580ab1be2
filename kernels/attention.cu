// Causal grouped-query attention over the paged KV cache, and the append of new keys and values.
//
// Cache layout, per layer: [slot][n_kv_heads * head_dim] elements for K and for V (float32, or
// f16 bits: kv_t, see common.cuh), slots grouped in blocks of block_tokens. A sequence's block
// table lists its blocks in order: position p lives in slot table[p / block_tokens] *
// block_tokens + p % block_tokens.
#include "common.cuh"

// k/v rows of the batch ([n_tokens][kv_width]) into their slots. One block per token.
template <typename C>
__device__ __forceinline__ void kv_append_into(const float* __restrict__ k, const float* __restrict__ v,
                                               const u32* __restrict__ slots, u32 kv_width, u32 capacity,
                                               C* __restrict__ k_cache, C* __restrict__ v_cache) {
    dependent_wait();
    const u32 t = blockIdx.x;
    const u32 slot = slots[t];
    if (slot >= capacity) return;  // the host checks every slot before the batch is uploaded
    for (u32 e = threadIdx.x; e < kv_width; e += blockDim.x) {
        kv_store(k_cache + (u64)slot * kv_width + e, k[(u64)t * kv_width + e]);
        kv_store(v_cache + (u64)slot * kv_width + e, v[(u64)t * kv_width + e]);
    }
}
#define KV_APPEND_KERNEL(NAME, C)                                                                                   \
    extern "C" __global__ void NAME(const float* __restrict__ k, const float* __restrict__ v,                      \
                                    const u32* __restrict__ slots, u32 kv_width, u32 capacity,                     \
                                    C* __restrict__ k_cache, C* __restrict__ v_cache) {                            \
        kv_append_into<C>(k, v, slots, kv_width, capacity, k_cache, v_cache);                                       \
    }
KV_APPEND_KERNEL(kv_append, float)
KV_APPEND_KERNEL(kv_append_f16, u16)

#include "attention.cuh"

// One head dim and cache element type per module (-DATTN_HEAD_DIM=N, -DATTN_KV_F16=1 for an f16
// cache), compiled for the model's only; the module compiled without them holds the kv_append
// kernels alone.
#ifdef ATTN_HEAD_DIM
// Query heads per block: up to 8, fewer for heads wider than 128, whose registers (each lane's
// outputs of every head) and partial outputs in shared memory (ATTN_MAX_WARPS x ATTN_GROUP x head
// dim floats, 64 KiB at most) would grow past that.
#define ATTN_GROUP (ATTN_HEAD_DIM <= 128 ? 8 : 1024 / ATTN_HEAD_DIM)
// The kernels for blocks of up to ATTN_GROUP heads (SUFFIX empty) and of one head (_1: few
// rows take one head a block, see attention_slice in backend.rs, and without the other heads'
// registers that kernel holds more blocks an SM).
#define ATTENTION_KERNELS(SUFFIX, GROUP)                                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_MAX_WARPS, 1) attention_heads##SUFFIX(                         \
        const float* __restrict__ q, const kv_t* __restrict__ k_cache, const kv_t* __restrict__ v_cache,                \
        const u32* __restrict__ positions, const u32* __restrict__ table_offset, const u32* __restrict__ block_tables,  \
        u32 block_tokens, u32 n_heads, u32 n_kv_heads, u32 slice, float scale, float* __restrict__ out,                 \
        u16* __restrict__ out_f16, float f16_scale, u32 n_splits, float* __restrict__ partials,                        \
        u32* __restrict__ counters ATTN_PROBE_PARAM) {                                                                 \
        dependent_wait();                                                                                              \
        const RopeIn none = {};                                                                                        \
        const Splits splits = {n_splits, partials, counters};                                                          \
        attention<ATTN_HEAD_DIM, GROUP, false>(q, k_cache, v_cache, positions, table_offset, block_tables, block_tokens, \
                                               n_heads, n_kv_heads, min(max(slice, 1u), (u32)(GROUP)), scale, out,     \
                                               out_f16, f16_scale, none, splits ATTN_PROBE_ARG);                        \
    }                                                                                                                  \
    /* attention_heads with rope_store's work (see RopeIn): q and k not rotated yet, for a step of one token per      \
       sequence, their rows q_stride and kv_stride floats apart, biases bq, bk, bv (null: none) still to add.         \
       k_cache and v_cache are also written (through rope.k_cache / v_cache). pf_*: the window of weights the step \
       reads next, asked of L2 before the wait (prefetch_window). */                                                   \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_MAX_WARPS, 1) attention_heads_rope##SUFFIX(                    \
        const float* q, const kv_t* k_cache, const kv_t* v_cache, const u32* __restrict__ positions,                   \
        const u32* __restrict__ table_offset, const u32* __restrict__ block_tables, u32 block_tokens, u32 n_heads,      \
        u32 n_kv_heads, u32 slice, float scale, float* __restrict__ out, u16* __restrict__ out_f16, float f16_scale,   \
        const float* __restrict__ k_new, const float* __restrict__ v_new, const u32* __restrict__ slots, u32 capacity, \
        float freq_base, float rope_scale, u32 neox, u32 n_splits, float* __restrict__ partials,                       \
        u32* __restrict__ counters, u32 q_stride, u32 kv_stride, const float* __restrict__ bq,                         \
        const float* __restrict__ bk, const float* __restrict__ bv, const u64* __restrict__ pf_ranges,                \
        u32 pf_n_ranges, u32 pf_first, u64 pf_offset_bytes, u64 pf_len_bytes ATTN_PROBE_PARAM) {                             \
        /* attention() waits once the angles are computed. */                                                          \
        const RopeIn rope = {k_new, v_new, slots, capacity, const_cast<kv_t*>(k_cache), const_cast<kv_t*>(v_cache),     \
                             freq_base, rope_scale, neox, q_stride, kv_stride, bq, bk, bv,                             \
                             {pf_ranges, pf_n_ranges, pf_first, pf_offset_bytes, pf_len_bytes}};                              \
        const Splits splits = {n_splits, partials, counters};                                                          \
        attention<ATTN_HEAD_DIM, GROUP, true>(q, k_cache, v_cache, positions, table_offset, block_tables, block_tokens,  \
                                              n_heads, n_kv_heads, min(max(slice, 1u), (u32)(GROUP)), scale, out,      \
                                              out_f16, f16_scale, rope, splits ATTN_PROBE_ARG);                         \
    }
ATTENTION_KERNELS(, ATTN_GROUP)
ATTENTION_KERNELS(_1, 1)
#endif
