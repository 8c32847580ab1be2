// Shared by every kernel in kernels/: integer types, unaligned little-endian loads, half/bf16
// conversions done on bits (NVRTC is given no system headers, so no <cuda_fp16.h>), and the
// ggml block layouts, mirroring src/quant.
//
// Block structs are described by byte offsets rather than C structs: most blocks are 18, 22,
// 34, 110, 210 ... bytes long, so a block inside a tensor is generally not 2- or 4-byte aligned
// and a struct member load could fault or read wrong data. Read bytes (ld_u16/ld_u32) unless
// the alignment is proven.
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef short i16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;

__device__ __forceinline__ u32 ld_u16(const u8* p) { return (u32)p[0] | ((u32)p[1] << 8); }
__device__ __forceinline__ u32 ld_u32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
__device__ __forceinline__ u64 ld_u64(const u8* p) { return (u64)ld_u32(p) | ((u64)ld_u32(p + 4) << 32); }

// IEEE half -> float, exact. NaNs come out quiet with the payload kept, as the `half` crate and
// x86 F16C do, so CPU and GPU agree bit for bit.
__device__ __forceinline__ float f16_to_f32(u32 h) {
    u32 sign = (h & 0x8000u) << 16;
    u32 exp = (h >> 10) & 0x1fu;
    u32 man = h & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(man ? (sign | 0x7fc00000u | (man << 13)) : (sign | 0x7f800000u));
    if (exp == 0) {
        // Subnormal or zero: man * 2^-24 is exact in float.
        return __uint_as_float(sign | __float_as_uint(__fmul_rn(__uint2float_rn(man), 5.9604644775390625e-8f)));
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
}
__device__ __forceinline__ float ld_f16(const u8* p) { return f16_to_f32(ld_u16(p)); }

__device__ __forceinline__ float bf16_to_f32(u32 b) { return __uint_as_float(b << 16); }

// float -> half bits, round to nearest even (for activations stored as f16).
__device__ __forceinline__ u16 f32_to_f16(float f) {
    u32 x = __float_as_uint(f);
    u32 sign = (x >> 16) & 0x8000u;
    u32 exp = (x >> 23) & 0xffu;
    u32 man = x & 0x7fffffu;
    if (exp == 0xffu) return (u16)(sign | 0x7c00u | (man ? (0x200u | (man >> 13)) : 0u));
    int e = (int)exp - 127 + 15;
    if (e >= 0x1f) return (u16)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (u16)sign;
        man |= 0x800000u;
        u32 shift = (u32)(14 - e);
        u32 half_man = man >> shift;
        u32 rem = man & ((1u << shift) - 1u);
        u32 halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (half_man & 1u))) half_man++;
        return (u16)(sign | half_man);
    }
    u32 h = sign | ((u32)e << 10) | (man >> 13);
    u32 rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // may carry into exp: correct
    return (u16)h;
}

// RoPE's angle for pair i of a head of head_dim at position pos (already divided by the scale):
// pos * freq_base^(-2i / head_dim), in float64 as on the CPU, its sine and cosine rounded to float
// once (rope.cu, and attention.cu's decode variant).
__device__ __forceinline__ void rope_sincos(double pos, u32 i, u32 head_dim, float freq_base, float* sf, float* cf) {
    const double inv_freq = pow((double)freq_base, -2.0 * (double)i / (double)head_dim);
    double s, c;
    sincos(pos * inv_freq, &s, &c);
    *sf = (float)s;
    *cf = (float)c;
}

// RoPE's rotation of the pair (x0, x1) by (cf, sf), in the CPU's float32 operations (rope.cu,
// and attention.cu's decode variant).
__device__ __forceinline__ float2 rotated(float x0, float x1, float cf, float sf) {
    return make_float2(__fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf)), __fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf)));
}
// Pair (a, b) of a head rotated from src into dst.
__device__ __forceinline__ void rotate_pair(const float* src, float* dst, u32 a, u32 b, float cf, float sf) {
    const float2 r = rotated(src[a], src[b], cf, sf);
    dst[a] = r.x;
    dst[b] = r.y;
}

