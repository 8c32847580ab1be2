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

__device__ __forceinline__ float4 add4(float4 a, float4 b) {
    return make_float4(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y), __fadd_rn(a.z, b.z), __fadd_rn(a.w, b.w));
}

// Warps per block: the host picks 4..ATTN_MAX_WARPS per launch (more when few rows have long
// contexts, as in decode; 4 when many rows keep the GPU busy anyway, as in prefill).
#define ATTN_MAX_WARPS 16

// 1: a decode step's attention (the ROPE variant) asks L2 for the K and V rows of its warps'
// keys before it waits for the kernel before it (q/k/v): their slots come from the batch
// description, which may be read before the wait, and a prefetch returns no data, so whatever
// the cache holds then cannot be read too early. The rows' DRAM latency then overlaps the
// projection's tail instead of following the wait. H200, 2026-12-04: the 0.5B's attention
// 6.75 -> 6.41 us a layer at one sequence.
#ifndef ATTN_L2_PREFETCH
#define ATTN_L2_PREFETCH 1
#endif

// The one-head decode kernel for blocks of at most 8 warps (attention_heads_rope_1w8: a context of
// up to 256 keys a split), whose launch bound leaves it 255 registers a thread where 16 warps leave
// 128: it takes a chunk's value rows in one batch (ATTN_W8_V_FLOATS floats a lane), loads them all
// before its wait with the keys (ATTN_W8_PRELOAD_VALUE_FLOATS), and keeps them as loaded until the
// products use them, where they are widened; the new token's row (the chunk's last key, from
// shared memory) is multiplied after them instead of replacing its row as the batch loads.
// Replacing it there (a shared-memory load into the register the global load was still filling)
// and widening there waited for the loads, so a value batch's round trip came before the chunk's
// scores (the 16-warp kernel's SASS, sm_90); with 128 registers, holding a chunk's values through
// the scores spilled. The same floats in the same order as the 16-warp kernel. H100, 2026-12-07,
// syn05 (docs/BENCHMARKS.md, forty-eighth session): the attention launch 4.25 -> 3.54 us in the chain
// probe at 160 keys, 4.65 -> 3.96 at 256.
#define ATTN_W8_WARPS 8
#ifndef ATTN_W8_V_FLOATS
#define ATTN_W8_V_FLOATS 64
#endif
#ifndef ATTN_W8_PRELOAD_VALUE_FLOATS
#define ATTN_W8_PRELOAD_VALUE_FLOATS 64
#endif

#ifndef ATTN_V_BATCH_FLOATS
#define ATTN_V_BATCH_FLOATS 32
#endif

// 1: a decode step's attention of one query head a block (the ROPE variant of the `_1` kernels,
// head dims up to ATTN_PRELOAD_MAX_HD) loads each warp's first chunk of keys into registers before
// it waits: the chunk's slots (block tables are batch description), the K row of each lane's key
// (its first ATTN_PRELOAD_KEY_FLOATS) and the first value rows (ATTN_PRELOAD_VALUE_FLOATS). Those
// rows were written by earlier steps, whose kernels have all completed once
// this one runs (see dependent_wait: only the kernel before it, q/k/v, may still run, and it
// writes no cache); the new token's row, which this launch writes, is read too and replaced from
// shared memory after the wait, as the loop does with it anyway (the W8 kernel leaves it unused
// and multiplies the shared-memory row last, see ATTN_W8_WARPS). After the wait such a chunk
// (a short context's warps have one each) needs no round trip to L2 of its own. It replaces
// ATTN_L2_PREFETCH's prefetch of the same rows. Not for blocks of several heads, whose registers
// would spill. H100, 2026-12-06, synthetic 0.5B: the attention launch 6.4 -> 4.9-5.0 us, decode
// steps 5-6 % shorter at one to eight sequences (docs/BENCHMARKS.md, thirty-ninth session); heads
// of 128 dims (a 7B's) from the forty-first.
#ifndef ATTN_PRELOAD
#define ATTN_PRELOAD 1
#endif
// Value floats a lane holds from PRELOAD's loads, PER_LANE a row (at most V_BATCH rows; the chunk's
// other value rows are asked of L2 then and loaded after it): 16, 8 rows of a 64-dim head. More
// spills registers (16 rows with a float32 cache, 16 and 32 with an f16 one); 16 and 8 rows
// measured the same steps (thirty-ninth session). The W8 kernel takes ATTN_W8_PRELOAD_VALUE_FLOATS.
#ifdef ATTN_PRELOAD_VALUES
#error "ATTN_PRELOAD_VALUES (rows) is now ATTN_PRELOAD_VALUE_FLOATS (floats a lane, PER_LANE a row)"
#endif
#ifndef ATTN_PRELOAD_VALUE_FLOATS
#define ATTN_PRELOAD_VALUE_FLOATS 16
#endif
static_assert(ATTN_PRELOAD_VALUE_FLOATS >= 0, "value floats preloaded");
// Key floats of its row a lane preloads: all of a head of up to 64 dims; the rest of a wider one
// is asked of L2 before the wait and loaded after it (a 128-dim head's float32 row alone would be
// 128 registers). Heads wider than ATTN_PRELOAD_MAX_HD keep ATTN_L2_PREFETCH's prefetch alone.
#ifndef ATTN_PRELOAD_KEY_FLOATS
#define ATTN_PRELOAD_KEY_FLOATS 64
#endif
static_assert(ATTN_PRELOAD_KEY_FLOATS >= 4 && ATTN_PRELOAD_KEY_FLOATS % 4 == 0, "key floats preloaded, whole float4s");
#ifndef ATTN_PRELOAD_MAX_HD
#define ATTN_PRELOAD_MAX_HD 128
#endif