// ---- KV cache elements ----
// The KV cache holds float32, or f16 bits (kv_cache_dtype="float16": half the memory): keys
// after RoPE and values are rounded to nearest even as they are stored, and widened exactly as
// they are read, as the CPU's cache (src/backend/cpu/kv_cache.rs) does, so attention computes in
// float32 either way. Kernels that read the cache are compiled per element type (-DATTN_KV_F16=1
// makes kv_t the f16 one); those that only write it come in both (rope_store, kv_append).
// f16 bits -> float (the conversion instruction: exact, as f16_to_f32 but for NaN payloads).
__device__ __forceinline__ float f16_widen(u16 h) {
    float f;
    asm("{ .reg .f16 x; mov.b16 x, %1; cvt.f32.f16 %0, x; }" : "=f"(f) : "h"(h));
    return f;
}
// Element i of a row, widened to float (kv_load), or as stored and widened later (kv_widen).
__device__ __forceinline__ float kv_widen(float v) { return v; }
__device__ __forceinline__ float kv_widen(u16 h) { return f16_widen(h); }
__device__ __forceinline__ float kv_load(const float* p, u32 i) { return p[i]; }
__device__ __forceinline__ float kv_load(const u16* p, u32 i) { return f16_widen(p[i]); }
// Elements 4i .. 4i + 3 of a row (16- or 8-byte aligned), as stored (kv_raw4: a kernel holding
// rows before it uses them keeps f16 ones in half the registers) and widened (kv_load4).
template <typename C> struct KvRaw4;
template <> struct KvRaw4<float> { typedef float4 T; };
template <> struct KvRaw4<u16> { typedef uint2 T; };
__device__ __forceinline__ float4 kv_raw4(const float* p, u32 i) { return reinterpret_cast<const float4*>(p)[i]; }
__device__ __forceinline__ uint2 kv_raw4(const u16* p, u32 i) { return reinterpret_cast<const uint2*>(p)[i]; }
__device__ __forceinline__ float4 kv_widen4(float4 r) { return r; }
__device__ __forceinline__ float4 kv_widen4(uint2 b) {
    float4 f;
    asm("{ .reg .f16 a, b, c, d; mov.b32 {a, b}, %4; mov.b32 {c, d}, %5;\n\t"
        "cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; cvt.f32.f16 %2, c; cvt.f32.f16 %3, d; }"
        : "=f"(f.x), "=f"(f.y), "=f"(f.z), "=f"(f.w)
        : "r"(b.x), "r"(b.y));
    return f;
}
// kv_raw4 through L2 only (ld.global.cg), for rows read before a kernel's wait (attention.cu's
// preload): written by other SMs in earlier steps, they must not be answered by a line this SM's
// L1 kept from before they were written.
__device__ __forceinline__ float4 kv_raw4_cg(const float* p, u32 i) { return __ldcg(reinterpret_cast<const float4*>(p) + i); }
__device__ __forceinline__ uint2 kv_raw4_cg(const u16* p, u32 i) { return __ldcg(reinterpret_cast<const uint2*>(p) + i); }
__device__ __forceinline__ float4 kv_load4(const float* p, u32 i) { return kv_widen4(kv_raw4(p, i)); }
__device__ __forceinline__ float4 kv_load4(const u16* p, u32 i) { return kv_widen4(kv_raw4(p, i)); }
__device__ __forceinline__ u16 f16_rn(float v) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ void kv_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void kv_store(u16* p, float v) { *p = f16_rn(v); }
// v as a cache of element type T reads it back after storing it.
template <typename T> __device__ __forceinline__ float kv_stored(float v);
template <> __device__ __forceinline__ float kv_stored<float>(float v) { return v; }
template <> __device__ __forceinline__ float kv_stored<u16>(float v) { return f16_widen(f16_rn(v)); }
#ifndef ATTN_KV_F16
#define ATTN_KV_F16 0
#endif
#if ATTN_KV_F16
typedef u16 kv_t;
#else
typedef float kv_t;
#endif

// Largest finite f16.
#define F16_MAX 65504.0f

// The f16 bits of v * scale, as the cuBLAS path's activations are stored (matmul.rs): the scale is
// a power of two, so the product is exact and the only rounding is the f16's; finite values
// beyond the f16 range saturate at +-65504 rather than becoming infinities that would turn a
// whole output row into NaN, while an infinity or a NaN that came in stays one (an overflow
// upstream must not be hidden).
__device__ __forceinline__ u16 f16_scaled_bits(float v, float scale) {
    v = v * scale;
    if (fabsf(v) > F16_MAX && fabsf(v) < __int_as_float(0x7f800000)) v = copysignf(F16_MAX, v);
    return f32_to_f16(v);
}

// silu(g) * u = g / (1 + exp(-g)) * u in the CPU's float operations and order: SwiGLU, for
// swiglu and swiglu_f16 (elementwise.cu) and gemm_f16_rows_swiglu (gemm_f16_rows.cu).
__device__ __forceinline__ float silu_times(float g, float u) { return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u); }

// float -> bfloat16 bits, round to nearest even; NaN stays NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (u16)(x >> 16);
}