// 1: a probe build for benches/bench_attention_chain.py: the kernels take one more parameter,
// `probe` (u64*, null: none), and thread 0 of each block stamps points 0..15 of the kernel into it
// (ATTN_STAMP: common.cuh's probe_stamp). Never compiled by the backend.
#ifndef ATTN_PROBE
#define ATTN_PROBE 0
#endif
#if ATTN_PROBE
#define ATTN_PROBE_PARAM , u64* __restrict__ probe
#define ATTN_PROBE_ARG , probe
#define ATTN_STAMP(point) probe_stamp(probe, point)
#else
#define ATTN_PROBE_PARAM
#define ATTN_PROBE_ARG
#define ATTN_STAMP(point)
#endif

// One block per (token, KV head, slice of `slice` <= G of the query heads sharing that KV head), or
// per (token, split, KV head, slice) with flash-decoding (Splits below). Each warp takes
// chunks of 32 keys (warp w: keys 32w .., then 32 * n_warps further on): lane j scores key j of
// the chunk against every query of the slice, the warp folds the chunk into one running softmax
// per head (max m, sum l, output o; each lane owns HD/32 output dims of each head), and at the
// end the warps' partial results are merged in shared memory. Per head the float operations are
// those of one head alone, in the same order, whatever the slice.
//
// Latency, not bandwidth, bounds decode attention (a few hundred keys per sequence): the heads of
// a slice share each K and V load, the chunk's weights and slots go through shared memory so the
// value loop has no dependent loads, and a decode step spreads its keys over up to 16 warps.
//
// With ROPE (a decode step: one new token per sequence), the kernel also does rope_store's work
// (rope.cu), so that a layer's attention is one launch: every block rotates its queries and its
// KV head's new key in shared memory with rope_store's operations, the blocks of the first slice
// write the new key and value into the cache, and every block takes the new token's key and value
// (the last of its context) from shared memory, since another block may not have written them
// yet. The cache reads of that one slot are discarded, so the results are the same bits as
// rope_store followed by this kernel. One token per sequence is what makes this exact: no query
// of the step reads another new token's slot.
//
// The new token's q, k and v rows may also be the three parts of one stacked q/k/v GEMM's
// output row (matmul.rs's stacked_gemm_unsplit): q_stride = kv_stride floats a token apart, with
// each projection's bias (null: none) added as they are read, the operations of split_rows3,
// which the kernel then replaces (one launch fewer a layer).
// A cache row of HD elements asked of L2, by 128-byte lines. When a row is not a whole number of
// lines, rows start off a line boundary (the cache is 256-byte aligned, rows HD elements apart)
// and the loop may stop a line short of the row's end: its last element's line too.
template <int HD>
__device__ __forceinline__ void prefetch_row_l2(const kv_t* row) {
    for (u32 e = 0; e < HD; e += 128 / sizeof(kv_t)) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + e));
    if constexpr ((HD * sizeof(kv_t)) % 128 != 0) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + HD - 1));
}

struct RopeIn {
    const float* k;  // the token's new key at k + token * kv_stride, not rotated
    const float* v;
    const u32* slots;
    u32 capacity;
    kv_t* k_cache;  // the caches again, to write the new key and value
    kv_t* v_cache;
    float freq_base, scale;
    u32 neox;
    u32 q_stride, kv_stride;    // floats from one token's q (k, v) row to the next
    const float *bq, *bk, *bv;  // biases added to q, k and v as they are read (null: none)
    PrefetchWindow prefetch;    // weights read ahead (prefetch_window)
};

// A float of global memory loaded where it stands in the program (the memory clobber keeps the
// loads after it behind it): the compiler sank the new key's and value's loads below q's stores,
// where they waited for q. (The probe build still puts thread 0's k and v 584 cycles after its
// q with this: its own stores between the two points may be what it measures; docs/BENCHMARKS.md,
// fortieth session.)
__device__ __forceinline__ float ld_in_order(const float* p) {
    float v;
    asm volatile("ld.global.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// A compile-time flag passed to a generic lambda.
template <bool B> struct Flag { static constexpr bool value = B; };

// Flash-decoding: with n > 1, blockIdx.x / n is the token and blockIdx.x % n the split, and a
// block attends only to its split of the token's keys (n ranges of whole 32-key chunks; some
// may be empty), so that a few rows with long contexts still spread over every SM. Each block
// writes its softmax state (max, sum, output) to `partials` ([token][head][split][2 + HD]), and
// the last block of a (token, KV head, slice) to finish (a counter each, reset by that block)
// merges the splits in order, as the warps of a block are merged.
struct Splits {
    u32 n;
    float* partials;
    u32* counters;
};

// The caches as attention() reads them: restrict-qualified, except in the ROPE variant, which
// also writes them (through RopeIn).
template <bool ROPE> struct CacheIn { typedef const kv_t* __restrict__ T; };
template <> struct CacheIn<true> { typedef const kv_t* T; };

template <int HD, int G, bool ROPE, bool W8 = false>
__device__ __forceinline__ void attention(const float* __restrict__ q, typename CacheIn<ROPE>::T k_cache,
                                          typename CacheIn<ROPE>::T v_cache, const u32* __restrict__ positions,
                                          const u32* __restrict__ table_offset, const u32* __restrict__ block_tables,
                                          u32 block_tokens, u32 n_heads, u32 n_kv_heads, u32 slice, float scale,
                                          float* __restrict__ out, u16* __restrict__ out_f16, float f16_scale,
                                          const RopeIn& rope, const Splits& splits ATTN_PROBE_PARAM) {
    ATTN_STAMP(0);
    constexpr int PER_LANE = (HD + 31) / 32;  // output dims per lane; lanes past HD hold none
    // Value rows loaded together: ATTN_V_BATCH_FLOATS floats of registers a lane whatever the
    // head dim (64: a chunk's 32 rows at once for head dims up to 64, one round trip to memory
    // fewer after the softmax).
    // W8 (attention_heads_rope_1w8, see ATTN_W8_WARPS): a chunk's 32 rows for head dims up to 64.
    constexpr int V_BATCH_FLOATS = W8 ? ATTN_W8_V_FLOATS : ATTN_V_BATCH_FLOATS;
    constexpr int V_BATCH = V_BATCH_FLOATS / PER_LANE < 32 ? V_BATCH_FLOATS / PER_LANE : 32;
    static_assert(V_BATCH >= 1, "value rows a batch");
    // The chunk's softmax weights and slots while the warps run, their partial outputs after (a
    // __syncthreads separates the two uses): dynamic shared memory, sized for the launch's warps
    // (attention_shared_bytes in kernels.rs; 64 KB for 16 warps of 8 heads of 128 dims).
    extern __shared__ __align__(16) float attn_scratch[];
    const u32 n_warps = blockDim.x / 32;
    float (*const chunk_p)[G][32] = reinterpret_cast<float (*)[G][32]>(attn_scratch);                   // [warp][head][key]
    u32 (*const chunk_slot)[32] = reinterpret_cast<u32 (*)[32]>(attn_scratch + n_warps * G * 32);      // [warp][key]
    float (*const part_o)[G][HD] = reinterpret_cast<float (*)[G][HD]>(attn_scratch);                   // [warp][head][dim]
    __shared__ float4 q_sh[G][HD / 4];
    __shared__ float part_m[ATTN_MAX_WARPS][G], part_l[ATTN_MAX_WARPS][G];

    const u32 n_splits = max(splits.n, 1u);
    const u32 t = blockIdx.x / n_splits, split = blockIdx.x % n_splits, kvh = blockIdx.y;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const u32 q_width = n_heads * HD, kv_width = n_kv_heads * HD;
    const u32 group = n_heads / n_kv_heads;
    const u32 h0 = kvh * group + blockIdx.z * slice;
    const u32 n_here = min(slice, group - blockIdx.z * slice);
    const u32 n_ctx = positions[t] + 1;
    // This block's keys: split `split` of n_splits ranges of whole 32-key chunks.
    const u32 split_len = ((n_ctx + n_splits - 1) / n_splits + 31) & ~31u;
    const u32 j_begin = min(split * split_len, n_ctx), j_end = min(j_begin + split_len, n_ctx);
    const u32* table = block_tables + table_offset[t];
    // The slot of key j: block_tokens is a power of two (the host checks), so shift and mask.
    const u32 bt_shift = __ffs(block_tokens) - 1, bt_mask = block_tokens - 1;
    const auto slot_of = [&](u32 j) { return table[j >> bt_shift] * block_tokens + (j & bt_mask); };
    const kv_t* kc = k_cache + kvh * HD;
    const kv_t* vc = v_cache + kvh * HD;
    // ROPE: the angles of the token's position (as rope_store computes them; the position and
    // the table offset read above are in the batch description, which a kernel may read before
    // its wait, see dependent_wait), then its new key and value.
    __shared__ float rope_sin[ROPE ? HD / 2 : 1], rope_cos[ROPE ? HD / 2 : 1];
    __shared__ __align__(16) float k_new[ROPE ? HD : 4];
    __shared__ float v_new[ROPE ? HD : 1];
    const u32 last = n_ctx - 1;
    // PRELOAD: the warp's first chunk (keys j0_first ..), its lane's key row as stored and the
    // first V_PRE value rows, loaded before the wait.
    constexpr bool PRELOAD = ROPE && ATTN_PRELOAD && G == 1 && HD <= ATTN_PRELOAD_MAX_HD;
    constexpr int V_PRE_FLOATS = W8 ? ATTN_W8_PRELOAD_VALUE_FLOATS : ATTN_PRELOAD_VALUE_FLOATS;
    constexpr int V_PRE = PRELOAD ? (V_PRE_FLOATS / PER_LANE < V_BATCH ? V_PRE_FLOATS / PER_LANE : V_BATCH) : 0;
    static_assert(!W8 || (ROPE && G == 1), "the W8 kernel is the one-head decode kernel");
    static_assert(V_PRE_FLOATS >= 0, "value floats preloaded");
    // Float4s of the key row preloaded, of its HD / 4.
    constexpr int K_PRE_F4 = !PRELOAD ? 1 : HD / 4 < ATTN_PRELOAD_KEY_FLOATS / 4 ? HD / 4 : ATTN_PRELOAD_KEY_FLOATS / 4;
    const u32 j0_first = j_begin + warp * 32;
    typename KvRaw4<kv_t>::T k_pre[K_PRE_F4];
    kv_t v_pre[V_PRE > 0 ? V_PRE : 1][PER_LANE];  // as stored (kv_widen)
    // The new token's cache slot (batch description, like the position, so read before the wait):
    // loaded after RoPE's barrier, as it was, it held every block a round trip there, since the
    // store of the new key and value below tests it. H100, chain probe: the first chunk 460 -> 250
    // cycles later, syn05's decode steps 0.5-0.7 % shorter (forty-eighth session).
    const u32 new_slot = ROPE ? rope.slots[t] : 0u;
    if constexpr (ROPE) {
        const double pos = (double)positions[t] / (double)rope.scale;
        for (u32 i = threadIdx.x; i < HD / 2; i += blockDim.x) {
            rope_sincos(pos, i, HD, rope.freq_base, &rope_sin[i], &rope_cos[i]);
        }
        ATTN_STAMP(1);
        if constexpr (PRELOAD) {
            if (j0_first < j_end) {
                const u32 jr = j0_first + lane < j_end ? j0_first + lane : j0_first;
                const u32 slot = slot_of(jr);
                // The key rows first (the first thing the chunk needs), then the values, all as
                // stored (widening them here would wait for them before the wait) and through L2
                // (see kv_raw4_cg).
#pragma unroll
                for (int i = 0; i < K_PRE_F4; i++) k_pre[i] = kv_raw4_cg(kc + (u64)slot * kv_width, i);
                // The rest of a wider head's key row, loaded after the wait: asked of L2 now.
                if constexpr (K_PRE_F4 < HD / 4) prefetch_row_l2<HD - 4 * K_PRE_F4>(kc + (u64)slot * kv_width + 4 * K_PRE_F4);
                chunk_slot[warp][lane] = slot;
                __syncwarp();
                const u32 n_valid = min(32u, j_end - j0_first);
#pragma unroll
                for (int u = 0; u < V_PRE; u++) {
                    const kv_t* vp = vc + (u64)chunk_slot[warp][u < n_valid ? u : 0] * kv_width;
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) v_pre[u][i] = (HD % 32 == 0 || lane + 32 * i < HD) ? __ldcg(vp + lane + 32 * i) : kv_t(0);
                }
                // The chunk's later values (keys V_PRE on), loaded after the wait: asked of L2 now.
                if (lane >= V_PRE && jr == j0_first + lane) prefetch_row_l2<HD>(vc + (u64)slot * kv_width);
            }
        }
#if ATTN_L2_PREFETCH
        // The warp's first chunk only: the one on the critical path after the wait (a long
        // context's later chunks would ask L2 for more than it holds, ahead of the q load). This
        // step's own key and value are written below instead.
        const u32 j_first = j_begin + warp * 32 + lane;
        if (!PRELOAD && j_first < j_end && j_first != last) {
            const u32 slot = slot_of(j_first);
            prefetch_row_l2<HD>(kc + (u64)slot * kv_width);
            prefetch_row_l2<HD>(vc + (u64)slot * kv_width);
        }
#endif
        // Weights read ahead: a decode step's attention is a chain of round trips to memory
        // during which DRAM idles, so it asks L2 for the weights the step reads next (the layer's
        // o, gate, up and down, then the next layer's q/k/v and on, up to a byte budget),
        // which the matrix-vector kernels after it then find there. After the step's own K/V
        // rows, which this kernel reads first.
        prefetch_window(rope.prefetch);
        ATTN_STAMP(2);
        dependent_wait();
        ATTN_STAMP(3);
    }

    // The slice's queries into shared memory, four float4 loads in flight per thread: in a
    // decode step of one sequence this load is on the critical path of the whole kernel.
    {
        // ROPE: the new key's and value's loads go out first, with q's. Thread 0 (and the others
        // that load q) asked for them only once their q values had come and been stored: a second
        // round trip after the wait (probe build, 160 keys: q 870 cycles after the release, then k
        // and v 630 more). A decode block has at least 4 warps, so KV_EACH covers the head; the
        // loop after the stores takes any rest.
        constexpr int KV_EACH = ROPE ? (HD + 127) / 128 : 1;
        const u64 kv_row = ROPE ? (u64)t * rope.kv_stride + kvh * HD : 0;
        float kn[KV_EACH], vn[KV_EACH];
        if constexpr (ROPE) {
#pragma unroll
            for (int u = 0; u < KV_EACH; u++) {
                const u32 e = threadIdx.x + u * blockDim.x;
                kn[u] = e < HD ? ld_in_order(rope.k + kv_row + e) : 0.0f;
                vn[u] = e < HD ? ld_in_order(rope.v + kv_row + e) : 0.0f;
            }
        }
        constexpr u32 Q4 = G * HD / 4;
        const u32 q_stride = ROPE ? rope.q_stride : q_width;
        const float4* q4 = reinterpret_cast<const float4*>(q + (u64)t * q_stride + (u64)h0 * HD);
        const float4* bq4 = ROPE && rope.bq ? reinterpret_cast<const float4*>(rope.bq + (u64)h0 * HD) : nullptr;
        for (u32 base = threadIdx.x; base < Q4; base += 4 * blockDim.x) {
            float4 v[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const u32 i = base + r * blockDim.x;
                v[r] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (i < Q4 && i / (HD / 4) < n_here) {
                    v[r] = q4[i];
                    if (bq4) v[r] = add4(v[r], bq4[i]);
                }
            }
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const u32 i = base + r * blockDim.x;
                if (i < Q4) q_sh[i / (HD / 4)][i % (HD / 4)] = v[r];
            }
        }
        ATTN_STAMP(12);  // thread 0's q values arrived (its store waited for them)
        if constexpr (ROPE) {
            // The new key (rotated in place below) and value, biases added; the value as the
            // cache will hold it (the key once rotated).
            // Element e of each, with its bias (the stacked GEMM's rows only; none on the
            // matrix-vector path).
            const auto put_new = [&](u32 e, float k, float v) {
                k_new[e] = rope.bk ? __fadd_rn(k, rope.bk[kvh * HD + e]) : k;
                v_new[e] = kv_stored<kv_t>(rope.bv ? __fadd_rn(v, rope.bv[kvh * HD + e]) : v);
            };
#pragma unroll
            for (int u = 0; u < KV_EACH; u++) {
                const u32 e = threadIdx.x + u * blockDim.x;
                if (e < HD) put_new(e, kn[u], vn[u]);
            }
            for (u32 e = threadIdx.x + KV_EACH * blockDim.x; e < HD; e += blockDim.x) put_new(e, rope.k[kv_row + e], rope.v[kv_row + e]);
            ATTN_STAMP(13);  // and its new key and value
        }
    }
    __syncthreads();
    ATTN_STAMP(4);
    if constexpr (ROPE) {
        constexpr u32 half = HD / 2;
        float* qf = reinterpret_cast<float*>(q_sh);
        for (u32 idx = threadIdx.x; idx < (n_here + 1) * half; idx += blockDim.x) {
            const u32 g = idx / half, i = idx % half;
            const u32 a = rope.neox ? i : 2 * i, b = rope.neox ? i + half : 2 * i + 1;
            if (g < n_here) {
                rotate_pair(qf + g * HD, qf + g * HD, a, b, rope_cos[i], rope_sin[i]);
            } else {
                // The new key as the cache will hold it: every query of the step reads it so.
                const float2 r = rotated(k_new[a], k_new[b], rope_cos[i], rope_sin[i]);
                k_new[a] = kv_stored<kv_t>(r.x);
                k_new[b] = kv_stored<kv_t>(r.y);
            }
        }
        __syncthreads();
        ATTN_STAMP(5);
        const u32 slot = new_slot;
        // The host checks every slot before the batch is uploaded.
        if (blockIdx.z == 0 && split == 0 && slot < rope.capacity) {
            for (u32 e = threadIdx.x; e < HD; e += blockDim.x) {
                kv_store(rope.k_cache + (u64)slot * kv_width + kvh * HD + e, k_new[e]);
                kv_store(rope.v_cache + (u64)slot * kv_width + kvh * HD + e, v_new[e]);
            }
        }
    }

    float m[G], l[G];
    float o[G][PER_LANE];
#pragma unroll
    for (int g = 0; g < G; g++) {
        m[g] = NEG_INF;
        l[g] = 0.0f;
#pragma unroll
        for (int i = 0; i < PER_LANE; i++) o[g][i] = 0.0f;
    }

    // One chunk of 32 keys from j0; `preloaded`: its slots, key rows and first values were
    // loaded before the wait (PRELOAD's first chunk, run apart from the loop so that the
    // preloaded registers end there).
    const auto chunk = [&](u32 j0, auto preloaded) {
        constexpr bool pre = decltype(preloaded)::value;
#if ATTN_PROBE
        if (j0 == j0_first) ATTN_STAMP(9);  // points 9-11: warp 0's first chunk
#endif
        const u32 j = j0 + lane;
        const bool valid = j < j_end;
        // A lane past the end reads key j0's row (valid) and discards the result.
        const u32 jr = valid ? j : j0;
        // A preloaded chunk's slots are in chunk_slot already (read back only for a key row wider
        // than the preload).
        const u32 slot = pre ? (K_PRE_F4 < HD / 4 ? chunk_slot[warp][lane] : 0u) : slot_of(jr);
        if constexpr (!pre) {
            chunk_slot[warp][lane] = slot;
            __syncwarp();
        }
        const u32 n_valid = min(32u, j_end - j0);
        // Values V_BATCH keys at a time, all their loads issued before the first is used; the
        // first batch goes out before the keys' scores are computed, so its latency overlaps
        // theirs (a short context's attention is a chain of memory round trips).
        // W8: as stored, widened where the products use them (see ATTN_W8_WARPS).
        kv_t vr[V_BATCH][PER_LANE];
        auto load_raw = [&](u32 jb, kv_t(&dst)[V_BATCH][PER_LANE]) {
#pragma unroll
            for (int u = 0; u < V_BATCH; u++) {
                // Keys past the chunk's end read key jb's row (valid); their weights are 0.
                const u32 jj = jb + u < n_valid ? jb + u : jb;
                if (pre && jb == 0 && u < V_PRE) {
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) dst[u][i] = v_pre[u < V_PRE ? u : 0][i];
                } else {
                    const kv_t* vp = vc + (u64)chunk_slot[warp][jj] * kv_width;
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) dst[u][i] = (HD % 32 == 0 || lane + 32 * i < HD) ? vp[lane + 32 * i] : kv_t(0);
                }
            }
        };
        float vv[V_BATCH][PER_LANE];
        auto load_values = [&](u32 jb) {
#pragma unroll
            for (int u = 0; u < V_BATCH; u++) {
                // Keys past the chunk's end read key jb's row (valid); their weights are 0.
                const u32 jj = jb + u < n_valid ? jb + u : jb;
                if (pre && jb == 0 && u < V_PRE) {
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) vv[u][i] = kv_widen(v_pre[u < V_PRE ? u : 0][i]);
                } else {
                    const kv_t* vp = vc + (u64)chunk_slot[warp][jj] * kv_width;
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++) vv[u][i] = (HD % 32 == 0 || lane + 32 * i < HD) ? kv_load(vp, lane + 32 * i) : 0.0f;
                }
                if constexpr (ROPE) {
                    // The new token's value (warp-uniform: jj is the same in every lane).
                    if (j0 + jj == last) {
#pragma unroll
                        for (int i = 0; i < PER_LANE; i++) vv[u][i] = (HD % 32 == 0 || lane + 32 * i < HD) ? v_new[lane + 32 * i] : 0.0f;
                    }
                }
            }
        };
        if constexpr (W8) load_raw(0, vr);
        else load_values(0);
        const kv_t* kp = kc + (u64)slot * kv_width;
        float d[G];