// ---- ggml block layouts ----
// Elements and bytes per block of every type are in FERRITE_BLOCK_TYPES (quant_blocks.cuh),
// checked against src/quant/types.rs; the decoders there name each field's byte offset.
#define QK_K 256

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, u32* sc, u32* m) {
    if (j < 4) {
        *sc = q[j] & 63u;
        *m = q[j + 4] & 63u;
    } else {
        *sc = (q[j + 4] & 0xfu) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q3_K: 6-bit signed scale k (0..15) from the 12 packed bytes, minus 32.
__device__ __forceinline__ int scale_q3_k(int k, const u8* s) {
    u32 low = k < 8 ? (s[k] & 0xfu) : (u32)(s[k - 8] >> 4);
    u32 high = (s[8 + (k & 3)] >> (2 * (k >> 2))) & 3u;
    return (int)(low | (high << 4)) - 32;
}

// IQ1_S/IQ1_M: offset added to every grid value.
#define IQ1S_DELTA 0.125f
#define IQ1M_DELTA 0.125f

__device__ __constant__ const i8 kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
// E2M1 values doubled; the E8M0 scale is halved to match.
__device__ __constant__ const i8 kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// E8M0 exponent byte -> 2^(e-128), i.e. half the block scale (see kvalues_mxfp4).
__device__ __forceinline__ float e8m0_to_f32_half(u32 e) {
    return __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1u) << 23));
}

// IQ2/IQ3 sign patterns: 7 stored bits, the 8th makes the count of set bits even.
__device__ __forceinline__ u32 ksigns_iq2xs(u32 i) { return i | ((__popc(i) & 1u) << 7); }

// ---- warp reductions (all 32 lanes must take part) ----
#define FULL_WARP 0xffffffffu

// for (u64 i = ...) over 0..n, grid-stride: any launch size covers any n.
#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    return v;
}
// The sum over each half-warp (lanes 0-15, 16-31), every lane getting its half's, added as
// offsets 8, 4, 2, 1 pair them: the norm fold's sums of 16 squares (norm.cu's norm_source and
// gemm_f16_rows.cu's producers must add them alike, so that either can feed a consumer).
__device__ __forceinline__ double half_warp_sum_f64(double v) {
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_WARP, v, o));
    return v;
}

// Kernels that are compiled once per weight type (embed.cu, matvec.cu) get the type from the
// host as -DQTYPE=<snake name> -DQ_BLOCK_ELEMS=<elements per block> -DQ_BLOCK_BYTES=<bytes per
// block>, all from the one table in src/quant/types.rs.
#define FERRITE_CAT2(a, b) a##b
#define FERRITE_CAT(a, b) FERRITE_CAT2(a, b)

// -infinity (NVRTC has no <math.h> INFINITY).
#define NEG_INF __uint_as_float(0xff800000u)

// Programmatic dependent launch (sm_90+; the host launches every kernel of kernels/ allowing
// it, see CudaContext::launch_raw): a kernel's blocks may start while the kernel before it on
// the stream still runs. Each kernel calls dependent_wait() before its first access to memory
// that an earlier kernel writes or reads (activations, caches, scratch; weights are constant and
// may be loaded before it). The wait returns once the previous kernel has completed and its
// writes are visible; then this kernel lets the next one start launching, so at most one
// kernel waits ahead of the running one. The one exception to "first access": the batch
// description (positions, slots, block tables, table offsets) is written only by a host copy that
// completes before the step's first kernel starts, so a kernel may read it before waiting
// (attention_heads_rope does, to compute its angles early; so is the table of weights that it and
// matvec_mma ask L2 for, uploaded at load), as may the sampler's kernels their
// parameters, whose copy the stream waits for before the first of them starts. The batch
// description's token ids are the exception to the exception: feed_drawn_tokens (sampling.cu)
// may write them, so they are read after waiting. A second exception: data whose last writer
// ran two or more kernels back, which has completed (only the kernel just before this one may
// still run), such as the KV cache rows of a decode step's earlier positions, which
// attention_heads_rope loads early (ATTN_PRELOAD, through L2: kv_raw4_cg; its own new row is
// read too and not used: the row is taken from shared memory after the wait). A block may return without waiting only if it touched
// nothing other kernels use, and at least one block of every grid must wait: the next kernel's
// wait covers this kernel only, so this kernel's completion must imply its predecessor's.
__device__ __forceinline__ void dependent_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Weights asked of L2 ahead of their use: a window of the decode step's weights in the order it
// reads them (src/backend/cuda/prefetch.rs), `len_bytes` bytes from byte `offset_bytes` of range
// `first` of the table's (address, bytes) pairs, wrapping from the last range to the first (the
// next step reads the first layer again). The host makes every range 16-byte aligned and a
// multiple of 16 bytes, and the window's offset and length multiples of 16 too. The window is split
// over every thread of the grid in chunks of PREFETCH_CHUNK_BYTES, one bulk prefetch (the TMA
// unit's) each. Weights are constant, so a kernel may do this before dependent_wait (the table
// is uploaded at load); a prefetch returns no data.
//
// PREFETCH_LINES=1: one prefetch.global.L2 a 128-byte line instead (chunks of 128 bytes), no
// bulk prefetches; for A/B (windows of either kind made the H100's decode steps slower,
// docs/BENCHMARKS.md, thirty-seventh session).
#ifndef PREFETCH_LINES
#define PREFETCH_LINES 0
#endif
#ifndef PREFETCH_CHUNK_BYTES
#define PREFETCH_CHUNK_BYTES (PREFETCH_LINES ? 128 : 4096)
#endif
static_assert(PREFETCH_CHUNK_BYTES > 0 && PREFETCH_CHUNK_BYTES % 16 == 0, "bulk prefetch sizes are 16-byte multiples");
struct PrefetchWindow {
    const u64* ranges;  // n_ranges (address, bytes) pairs; null: no window
    u32 n_ranges, first;
    u64 offset_bytes, len_bytes;
};
__device__ __forceinline__ void prefetch_window(const PrefetchWindow& w) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (w.ranges == nullptr || w.n_ranges == 0 || w.first >= w.n_ranges) return;
    const u64 n_threads = (u64)gridDim.x * gridDim.y * gridDim.z * blockDim.x * blockDim.y * blockDim.z;
    const u64 block = ((u64)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const u64 id = block * blockDim.x * blockDim.y * blockDim.z + ((u64)threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    // A thread past the window's chunks would issue nothing (each range's part is at most the window).
    if (id * PREFETCH_CHUNK_BYTES >= w.len_bytes) return;
    u64 left = w.len_bytes, off = w.offset_bytes;
    u32 r = w.first;
    // The next range's entry is loaded before this one's prefetches go out, so that the table's
    // round trips overlap instead of adding up.
    u64 base = w.ranges[2 * r], bytes = w.ranges[2 * r + 1];
    // At most every range once, and the first again (a window that starts inside it and wraps).
    for (u32 step = 0; left > 0 && step <= w.n_ranges; step++) {
        const u32 next = r + 1 == w.n_ranges ? 0 : r + 1;
        const u64 next_base = w.ranges[2 * next], next_bytes = w.ranges[2 * next + 1];
        const u64 part = min(bytes - min(off, bytes), left);
        for (u64 o = id * PREFETCH_CHUNK_BYTES; o < part; o += n_threads * PREFETCH_CHUNK_BYTES) {
            // No "memory" clobber: a prefetch changes nothing a later load could see.
#if PREFETCH_LINES
            asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off + o));
#else
            const u32 chunk_bytes = (u32)min((u64)PREFETCH_CHUNK_BYTES, part - o);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(base + off + o), "r"(chunk_bytes));
#endif
        }
        left -= part;
        off = 0;
        r = next, base = next_base, bytes = next_bytes;
    }
#endif
}

// One RMSNorm output: x times the row's 1 / rms, times the weight, each product rounded (norm.cu,
// and the matrix-vector kernels that fold the norm into their staging of x).
__device__ __forceinline__ float normed(float x, float inv, float w) { return __fmul_rn(__fmul_rn(x, inv), w); }
__device__ __forceinline__ float4 normed4(float4 x, float inv, float4 w) {
    return make_float4(normed(x.x, inv, w.x), normed(x.y, inv, w.y), normed(x.z, inv, w.z), normed(x.w, inv, w.w));
}