#pragma unroll
        for (int g = 0; g < G; g++) d[g] = 0.0f;
        // ROPE: the new key from shared memory (its cache slot may not be written yet).
        const bool new_key = ROPE && valid && j == last;
#pragma unroll
        for (int i = 0; i < HD / 4; i++) {
            const float4 kk = new_key ? reinterpret_cast<const float4*>(k_new)[i]
                              : pre && i < K_PRE_F4 ? kv_widen4(k_pre[i < K_PRE_F4 ? i : 0])
                                                 : kv_load4(kp, i);
#pragma unroll
            for (int g = 0; g < G; g++) {
                if (g >= n_here) break;
                const float4 qq = q_sh[g][i];
                d[g] = fmaf(qq.x, kk.x, d[g]);
                d[g] = fmaf(qq.y, kk.y, d[g]);
                d[g] = fmaf(qq.z, kk.z, d[g]);
                d[g] = fmaf(qq.w, kk.w, d[g]);
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            if (g >= n_here) break;
            const float s = valid ? d[g] * scale : NEG_INF;
            // The chunk holds key j0 < n_ctx, so m_new is finite; exp(-inf - m_new) = 0 on the first.
            const float m_new = fmaxf(m[g], warp_max(s));
            const float corr = expf(m[g] - m_new);
            const float p = valid ? expf(s - m_new) : 0.0f;
            l[g] = l[g] * corr + warp_sum(p);
#pragma unroll
            for (int i = 0; i < PER_LANE; i++) o[g][i] *= corr;
            m[g] = m_new;
            chunk_p[warp][g][lane] = p;
        }
        __syncwarp();
#if ATTN_PROBE
        if (j0 == j0_first) ATTN_STAMP(10);  // scores and softmax weights
#endif
        if constexpr (W8) {
            // The new token's value (in shared memory) is the chunk's last key when the chunk holds
            // it (last = j_end - 1), so the loads' rows are used as loaded and its product comes
            // after theirs: the same floats in the same order as the other kernels'.
            const bool has_new = ROPE && j0 + n_valid - 1 == last;  // warp-uniform
            const u32 n_old = has_new ? n_valid - 1 : n_valid;
            for (u32 jb = 0; jb < n_old; jb += V_BATCH) {
                if (jb > 0) load_raw(jb, vr);
#pragma unroll
                for (int u = 0; u < V_BATCH; u++) {
                    if (jb + u >= n_old) break;
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        if (g >= n_here) break;
                        const float pj = chunk_p[warp][g][jb + u];
#pragma unroll
                        for (int i = 0; i < PER_LANE; i++) o[g][i] = fmaf(pj, kv_widen(vr[u][i]), o[g][i]);
                    }
                }
            }
            if (has_new) {
#pragma unroll
                for (int g = 0; g < G; g++) {
                    if (g >= n_here) break;
                    const float pj = chunk_p[warp][g][n_valid - 1];
#pragma unroll
                    for (int i = 0; i < PER_LANE; i++)
                        o[g][i] = fmaf(pj, (HD % 32 == 0 || lane + 32 * i < HD) ? v_new[lane + 32 * i] : 0.0f, o[g][i]);
                }
            }
        } else {
            for (u32 jb = 0; jb < n_valid; jb += V_BATCH) {
                if (jb > 0) load_values(jb);
#pragma unroll
                for (int u = 0; u < V_BATCH; u++) {
                    if (jb + u >= n_valid) break;
#pragma unroll
                    for (int g = 0; g < G; g++) {
                        if (g >= n_here) break;
                        const float pj = chunk_p[warp][g][jb + u];
#pragma unroll
                        for (int i = 0; i < PER_LANE; i++) o[g][i] = fmaf(pj, vv[u][i], o[g][i]);
                    }
                }
            }
        }
        __syncwarp();  // the next chunk overwrites this warp's weights and slots
#if ATTN_PROBE
        if (j0 == j0_first) ATTN_STAMP(11);  // values
#endif
    };
    if constexpr (PRELOAD) {
        if (j0_first < j_end) chunk(j0_first, Flag<true>());
        for (u32 j0 = j0_first + n_warps * 32; j0 < j_end; j0 += n_warps * 32) chunk(j0, Flag<false>());
    } else {
        for (u32 j0 = j_begin + warp * 32; j0 < j_end; j0 += n_warps * 32) chunk(j0, Flag<false>());
    }

    __syncthreads();  // every warp is done with its chunk's weights before part_o overwrites them
    ATTN_STAMP(6);
#pragma unroll
    for (int g = 0; g < G; g++) {
        if (g >= n_here) break;
        if (lane == 0) {
            part_m[warp][g] = m[g];
            part_l[warp][g] = l[g];
        }
#pragma unroll
        for (int i = 0; i < PER_LANE; i++)
            if (HD % 32 == 0 || lane + 32 * i < HD) part_o[warp][g][lane + 32 * i] = o[g][i];
    }
    __syncthreads();
    ATTN_STAMP(7);
    for (u32 e = threadIdx.x; e < n_here * HD; e += blockDim.x) {
        const u32 g = e / HD, dd = e % HD;
        float mm = NEG_INF;
        for (u32 w = 0; w < n_warps; w++) mm = fmaxf(mm, part_m[w][g]);
        float ll = 0.0f, oo = 0.0f;
        for (u32 w = 0; w < n_warps; w++) {
            if (part_m[w][g] == NEG_INF) continue;  // a warp that saw no key
            const float f = expf(part_m[w][g] - mm);
            ll += part_l[w][g] * f;
            oo += part_o[w][g][dd] * f;
        }
        if (n_splits > 1) {
            // A split without keys leaves max -inf, sum 0: the merge skips it.
            float* part = splits.partials + (((u64)t * n_heads + h0 + g) * n_splits + split) * (2 + HD);
            if (dd == 0) part[0] = mm, part[1] = ll;
            part[2 + dd] = oo;
            continue;
        }
        const u64 at = (u64)t * q_width + (u64)(h0 + g) * HD + dd;
        // out_f16: the output goes only to cuBLAS's f16 GEMM (attn_output), as it takes it.
        if (out_f16) out_f16[at] = f16_scaled_bits(oo / ll, f16_scale);
        else out[at] = oo / ll;
    }