// The probe builds of the chain benches (attention.cu's ATTN_PROBE, matvec_mma.cu's FFN_PROBE):
// thread 0 of the block writes %globaltimer and clock64 at `point` (0..15) to probe[32 * block +
// point] and probe[32 * block + 16 + point], `block` being the block's linear index; a null probe
// writes nothing. Never called by the backend's kernels.
__device__ __forceinline__ void probe_stamp(u64* probe, int point) {
    if (probe == nullptr || threadIdx.x != 0) return;
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    const u64 block = ((u64)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    probe[32 * block + point] = t;
    probe[32 * block + 16 + point] = clock64();
}

// A projection's output: written, or added to what is there (the residual stream). The sum is
// old + value, as the separate add it replaces computed it.
__device__ __forceinline__ void put(float* y, float value, u32 accumulate) {
    *y = accumulate ? *y + value : value;
}

// SPLITK_FAST (1, the default): split_k_last's fences acquire / release and sum_splits' loads
// SPLITK_BATCH at a time, as the fused FFN's (split_k_last_acq_rel, sum_splits_batched: the same
// bits). H100, fifty-first session: the 0.5B shapes' decode step 0.616 / 0.612 -> 0.603 / 0.601 ms
// at one sequence, 0.634 / 0.637 -> 0.633 / 0.631 at two, 0.948 / 0.945 -> 0.944 / 0.936 at eight
// (docs/BENCHMARKS.md). -DSPLITK_FAST=0: __threadfence's sequentially consistent fences and four
// loads at a time, as before.
#ifndef SPLITK_FAST
#define SPLITK_FAST 1
#endif

// Split-K's hand-over (matvec_mma.cu, matmul_mma.cu): once a block has written its partial sums,
// whether it is the last of n_splits blocks to finish on *counter (s_last: a __shared__ word of
// the kernel's). Every thread of the block calls it. The last block then adds the splits
// (sum_splits) and resets the counter for the next launch.
__device__ __forceinline__ bool split_k_last_sc(u32* counter, u32 n_splits, u32& s_last) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1u) == n_splits - 1;
    __syncthreads();
    if (!s_last) return false;
    __threadfence();
    return true;
}
// The same with acquire / release fences instead of __threadfence's sequentially consistent ones
// (bench_ffn_chain.py: 0.1 us a launch of the fused FFN). Thread 0 alone fences, between the two
// barriers: its fence then releases what the block's other threads wrote before the first barrier
// (PTX orders a release pattern after what precedes it, the barrier included), and in the last
// block its acquire covers the other threads' reads after the second (as CUTLASS's barrier.h and
// cooperative groups' grid sync do). Fences in every thread before the first barrier, as the
// forty-ninth session's measured form had them, release only each thread's own writes, and no
// strong write of that thread follows them.
__device__ __forceinline__ bool split_k_last_acq_rel(u32* counter, u32 n_splits, u32& s_last) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
        const bool last = atomicAdd(counter, 1u) == n_splits - 1;
        if (last) asm volatile("fence.acq_rel.gpu;" ::: "memory");
        s_last = last;
    }
    __syncthreads();
    return s_last;
}
__device__ __forceinline__ bool split_k_last(u32* counter, u32 n_splits, u32& s_last) {
    return SPLITK_FAST ? split_k_last_acq_rel(counter, n_splits, s_last) : split_k_last_sc(counter, n_splits, s_last);
}

// src[0] + src[stride] + ... over n_splits partial sums, added in split order (so results do not
// depend on timing), four loads in flight, read through L2 (other blocks wrote them).
__device__ __forceinline__ float sum_splits_by4(const float* src, u64 stride, u32 n_splits) {
    float sum = 0.0f;
    u32 sp = 0;
    for (; sp + 4 <= n_splits; sp += 4) {
        const float a0 = __ldcg(src + sp * stride), a1 = __ldcg(src + (sp + 1) * stride);
        const float a2 = __ldcg(src + (sp + 2) * stride), a3 = __ldcg(src + (sp + 3) * stride);
        sum += a0;
        sum += a1;
        sum += a2;
        sum += a3;
    }
    for (; sp < n_splits; sp++) sum += __ldcg(src + sp * stride);
    return sum;
}
// The same sums (the same order from 0.0f, so the same bits) with B loads in flight at a time: a
// sum of up to B splits in one round trip to L2 (sum_splits_by4 takes three for three splits,
// seven for the fused FFN's nineteen slices: 0.36 us a launch there, bench_ffn_chain.py).
template <u32 B>
__device__ __forceinline__ float sum_splits_batched(const float* src, u64 stride, u32 n_splits) {
    float sum = 0.0f;
    for (u32 s0 = 0; s0 < n_splits; s0 += B) {
        float v[B];
#pragma unroll
        for (u32 i = 0; i < B; i++) v[i] = s0 + i < n_splits ? __ldcg(src + (s0 + i) * stride) : 0.0f;
#pragma unroll
        for (u32 i = 0; i < B; i++)
            if (s0 + i < n_splits) sum += v[i];
    }
    return sum;
}
#ifndef SPLITK_BATCH
#define SPLITK_BATCH 8
#endif
__device__ __forceinline__ float sum_splits(const float* src, u64 stride, u32 n_splits) {
    return SPLITK_FAST ? sum_splits_batched<SPLITK_BATCH>(src, stride, n_splits) : sum_splits_by4(src, stride, n_splits);
}