#if ATTN_PROBE
    __syncthreads();
    ATTN_STAMP(8);
#endif
    if (n_splits == 1) return;

    // The last split of this (token, KV head, slice) to finish merges them all, in split order.
    __shared__ u32 s_last;
    u32* counter = splits.counters + ((u64)t * gridDim.y + kvh) * gridDim.z + blockIdx.z;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1u) == n_splits - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    for (u32 e = threadIdx.x; e < n_here * HD; e += blockDim.x) {
        const u32 g = e / HD, dd = e % HD;
        const float* part = splits.partials + ((u64)t * n_heads + h0 + g) * n_splits * (2 + HD);
        float mm = NEG_INF;
        for (u32 sp = 0; sp < n_splits; sp++) mm = fmaxf(mm, __ldcg(part + sp * (2 + HD)));
        float ll = 0.0f, oo = 0.0f;
        for (u32 sp = 0; sp < n_splits; sp++) {
            const float m = __ldcg(part + sp * (2 + HD));
            if (m == NEG_INF) continue;
            const float f = expf(m - mm);
            ll += __ldcg(part + sp * (2 + HD) + 1) * f;
            oo += __ldcg(part + sp * (2 + HD) + 2 + dd) * f;
        }
        const u64 at = (u64)t * q_width + (u64)(h0 + g) * HD + dd;
        if (out_f16) out_f16[at] = f16_scaled_bits(oo / ll, f16_scale);
        else out[at] = oo / ll;
    }
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch
}

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
// registers that kernel holds more blocks an SM); a decode step's one-head blocks of at most 8
// warps take _1w8 (see ATTN_W8_WARPS).
#define ATTENTION_KERNEL(SUFFIX, GROUP)                                                                                 \
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
    }
// attention_heads with rope_store's work (see RopeIn): q and k not rotated yet, for a step of one token per
// sequence, their rows q_stride and kv_stride floats apart, biases bq, bk, bv (null: none) still to add.
// k_cache and v_cache are also written (through rope.k_cache / v_cache). pf_*: the window of weights the step
// reads next, asked of L2 before the wait (prefetch_window). WARPS: the launch bound; W8: see ATTN_W8_WARPS.
#define ATTENTION_ROPE_KERNEL(SUFFIX, GROUP, WARPS, W8)                                                                 \
    extern "C" __global__ void __launch_bounds__(32 * (WARPS), 1) attention_heads_rope##SUFFIX(                           \
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
        attention<ATTN_HEAD_DIM, GROUP, true, W8>(q, k_cache, v_cache, positions, table_offset, block_tables,          \
                                                  block_tokens, n_heads, n_kv_heads, min(max(slice, 1u), (u32)(GROUP)), \
                                                  scale, out, out_f16, f16_scale, rope, splits ATTN_PROBE_ARG);         \
    }
ATTENTION_KERNEL(, ATTN_GROUP)
ATTENTION_ROPE_KERNEL(, ATTN_GROUP, ATTN_MAX_WARPS, false)
ATTENTION_KERNEL(_1, 1)
ATTENTION_ROPE_KERNEL(_1, 1, ATTN_MAX_WARPS, false)
ATTENTION_ROPE_KERNEL(_1w8, 1, ATTN_W8_WARPS, true)
#endif
