// Drawing the next token of every row of logits on the GPU, as src/sampling defines the draw:
// penalties, then greedy (temperature 0) or temperature, top-k, top-p over what top-k kept,
// min-p, and a Gumbel-max draw whose noise is a function of (the draw's key, token id) --
// the same bits as src/sampling/noise.rs. Nothing sorts the vocabulary: top-k finds its boundary
// by radix selection (three counting passes over the row), top-p either sorts the few top-k
// survivors in shared memory or, without a small top-k, finds its boundary by radix selection
// over probability mass. Only the chosen token, its log-probability and the k best alternatives
// go back to the host.
//
// The kernels, in launch order: sample_chunks (a chunk of logits a block: penalties, each
// chunk's statistics and best tokens), sample_rows (one block of SAMPLE_THREADS threads a row:
// the draw from the chunk records, or a scan of the row), and for rows without top-k that the
// records do not settle, sample_mass (a block a chunk again) and a second sample_rows launch (the
// mass pass). Differences from the host sampler: ties exactly at a top-k or top-p boundary keep
// every tied token (the host keeps the lower ids), and sums run in another order (a token within
// rounding of the top-p boundary may go either way).
#include "common.cuh"

// -DSAMPLE_PROBE=1 (benches/probe_cuda_sampler.py only): the first block of each kernel writes
// clock64() at the end of each phase into g_probe[kernel][stamp] (0: sample_chunks, 1:
// sample_rows, its second launch from stamp 20 on, 2: sample_mass), after a __syncthreads, so
// that a draw's time can be taken apart. Compiled out otherwise: the kernels ferrite runs are the
// same instructions either way.
#ifndef SAMPLE_PROBE
#define SAMPLE_PROBE 0
#endif
#if SAMPLE_PROBE
__device__ unsigned long long g_probe[3][40];
#define PROBE(K, I)                                                                                  \
    do {                                                                                             \
        __syncthreads();                                                                             \
        if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) g_probe[K][I] = clock64();       \
    } while (0)
#define PROBE_NOSYNC(K, I)                                                                           \
    do {                                                                                             \
        if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) g_probe[K][I] = clock64();       \
    } while (0)
#else
#define PROBE(K, I) \
    do {            \
    } while (0)
#define PROBE_NOSYNC(K, I) \
    do {                   \
    } while (0)
#endif

// -DSAMPLE_MASS_EXPF=1: the one-block scan's top-p passes (step 4b) take each token's term from
// float expf instead of float64 exp (a few hundred cycles a token, over the whole row at the first
// pass), to time against the default (bench_cuda_sampler.py). Off: float64, as landed.
#ifndef SAMPLE_MASS_EXPF
#define SAMPLE_MASS_EXPF 0
#endif

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
// Top-k up to this takes the shared-memory path (its survivors are sorted in shared memory).
#define SMALL_K 1024
#define SORT_CAP 2048
// Alternatives returned for log-probabilities: at most 20 are asked for; ties may add some.
#define TOP_CAP 64
// Words of output per row: token, status, logprob bits, n_top, ids[TOP_CAP], logprobs[TOP_CAP].
#define OUT_WORDS (4 + 2 * TOP_CAP)
// The largest Gumbel noise (src/sampling/noise.rs GUMBEL_MAX).
#define GUMBEL_MAX 17.33f
#define NO_LOGPROBS 0xffffffffu

// Per row, 16 words (see src/backend/cuda/sampling.rs):
struct RowParams {
    float temperature;   // 0: greedy
    u32 top_k;           // 0: off
    float top_p;         // 1: off
    float min_p;         // 0: off
    float repetition;    // 1: off
    float presence;
    float frequency;
    u32 n_penalty;       // penalty entries of this row
    u32 penalty_offset;  // first entry in the penalty arrays
    u32 logprobs;        // NO_LOGPROBS, or how many alternatives (0..20)
    u32 key_lo, key_hi;  // the draw's key (noise::draw_key on the host)
    float ln_min_p;      // ln(min_p) rounded to f32 as the host does; -inf when off
    u32 pad0, pad1, pad2;
};

// Order-preserving map of a float to u32 (larger float, larger key); -inf is the smallest
// non-NaN key.
__device__ __forceinline__ u32 fkey(float f) {
    const u32 b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// splitmix64's finalizer (noise::mix64).
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// noise::gumbel: -ln(-ln(u)) in f64 with u = (24 random bits + 0.5) / 2^24, rounded to f32.
__device__ __forceinline__ float gumbel(u64 key, u32 id) {
    const u64 h = mix64(key ^ ((u64)id * 0xD1B54A32D192ED03ull));
    const double u = ((double)(h >> 40) + 0.5) * (1.0 / 16777216.0);
    return (float)(-log(-log(u)));
}

// gumbel() in float, within GUMBEL_APPROX_TOL of it for every uniform: -ln(u) comes from logf
// of u itself below 1/2 and from log1pf of u - 1 above (there -ln(u) is tiny and u - 1 keeps its
// bits); both arguments are exact in float. (Measured error bound: a few 1e-6.)
#define GUMBEL_APPROX_TOL 1e-3f
__device__ __forceinline__ float gumbel_approx(u64 key, u32 id) {
    const u64 h = mix64(key ^ ((u64)id * 0xD1B54A32D192ED03ull));
    const u32 k = (u32)(h >> 40);
    const float neg_ln_u = k < (1u << 23) ? -logf(((float)k + 0.5f) * (1.0f / 16777216.0f))
                                          : -log1pf(-((float)(16777215u - k) + 0.5f) * (1.0f / 16777216.0f));
    return -logf(neg_ln_u);
}

// ---- row scans

// Calls f(i, l[i]) for every i < n, each thread taking its share: SCAN_BATCH float4 loads
// (16 values) in flight per thread before any is used. One block reads a whole row (151,936
// values for Qwen2) several times per draw; with one load at a time a pass was bound by load
// latency (~40 us a pass on an H200), with 16 in flight by the SM's bandwidth. f runs with some
// lanes of a warp inactive at a row's end: warp collectives inside it must use __activemask().
#define SCAN_BATCH 4
template <typename F>
__device__ __forceinline__ void scan_row(const float* __restrict__ l, u32 n, F f) {
    if ((reinterpret_cast<u64>(l) & 15) == 0) {
        const float4* l4 = reinterpret_cast<const float4*>(l);
        const u32 n4 = n / 4;
        for (u32 base = 0; base < n4; base += SCAN_BATCH * SAMPLE_THREADS) {
            float4 v[SCAN_BATCH];
#pragma unroll
            for (int u = 0; u < SCAN_BATCH; u++) {
                const u32 j = base + u * SAMPLE_THREADS + threadIdx.x;
                v[u] = j < n4 ? l4[j] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int u = 0; u < SCAN_BATCH; u++) {
                const u32 j = base + u * SAMPLE_THREADS + threadIdx.x;
                if (j < n4) {
                    f(4 * j, v[u].x);
                    f(4 * j + 1, v[u].y);
                    f(4 * j + 2, v[u].z);
                    f(4 * j + 3, v[u].w);
                }
            }
        }
        for (u32 i = 4 * n4 + threadIdx.x; i < n; i += SAMPLE_THREADS) f(i, l[i]);
    } else {
        // Rows of a vocabulary that is not a multiple of 4 floats: four scalar loads in flight.
        for (u32 base = 0; base < n; base += 4 * SAMPLE_THREADS) {
            float v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const u32 i = base + u * SAMPLE_THREADS + threadIdx.x;
                v[u] = i < n ? l[i] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const u32 i = base + u * SAMPLE_THREADS + threadIdx.x;
                if (i < n) f(i, v[u]);
            }
        }
    }
}

// ---- block reductions (every thread calls, every thread gets the result) ----

template <int NW = SAMPLE_WARPS>
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    v = warp_sum_f64(v);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < NW ? scratch[lane] : 0.0;
    t = warp_sum_f64(t);
    return t;
}

template <int NW = SAMPLE_WARPS>
__device__ __forceinline__ u32 block_sum_u32(u32 v, u32* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 t = lane < NW ? scratch[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_WARP, t, o);
    return t;
}

template <int NW = SAMPLE_WARPS>
__device__ __forceinline__ u32 block_min_u32(u32 v, u32* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(FULL_WARP, v, o));
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 t = lane < NW ? scratch[lane] : 0xffffffffu;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t = min(t, __shfl_xor_sync(FULL_WARP, t, o));
    return t;
}

// The better of two (score, id) pairs: higher score, then lower id. An id of 0xffffffff is "none".
__device__ __forceinline__ void better(float& s, u32& id, float s2, u32 id2) {
    if (id2 != 0xffffffffu && (id == 0xffffffffu || s2 > s || (s2 == s && id2 < id))) {
        s = s2;
        id = id2;
    }
}

template <int NW = SAMPLE_WARPS>
__device__ __forceinline__ void block_best(float& s, u32& id, float* sc_s, u32* sc_id) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float s2 = __shfl_xor_sync(FULL_WARP, s, o);
        const u32 id2 = __shfl_xor_sync(FULL_WARP, id, o);
        better(s, id, s2, id2);
    }
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) {
        sc_s[warp] = s;
        sc_id[warp] = id;
    }
    __syncthreads();
    s = lane < NW ? sc_s[lane] : 0.0f;
    id = lane < NW ? sc_id[lane] : 0xffffffffu;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float s2 = __shfl_xor_sync(FULL_WARP, s, o);
        const u32 id2 = __shfl_xor_sync(FULL_WARP, id, o);
        better(s, id, s2, id2);
    }
}

// Step 4b (top-p without a small top-k) adds each radix bin's probability mass in fixed point,
// two u32 words a bin (the low word's carry into the high one), with the shared memory's native
// 32-bit atomics, each thread first adding its run of tokens that fall in one bin. float64
// atomicAdd into the bins runs on sm_90 as a compare-and-swap loop; a flat row's tokens land in a
// few bins, and such a draw took 2.0 ms against 0.40 now (H200, 2026-12-05,
// bench_cuda_sampler.py). Integer sums are also exact and independent of the threads' order, and
// of how the tokens are split among blocks (sample_mass adds the first level's bins of a row's
// chunks in blocks of their own).
//
// The digits of a key that the levels select, high to low: 10, 11 and 11 bits. The first level's
// 1,024 bins are what sample_mass keeps per chunk.
#define MASS_SHIFT_0 22
#define MASS_BINS_0 1024
#define MASS_BINS_MAX 2048
#define NONE_BIN 0xffffffffu

struct Shared {
    u32 hist[2048];
    double red_f64[SAMPLE_WARPS];
    u64 red_u64[SAMPLE_WARPS];
    u32 red_u32[SAMPLE_WARPS];
    float red_s[SAMPLE_WARPS];
    u32 red_id[SAMPLE_WARPS];
    u32 bcast[4];
    u64 bcast_u64;
    float sort_s[SORT_CAP];
    u32 sort_id[SORT_CAP];
    union {
        // exp(sort_s[j] - max_s) in float64, for the top-p sums (mass_terms).
        double term[SORT_CAP];
        // Step 4b's bins, never in use at the same time as term.
        struct {
            u32 lo[MASS_BINS_MAX], hi[MASS_BINS_MAX];
        } mass;
    };
    u32 n_gathered;
};

// Fraction bits of a token's fixed-point mass term: a term exp(s - max_s) is at most 1, so vocab
// terms fit below 2^63 with 63 - bits(vocab) fraction bits (45 for 151,936 tokens): a term is kept
// to 2^-46, the sums exactly.
__device__ __forceinline__ int mass_frac_bits(u32 vocab) {
    return 63 - (32 - __clz(vocab));
}
__device__ __forceinline__ u64 mass_term(float s, float max_s, double unit) {
    return __double2ull_rn((SAMPLE_MASS_EXPF ? (double)expf(s - max_s) : exp((double)(s - max_s))) * unit);
}
// Adds x into the fixed-point bin b (lo / hi words) with two 32-bit atomics.
__device__ __forceinline__ void add_mass(u32* lo, u32* hi, u32 b, u64 x) {
    if (x == 0) return;
    const u32 xl = (u32)x, old = atomicAdd(&lo[b], xl);
    const u32 xh = (u32)(x >> 32) + (old + xl < old ? 1u : 0u);
    if (xh != 0) atomicAdd(&hi[b], xh);
}
__device__ __forceinline__ u64 bin_mass(const u32* lo, const u32* hi, u32 b) {
    return ((u64)hi[b] << 32) | lo[b];
}

// A Gumbel score and its token packed so that the larger u64 is `better`'s better pair (higher
// score, then lower id); 0 is "none". -0 counts as +0, as in a float comparison.
__device__ __forceinline__ u64 pack_score(float a, u32 id) {
    return ((u64)fkey(a + 0.0f) << 32) | (u64)(~id);
}

// The largest u64 over the block. Call with every thread.
__device__ __forceinline__ u64 block_max_u64(u64 v, u64* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, (u64)__shfl_xor_sync(FULL_WARP, (unsigned long long)v, o));
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u64 t = lane < SAMPLE_WARPS ? scratch[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t = max(t, (u64)__shfl_xor_sync(FULL_WARP, (unsigned long long)t, o));
    return t;
}

// One level of step 4b's selection: the bin where the mass summed from the top bin down (after
// `above`, the mass of the keys above this level's prefix) first reaches the target. Thread j
// holds the masses m[0..per) of bins nbins - 1 - per * j - i (per = nbins / SAMPLE_THREADS, 1 or
// 2), whose exclusive prefix sums in that order come from one block scan of exact integers; the
// one bin whose sums before and after it straddle the target in float64 is chosen (the sums are
// monotone, so there is one). On the first level the target is set to top_p of the total. Returns
// the bin and updates `above` to the mass above it; no bin (the target out of reach, which exact
// sums rule out) keeps everything below: bin 0, `above` unchanged. Call with every thread.
__device__ u32 select_mass_bin(const u64* m, int per, u32 nbins, bool first, float top_p, double inv_unit,
                               u64& above, double& target, Shared& sh) {
    u64 own = 0;
    for (int i = 0; i < per; i++) own += m[i];
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    u64 incl = own;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 up = __shfl_up_sync(FULL_WARP, (unsigned long long)incl, o);
        if (lane >= (u32)o) incl += up;
    }
    __syncthreads();
    if (lane == 31) sh.red_u64[warp] = incl;
    if (threadIdx.x == 0) sh.bcast[3] = NONE_BIN;
    __syncthreads();
    u64 before = 0, total = 0;
    for (u32 w = 0; w < SAMPLE_WARPS; w++) {
        if (w < warp) before += sh.red_u64[w];
        total += sh.red_u64[w];
    }
    if (first) target = (double)top_p * ((double)total * inv_unit);
    u64 cum = above + before + incl - own;
    for (int i = 0; i < per; i++) {
        const u64 next = cum + m[i];
        if ((double)cum * inv_unit < target && (double)next * inv_unit >= target) {
            sh.bcast[3] = nbins - 1 - per * threadIdx.x - i;
            sh.bcast_u64 = cum;
        }
        cum = next;
    }
    __syncthreads();
    u32 b = sh.bcast[3];
    if (b != NONE_BIN) {
        above = sh.bcast_u64;
    } else {
        b = 0;
    }
    __syncthreads();
    return b;
}

// Inclusive prefix sum of v over the block's threads in thread order. Call with every thread.
__device__ __forceinline__ u32 block_inclusive_scan_u32(u32 v, u32* scratch) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 up = __shfl_up_sync(FULL_WARP, v, o);
        if (lane >= (u32)o) v += up;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = v;
    __syncthreads();
    u32 before = 0;
    for (u32 w = 0; w < warp; w++) before += scratch[w];
    return v + before;
}

// Sorts sh.sort_s / sort_id[0..n) best first (n <= SORT_CAP): a bitonic sort of the next power
// of two, padded with "none" entries, which sort last. Call with every thread.
__device__ void sort_best_first(Shared& sh, u32 n) {
    u32 size = 1;
    while (size < n) size <<= 1;
    for (u32 j = n + threadIdx.x; j < size; j += SAMPLE_THREADS) {
        sh.sort_s[j] = NEG_INF;
        sh.sort_id[j] = 0xffffffffu;
    }
    __syncthreads();
    for (u32 k2 = 2; k2 <= size; k2 <<= 1) {
        for (u32 j = k2 >> 1; j > 0; j >>= 1) {
            for (u32 i = threadIdx.x; i < size; i += SAMPLE_THREADS) {
                const u32 partner = i ^ j;
                if (partner > i) {
                    const float si = sh.sort_s[i], sp = sh.sort_s[partner];
                    const u32 ii = sh.sort_id[i], ip = sh.sort_id[partner];
                    // "i before partner" in best-first order: the larger key (fkey's order, the
                    // one top-k and the chunk lists rank by: -0 below +0), then the lower id.
                    const u32 ki = fkey(si), kp = fkey(sp);
                    const bool i_first = ii != 0xffffffffu && (ip == 0xffffffffu || ki > kp || (ki == kp && ii < ip));
                    const bool ascending_block = (i & k2) == 0;
                    if (i_first != ascending_block) {
                        sh.sort_s[i] = sp;
                        sh.sort_s[partner] = si;
                        sh.sort_id[i] = ip;
                        sh.sort_id[partner] = ii;
                    }
                }
            }
            __syncthreads();
        }
    }
}

// The key of the k-th largest key (1-based) among key_of(i, l[i]) >= floor_key, by radix selection:
// digits of 11, 11 and 10 bits, one counting pass each. Call with every thread.
//
// The bin holding the k-th key is found by a prefix sum over the bins, not by one thread walking
// them. Lanes that hit the same bin each add to it: a row's logits share a few exponents, so
// they often do, yet aggregating them first (match_any) was slower (H200, 2026-12-04: the chunk
// pass 39.6 -> 26.5 us and a row scanned by one block 220 -> 101 us without it;
// benches/bench_cuda_sampler.py).
template <typename KeyOf>
__device__ u32 kth_largest_key(const float* __restrict__ l, u32 n, u32 k, u32 floor_key, KeyOf key_of, Shared& sh) {
    u32 prefix = 0, mask = 0, remaining = k;
    const int shifts[3] = {21, 10, 0};
    const int bits[3] = {11, 11, 10};
#pragma unroll
    for (int level = 0; level < 3; level++) {
        const u32 nbins = 1u << bits[level];
        for (u32 b = threadIdx.x; b < nbins; b += SAMPLE_THREADS) sh.hist[b] = 0;
        __syncthreads();
        scan_row(l, n, [&](u32 i, float v) {
            const u32 kk = key_of(i, v);
            const u32 bin = kk >= floor_key && (kk & mask) == prefix ? (kk >> shifts[level]) & (nbins - 1) : 0xffffffffu;
            if (bin != 0xffffffffu) atomicAdd(&sh.hist[bin], 1u);
        });
        __syncthreads();
        // Thread t owns bins nbins-1-t*per .. nbins-per-t*per (descending), so the scan's order
        // is the keys' order from the largest down.
        const u32 per = (nbins + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
        u32 local = 0;
        for (u32 j = 0; j < per; j++) {
            const u32 r = threadIdx.x * per + j;
            if (r < nbins) local += sh.hist[nbins - 1 - r];
        }
        const u32 incl = block_inclusive_scan_u32(local, sh.red_u32);
        const u32 excl = incl - local;
        if (local > 0 && excl < remaining && remaining <= incl) {
            u32 cum = excl;
            for (u32 j = 0; j < per; j++) {
                const u32 b = nbins - 1 - (threadIdx.x * per + j);
                if (cum + sh.hist[b] >= remaining) {
                    sh.bcast[0] = b;
                    sh.bcast[1] = remaining - cum;
                    break;
                }
                cum += sh.hist[b];
            }
        } else if (threadIdx.x == SAMPLE_THREADS - 1 && incl < remaining) {
            // Fewer keys than k: the whole range (only reached on inconsistent counts).
            sh.bcast[0] = 0;
            sh.bcast[1] = remaining - incl;
        }
        __syncthreads();
        prefix |= sh.bcast[0] << shifts[level];
        mask |= (nbins - 1) << shifts[level];
        remaining = sh.bcast[1];
        __syncthreads();
    }
    return prefix;
}

// ---- the chunk pass: many blocks a row, so that common draws need not scan a row with one block

// A row is cut into chunks of `chunk_elems` values (the host's choice: a multiple of
// CHUNK_THREADS up to CHUNK_ELEMS, and at most CHUNKS_MAX chunks a row), one block of
// CHUNK_THREADS each (19 blocks of 8,192 for Qwen2's 151,936, or 30 of 5,120 where a launch's
// rows would leave most SMs idle). Each applies the penalties of its own tokens, then records the chunk's best
// logit, finite count, first broken value, the sum of exp(s - chunk max) over its scaled logits s,
// its CHUNK_LIST best tokens (exactly, by radix selection in shared memory; sorted best first) and,
// for a draw with no filter, its Gumbel-max winner. sample_rows then draws from these records (draw_from_chunks)
// whenever they settle the draw exactly; otherwise it scans the (already penalized) row itself.
// 512 threads a chunk rather than 256: each thread's share of a chunk's loads and histogram is
// half as long, which is what bounds one to eight rows (H200, 2026-12-04, bench_cuda_sampler.py:
// T 0.8, top-k 40, top-p 0.95, min-p 0.05 at 1 / 8 rows 51.0 / 52.9 -> 42.8 / 46.6 us; 64 rows
// 101 -> 108 us, where 1,216 blocks fill the GPU either way).
#define CHUNK_THREADS 512
#define CHUNK_WARPS (CHUNK_THREADS / 32)
// The most values a chunk holds (sample_chunks' shared keys).
#define CHUNK_ELEMS 8192
#define CHUNK_LIST 64
// Words per chunk record: best logit bits, best id, finite, broken, z (f64: 2 words), chunk max
// of s (bits), listed_above (every key > it is listed), n_list, Gumbel winner score bits and id,
// 5 pad, ids[CHUNK_LIST], s bits[CHUNK_LIST].
#define CHUNK_WORDS (16 + 2 * CHUNK_LIST)
// The lists of a row's chunks must fit the sort buffer.
#define CHUNKS_MAX (SORT_CAP / CHUNK_LIST)
#define NONE 0xffffffffu

// fkey's inverse.
__device__ __forceinline__ float fkey_inv(u32 k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Sorting 64 entries in a warp's registers, two a lane, by bitonic networks (a chunk's list in
// sample_chunks, the merge of the chunks' lists in sample_rows: no __syncthreads, unlike a
// block-wide sort).
//
// An entry's place in best-first order as one u64 (the order sort_best_first sorts by: fkey's,
// -0 below +0, then the lower id), from its key (fkey of its value) or its value; 0 for "none",
// which sorts last.
__device__ __forceinline__ u64 rank_of_key(u32 key, u32 id) { return ((u64)key << 32) | (u64)(~id); }
__device__ __forceinline__ u64 rank_of(float s, u32 id) { return id == NONE ? 0ull : rank_of_key(fkey(s), id); }
// A rank's entry back: its value (fkey_inv of the key) and its id.
__device__ __forceinline__ float rank_value(u64 r) { return fkey_inv((u32)(r >> 32)); }
__device__ __forceinline__ u32 rank_id(u64 r) { return ~(u32)r; }

// One step of a bitonic network over a warp's 64 entries, two a lane (entry `lane` in a,
// `lane + 32` in b): entries e and e ^ j are compared, and the lower one keeps the larger where
// its half (desc_a, desc_b) is descending. Call with every lane.
__device__ __forceinline__ void bitonic_step64(u64& a, u64& b, u32 j, bool desc_a, bool desc_b) {
    if (j == 32) {
        const u64 hi = max(a, b), lo = min(a, b);
        a = desc_a ? hi : lo;
        b = desc_a ? lo : hi;
        return;
    }
    const u64 pa = __shfl_xor_sync(FULL_WARP, a, j), pb = __shfl_xor_sync(FULL_WARP, b, j);
    const bool lower = (threadIdx.x & j) == 0;
    a = lower == desc_a ? max(a, pa) : min(a, pa);
    b = lower == desc_b ? max(b, pb) : min(b, pb);
}

// Sorts a warp's 64 entries largest first. Call with every lane.
__device__ __forceinline__ void warp_sort64(u64& a, u64& b) {
    const u32 lane = threadIdx.x % 32;
#pragma unroll
    for (u32 k2 = 2; k2 <= 64; k2 <<= 1) {
#pragma unroll
        for (u32 j = k2 >> 1; j > 0; j >>= 1) bitonic_step64(a, b, j, (lane & k2) == 0, ((lane + 32) & k2) == 0);
    }
}

// The 64 largest of the warp's sorted entries and `other`'s (64, sorted largest first), sorted:
// the larger of entry i and other's entry 63 - i is a bitonic sequence holding them, which one
// merge network sorts. Call with every lane.
__device__ __forceinline__ void warp_merge64(u64& a, u64& b, const u64* other) {
    const u32 lane = threadIdx.x % 32;
    a = max(a, other[63 - lane]);
    b = max(b, other[31 - lane]);
#pragma unroll
    for (u32 j = 32; j > 0; j >>= 1) bitonic_step64(a, b, j, true, true);
}


// A draw at temperature > 0 with no filter: the chunks find their Gumbel-max winners themselves.
__device__ __forceinline__ bool plain_draw(const RowParams& p) {
    return p.temperature != 0.0f && p.top_k == 0 && !(p.top_p < 1.0f) && !(p.min_p > 0.0f);
}

// What the chunk records must hold for a row's draw: the chunks' lists (a filter, or
// alternatives asked for) and their sums of exp(s - max) (log-probabilities, or top-p's total
// mass where the row's top-p survivors may reach past the listed tokens). A greedy or unfiltered
// draw needs neither, and its chunk pass is one read of the chunk.
// Top-p after a top-k of at most CHUNK_LIST takes its total from the listed survivors, never from
// z: either top-k is below the row's finite count (draw_from_chunks's `has_k`: the total is the
// k survivors' terms), or the row has at most CHUNK_LIST finite tokens, so every chunk lists all
// of its own and tau is 0 (`bounded`: the total is the listed terms again; the early decline,
// the only other reader of z, needs tau != 0). So such a draw skips the z pass (a loop of expf
// over the chunk and a float64 block reduction on the chunk pass's critical path; 1.7 us of a
// 15.1 us chunk pass at 8,192 a chunk, thirty-eighth session's probe) and reduce_records' z loop.
// -DSAMPLE_Z_ALWAYS=1: every top-p draw takes z, as before (fifty-seventh session), for A/B on a GPU.
#ifndef SAMPLE_Z_ALWAYS
#define SAMPLE_Z_ALWAYS 0
#endif
__device__ __forceinline__ bool top_p_needs_z(const RowParams& p) {
    return p.top_p < 1.0f && (SAMPLE_Z_ALWAYS || !(p.top_k > 0 && p.top_k <= CHUNK_LIST));
}
struct ChunkNeeds {
    bool lists, z;
};
__device__ __forceinline__ ChunkNeeds chunk_needs(const RowParams& p) {
    const bool greedy = p.temperature == 0.0f;
    const bool want_lp = p.logprobs != NO_LOGPROBS;
    const bool filtered = !greedy && !plain_draw(p);
    return ChunkNeeds{filtered || (want_lp && p.logprobs > 0), want_lp || (filtered && top_p_needs_z(p))};
}

// The penalties of the tokens in [lo, hi), in place, in the host's float order.
__device__ __forceinline__ void apply_penalties(float* l, u32 lo, u32 hi, const RowParams& p, const u32* pen_ids,
                                                const u32* pen_counts, const u32* pen_in_prompt, u32 threads) {
    for (u32 e = threadIdx.x; e < p.n_penalty; e += threads) {
        const u32 id = pen_ids[p.penalty_offset + e];
        if (id < lo || id >= hi) continue;
        const u32 count = pen_counts[p.penalty_offset + e];
        float v = l[id];
        if (p.repetition != 1.0f && (count > 0 || pen_in_prompt[p.penalty_offset + e])) v = v > 0.0f ? v / p.repetition : v * p.repetition;
        if (count > 0 && (p.presence != 0.0f || p.frequency != 0.0f)) v -= p.presence + p.frequency * (float)count;
        l[id] = v;
    }
}

// A key t such that exactly the k largest of key_at(0..n) are >= t, ties with the k-th
// included (1-based; keys 0 excluded; k <= the count of nonzero keys): the k-th largest itself,
// or the lowest key of a radix bin that holds only wanted keys, whichever the selection reaches
// first. By the radix selection of kth_largest_key on keys the block already holds (in shared
// memory), with THREADS threads (at most 1024); bcast holds 3 words. Call with every thread of the
// block.
template <u32 THREADS, typename KeyAt>
__device__ u32 block_kth_key(KeyAt key_at, u32 n, u32 k, u32* hist, u32* scratch, u32* bcast) {
    u32 prefix = 0, mask = 0, remaining = k;
    const int shifts[3] = {21, 10, 0};
    const int bits[3] = {11, 11, 10};
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int level = 0; level < 3; level++) {
        const u32 nbins = 1u << bits[level];
        for (u32 b = threadIdx.x; b < nbins; b += THREADS) hist[b] = 0;
        if (threadIdx.x == 0) bcast[2] = 0;
        __syncthreads();
        for (u32 j = threadIdx.x; j < n; j += THREADS) {
            const u32 kk = key_at(j);
            if (kk != 0 && (kk & mask) == prefix) atomicAdd(&hist[(kk >> shifts[level]) & (nbins - 1)], 1u);
        }
        __syncthreads();
        // Thread t owns bins nbins-1-t*per .. (descending); an inclusive scan finds the k-th.
        const u32 per = nbins / THREADS;
        u32 local = 0;
        for (u32 j = 0; j < per; j++) local += hist[nbins - 1 - (threadIdx.x * per + j)];
        u32 incl = local;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const u32 up = __shfl_up_sync(FULL_WARP, incl, o);
            if (lane >= (u32)o) incl += up;
        }
        if (lane == 31) scratch[warp] = incl;
        __syncthreads();
        for (u32 w = 0; w < warp; w++) incl += scratch[w];
        const u32 excl = incl - local;
        if (local > 0 && excl < remaining && remaining <= incl) {
            u32 cum = excl;
            for (u32 j = 0; j < per; j++) {
                const u32 b = nbins - 1 - (threadIdx.x * per + j);
                if (cum + hist[b] >= remaining) {
                    bcast[0] = b;
                    bcast[1] = remaining - cum;
                    bcast[2] = hist[b] == remaining - cum;
                    break;
                }
                cum += hist[b];
            }
        }
        __syncthreads();
        prefix |= bcast[0] << shifts[level];
        mask |= (nbins - 1) << shifts[level];
        remaining = bcast[1];
        const bool whole_bin = bcast[2] && level < 2 && prefix != 0;
        __syncthreads();
        // Every key of the bin is wanted: the k keys at or above its lowest key are the k best,
        // so that key serves as the k-th (no other key lies between it and the k-th: the bin
        // holds only wanted keys); the remaining passes are skipped (for the chunk lists of a
        // trained model's logits, the second level's bins mostly hold one key each).
        if (whole_bin) return prefix;
    }
    return prefix;
}

// block_best, block_sum_u32 and block_min_u32 of a chunk's best (value, id), finite count and
// first broken id at once, through one barrier instead of three (each scratch its own array):
// each warp folds its lanes' (chunk_stats_over_warp), then every warp the warps'. Call with every
// thread.
__device__ __forceinline__ void chunk_stats_over_warp(float& best_v, u32& best_id, u32& finite, u32& broken) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float s2 = __shfl_xor_sync(FULL_WARP, best_v, o);
        const u32 id2 = __shfl_xor_sync(FULL_WARP, best_id, o);
        better(best_v, best_id, s2, id2);
        finite += __shfl_xor_sync(FULL_WARP, finite, o);
        broken = min(broken, __shfl_xor_sync(FULL_WARP, broken, o));
    }
}
__device__ __forceinline__ void chunk_stats_over_block(float& best_v, u32& best_id, u32& finite, u32& broken, float* sc_s,
                                                      u32* sc_id, u32* sc_sum, u32* sc_min) {
    chunk_stats_over_warp(best_v, best_id, finite, broken);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sc_s[warp] = best_v, sc_id[warp] = best_id, sc_sum[warp] = finite, sc_min[warp] = broken;
    __syncthreads();
    best_v = lane < CHUNK_WARPS ? sc_s[lane] : 0.0f;
    best_id = lane < CHUNK_WARPS ? sc_id[lane] : NONE;
    finite = lane < CHUNK_WARPS ? sc_sum[lane] : 0u;
    broken = lane < CHUNK_WARPS ? sc_min[lane] : NONE;
    chunk_stats_over_warp(best_v, best_id, finite, broken);
}

extern "C" __global__ void __launch_bounds__(CHUNK_THREADS)
    sample_chunks(float* __restrict__ logits, u32 vocab, const RowParams* __restrict__ params,
                  const u32* __restrict__ pen_ids, const u32* __restrict__ pen_counts, const u32* __restrict__ pen_in_prompt,
                  u32* __restrict__ chunks, u32 chunk_elems) {
    PROBE_NOSYNC(0, 0);
    __shared__ u32 keys[CHUNK_ELEMS];  // fkey of each scaled logit; 0 for -inf and broken values
    __shared__ u32 hist[2048];
    __shared__ u32 red_u32[CHUNK_WARPS], red_min[CHUNK_WARPS];
    __shared__ float red_s[CHUNK_WARPS];
    __shared__ u32 red_id[CHUNK_WARPS];
    __shared__ double red_f64[CHUNK_WARPS];
    __shared__ u32 bcast[3];
    __shared__ u32 n_listed;
    const u32 c = blockIdx.x, row = blockIdx.y;
    // The parameters come from a copy that the stream waited for before this launch
    // (sampling.rs): they may be read before the wait.
    const RowParams p = params[row];
    dependent_wait();
    float* l = logits + (u64)row * vocab;
    u32* rec = chunks + ((u64)row * gridDim.x + c) * CHUNK_WORDS;
    const u32 c0 = c * chunk_elems;
    const u32 n = min(min(chunk_elems, (u32)CHUNK_ELEMS), vocab - c0);

    apply_penalties(l, c0, c0 + n, p, pen_ids, pen_counts, pen_in_prompt, CHUNK_THREADS);
    __syncthreads();
    PROBE(0, 1);

    const float t = p.temperature == 0.0f ? 1.0f : p.temperature;
    float best_v = 0.0f;
    u32 best_id = NONE, finite = 0, broken = NONE;
    // Every load of the thread's share issued before the first value is used: the division
    // below calls a slow path that the compiler does not move loads across, so a loop of load
    // and use waited out one round trip a value (H100: 8,800 cycles, 4.4 us, of a 15 us chunk pass).
    constexpr u32 PER_THREAD = CHUNK_ELEMS / CHUNK_THREADS;
    static_assert(CHUNK_ELEMS % CHUNK_THREADS == 0, "whole shares");
    float vals[PER_THREAD];
#pragma unroll
    for (u32 u = 0; u < PER_THREAD; u++) {
        const u32 j = threadIdx.x + u * CHUNK_THREADS;
        vals[u] = j < n ? l[c0 + j] : 0.0f;
    }
#pragma unroll
    for (u32 u = 0; u < PER_THREAD; u++) {
        const u32 j = threadIdx.x + u * CHUNK_THREADS;
        if (j >= n) break;
        const float v = vals[u];
        u32 kk = 0;
        if (v != v || v == __uint_as_float(0x7f800000u)) {
            broken = min(broken, c0 + j);
        } else if (v != NEG_INF) {
            finite++;
            better(best_v, best_id, v, c0 + j);
            kk = fkey(v / t);
        }
        keys[j] = kk;
    }
    PROBE(0, 2);
    chunk_stats_over_block(best_v, best_id, finite, broken, red_s, red_id, red_u32, red_min);
    const float cmax = best_id != NONE ? best_v / t : 0.0f;
    const ChunkNeeds needs = chunk_needs(p);
    PROBE(0, 3);

    double z = 0.0;
    if (needs.z) {
        for (u32 j = threadIdx.x; j < n; j += CHUNK_THREADS)
            if (keys[j] != 0) z += (double)expf(fkey_inv(keys[j]) - cmax);
        z = block_sum_f64<CHUNK_WARPS>(z, red_f64);
    }
    PROBE(0, 4);

    // The chunk's Gumbel-max winner for a draw with no filter (see step 5 of sample_rows).
    float gs = 0.0f;
    u32 gid = NONE;
    if (plain_draw(p) && best_id != NONE) {
        const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
        const float bound = cmax + gumbel(key, best_id);
        const float tol = GUMBEL_APPROX_TOL + 1e-6f * (fabsf(cmax) + 2.0f * GUMBEL_MAX);
        float seen = bound;
        gs = bound;
        gid = best_id;
        for (u32 j = threadIdx.x; j < n; j += CHUNK_THREADS) {
            if (keys[j] == 0) continue;
            const float s = fkey_inv(keys[j]);
            if (s + GUMBEL_MAX < bound) continue;
            const float a = s + gumbel_approx(key, c0 + j);
            if (a + 2.0f * tol < seen) continue;
            seen = fmaxf(seen, a);
            better(gs, gid, s + gumbel(key, c0 + j), c0 + j);
        }
        block_best<CHUNK_WARPS>(gs, gid, red_s, red_id);
    }
    PROBE(0, 5);

    // The chunk's CHUNK_LIST best keys: every key above the CHUNK_LIST-th, then its ties while
    // slots remain. listed_above: every key above it is listed.
    const u32 thr = needs.lists && finite > CHUNK_LIST
                        ? block_kth_key<CHUNK_THREADS>([&](u32 j) { return keys[j]; }, n, CHUNK_LIST, hist, red_u32, bcast)
                        : 1u;
    if (threadIdx.x == 0) n_listed = 0;
    __syncthreads();
    PROBE(0, 6);
    // Gathered into shared memory (one atomic a warp), then sorted best first by warp 0 as
    // they go out: sample_rows merges the sorted lists instead of sorting their union.
    __shared__ u64 listed[CHUNK_LIST];  // rank_of's u64, in slot order
    for (int pass = 0; pass < (needs.lists ? 2 : 0); pass++) {
        for (u32 j = threadIdx.x; j < n; j += CHUNK_THREADS) {
            const u32 kk = keys[j];
            const bool take = pass == 0 ? kk > thr : kk == thr && kk != 0;
            const u32 active = __activemask(), took = __ballot_sync(active, take);
            if (took == 0) continue;
            const u32 lane = threadIdx.x % 32, leader = __ffs(took) - 1;
            u32 base = 0;
            if (lane == leader) base = atomicAdd(&n_listed, __popc(took));
            base = __shfl_sync(active, base, leader);
            const u32 slot = base + __popc(took & ((1u << lane) - 1));
            if (take && slot < CHUNK_LIST) listed[slot] = rank_of_key(kk, c0 + j);
        }
        __syncthreads();
    }
    if (needs.lists && threadIdx.x < 32) {
        const u32 lane = threadIdx.x, cnt = min(n_listed, (u32)CHUNK_LIST);
        u64 a = lane < cnt ? listed[lane] : 0ull, b = lane + 32 < cnt ? listed[lane + 32] : 0ull;
        warp_sort64(a, b);
        if (lane < cnt) rec[16 + lane] = rank_id(a), rec[16 + CHUNK_LIST + lane] = __float_as_uint(rank_value(a));
        if (lane + 32 < cnt) rec[16 + 32 + lane] = rank_id(b), rec[16 + CHUNK_LIST + 32 + lane] = __float_as_uint(rank_value(b));
    }
    if (threadIdx.x == 0) {
        const u64 zb = (u64)__double_as_longlong(z);
        rec[0] = __float_as_uint(best_v);
        rec[1] = best_id;
        rec[2] = finite;
        rec[3] = broken;
        rec[4] = (u32)zb;
        rec[5] = (u32)(zb >> 32);
        rec[6] = __float_as_uint(cmax);
        rec[7] = n_listed <= CHUNK_LIST ? thr - 1 : thr;
        rec[8] = min(n_listed, (u32)CHUNK_LIST);
        rec[9] = __float_as_uint(gs);
        rec[10] = gid;
    }
    PROBE(0, 7);
}

// sh.term[j] = exp(sort_s[j] - max_s) in float64 for j < n, by every thread, for the top-p cut
// that one thread then takes over the sorted entries in order: the sums are those of that thread
// alone, but a float64 exp is a few hundred cycles of dependent instructions, and forty to eighty
// of them in one thread were most of a one-row draw's time. Call with every thread.
__device__ __forceinline__ void mass_terms(Shared& sh, u32 n, float max_s) {
    for (u32 j = threadIdx.x; j < n; j += SAMPLE_THREADS) sh.term[j] = exp((double)(sh.sort_s[j] - max_s));
    __syncthreads();
}

// Sorts sh.sort_s / sort_id[0..n) best first where the caller reads only the first `need`
// entries and the entries tied with the last of them (`valid` of the n are not "none"): the
// entries whose key is at least the need-th best are moved to the front (into the free tail of
// the buffer, then back) and sorted there, with "none" entries after them. The whole list is
// sorted when need covers most of it or the selected entries do not fit the tail. Call with every
// thread.
__device__ void sort_prefix_best_first(Shared& sh, u32 n, u32 valid, u32 need) {
    // (A list that fills the buffer leaves no tail to gather into: the whole sort at once.)
    if (need == 0 || need > valid || 4 * need > n || n + need > SORT_CAP) {
        if (need > 0) sort_best_first(sh, n);
        return;
    }
    u32 thr = block_kth_key<SAMPLE_THREADS>(
        [&](u32 j) { return sh.sort_id[j] != NONE ? fkey(sh.sort_s[j]) : 0u; }, n, need, sh.hist, sh.red_u32, sh.bcast);
    // -0 sorts just below +0 but compares equal to it: a tie the readers may count.
    if (thr == fkey(0.0f)) thr = fkey(-0.0f);
    if (threadIdx.x == 0) sh.n_gathered = 0;
    __syncthreads();
    for (u32 j = threadIdx.x; j < n; j += SAMPLE_THREADS) {
        if (sh.sort_id[j] != NONE && fkey(sh.sort_s[j]) >= thr) {
            const u32 slot = atomicAdd(&sh.n_gathered, 1u);
            if (n + slot < SORT_CAP) {
                sh.sort_s[n + slot] = sh.sort_s[j];
                sh.sort_id[n + slot] = sh.sort_id[j];
            }
        }
    }
    __syncthreads();
    const u32 m = sh.n_gathered;
    // No room for them in the tail, or the way back would overlap them.
    if (n + m > SORT_CAP || m >= n) {
        sort_best_first(sh, n);
        return;
    }
    for (u32 j = threadIdx.x; j < m; j += SAMPLE_THREADS) sh.sort_s[j] = sh.sort_s[n + j], sh.sort_id[j] = sh.sort_id[n + j];
    // A "none" after them stops the readers' tie scans (sort_best_first pads only up to a power of two).
    if (threadIdx.x == 0) sh.sort_s[m] = NEG_INF, sh.sort_id[m] = NONE;
    __syncthreads();
    sort_best_first(sh, m);
}

// sort_prefix_best_first's result for need <= CHUNK_LIST, from the chunks' lists as the fill loop
// left them in sort_s / sort_id (chunk c's at c * CHUNK_LIST, each sorted best first by
// sample_chunks, "none" entries last): warp c holds chunk c's list in registers, pairs of warps
// merge theirs through shared memory (sh.term, free until mass_terms) until warp 0 holds the 64
// best, and warp 0 writes those at or above the need-th best key (ties included) sorted to the
// front, with a "none" after them, and returns their count. Returns 0, having written nothing,
// when the 64 best are all at or above it (more ties may follow): the caller then sorts the usual
// way. The same entries in the same order as sort_prefix_best_first, whose radix passes over the
// lists and block-wide sort (each step a __syncthreads) took 8.3 us of a 17 us draw (H100, T 0.8,
// top-k 40, top-p 0.95, min-p 0.05). Call with every thread; 1 <= need <= the valid entries.
static_assert(CHUNK_LIST == 64, "two entries a lane");
static_assert(CHUNKS_MAX <= 32 && 2 * (CHUNKS_MAX / 2) * CHUNK_LIST * sizeof(u64) <= SORT_CAP * sizeof(double),
              "every chunk's list in a warp of its own; two rounds' lists fit sh.term");
__device__ u32 best_of_lists(Shared& sh, u32 n_chunks, u32 need) {
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    u64 a = 0, b = 0;
    if (warp < n_chunks) {
        const u32 i = warp * CHUNK_LIST + lane;
        a = rank_of(sh.sort_s[i], sh.sort_id[i]);
        b = rank_of(sh.sort_s[i + 32], sh.sort_id[i + 32]);
    }
    // Each round, the upper half of the warps holding lists hands them to the lower half. Two
    // buffers by turns: a round's writes cannot overwrite lists the round before is still reading.
    u64* const scratch = reinterpret_cast<u64*>(sh.term);
    u32 round = 0;
    for (u32 held = n_chunks; held > 1; round++) {
        const u32 keep = (held + 1) / 2;
        u64* const slots = scratch + (round & 1) * (CHUNKS_MAX / 2) * CHUNK_LIST;
        if (warp >= keep && warp < held) {
            slots[(warp - keep) * CHUNK_LIST + lane] = a;
            slots[(warp - keep) * CHUNK_LIST + 32 + lane] = b;
        }
        __syncthreads();
        if (warp < held - keep) warp_merge64(a, b, slots + warp * CHUNK_LIST);
        held = keep;
    }
    if (warp == 0) {
        const u32 e = need - 1;
        const u64 at_need = __shfl_sync(FULL_WARP, e < 32 ? a : b, e % 32);
        u32 thr = (u32)(at_need >> 32);
        // -0 sorts just below +0 but compares equal to it: a tie the readers may count.
        if (thr == fkey(0.0f)) thr = fkey(-0.0f);
        const bool in_a = a != 0 && (u32)(a >> 32) >= thr, in_b = b != 0 && (u32)(b >> 32) >= thr;
        const u32 m = __popc(__ballot_sync(FULL_WARP, in_a)) + __popc(__ballot_sync(FULL_WARP, in_b));
        // Sorted, so the m entries at or above thr are entries 0 .. m - 1.
        if (m < 64) {
            if (in_a) sh.sort_s[lane] = rank_value(a), sh.sort_id[lane] = rank_id(a);
            if (in_b) sh.sort_s[lane + 32] = rank_value(b), sh.sort_id[lane + 32] = rank_id(b);
            // A "none" after them stops the readers' tie scans.
            if (lane == 0) sh.sort_s[m] = NEG_INF, sh.sort_id[m] = NONE;
        }
        // (In n_gathered, not bcast, which the caller may write again before every thread has
        // read this.)
        if (lane == 0) sh.n_gathered = m < 64 ? m : 0u;
    }
    __syncthreads();
    return sh.n_gathered;
}

// Writes the row's output: the token, its log-probability, and n_top alternatives.
__device__ __forceinline__ void write_result(u32* o, u32 token, float logprob) {
    o[0] = token;
    o[1] = 0;
    o[2] = __float_as_uint(logprob);
}

// A row's chunk records reduced: the best token (lowest id on a tie) and its logit, the unfiltered
// Gumbel winner, the finite count, the first broken token, tau (every key above it is listed) and,
// when `with_z`, the sum of exp(s - max_s) over the row.
struct RecordSums {
    float best_v, gs;
    u32 best_id, gid, finite, broken, tau;
    double z;
};

// The chunk records in warp 0 alone, a lane a chunk, then one barrier (the host sends at most
// CHUNKS_MAX = 32 chunks), instead of six block reductions: 2.6 us of a filtered draw's 33.5
// became 1.7 on an H100 (benches/probe_cuda_sampler.py, 2026-12-06). Call with every thread.
__device__ __forceinline__ RecordSums reduce_records(const u32* __restrict__ recs, u32 n_chunks, float t, bool with_z, Shared& sh) {
    float best_v = 0.0f, gs = 0.0f;
    u32 best_id = NONE, finite = 0, broken = NONE, tau = 0, gid = NONE;
    double z = 0.0;
    if (threadIdx.x < 32) {
        for (u32 c = threadIdx.x; c < n_chunks; c += 32) {
            const u32* r = recs + (u64)c * CHUNK_WORDS;
            finite += r[2];
            broken = min(broken, r[3]);
            if (r[1] != NONE) better(best_v, best_id, __uint_as_float(r[0]), r[1]);
            if (r[10] != NONE) better(gs, gid, __uint_as_float(r[9]), r[10]);
            tau = max(tau, r[7]);
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            better(best_v, best_id, __shfl_xor_sync(FULL_WARP, best_v, off), __shfl_xor_sync(FULL_WARP, best_id, off));
            better(gs, gid, __shfl_xor_sync(FULL_WARP, gs, off), __shfl_xor_sync(FULL_WARP, gid, off));
            finite += __shfl_xor_sync(FULL_WARP, finite, off);
            broken = min(broken, __shfl_xor_sync(FULL_WARP, broken, off));
            tau = max(tau, __shfl_xor_sync(FULL_WARP, tau, off));
        }
        for (u32 c = threadIdx.x; with_z && broken == NONE && best_id != NONE && c < n_chunks; c += 32) {
            const u32* r = recs + (u64)c * CHUNK_WORDS;
            if (r[1] == NONE) continue;
            const double zc = __longlong_as_double((long long)(((u64)r[5] << 32) | r[4]));
            z += zc * exp((double)(__uint_as_float(r[6]) - best_v / t));
        }
        z = warp_sum_f64(z);
        if (threadIdx.x == 0) {
            sh.red_s[0] = best_v, sh.red_id[0] = best_id, sh.red_s[1] = gs, sh.red_id[1] = gid;
            sh.red_u32[0] = finite, sh.red_u32[1] = broken, sh.red_u32[2] = tau;
            sh.red_f64[0] = z;
        }
    }
    __syncthreads();
    return RecordSums{sh.red_s[0], sh.red_s[1], sh.red_id[0], sh.red_id[1], sh.red_u32[0], sh.red_u32[1], sh.red_u32[2], sh.red_f64[0]};
}

// The draw of sample_rows from the row's chunk records (`rs`, their reduce_records with the z
// that chunk_needs asks for), when they settle it exactly: returns false (having written nothing)
// when the row must be scanned instead -- a filter or a request for alternatives reaching past
// the tokens the chunks listed. Call with every thread.
__device__ bool draw_from_chunks(const float* __restrict__ l, const RowParams& p, const RecordSums& rs, const u32* __restrict__ recs,
                                 u32 n_chunks, u32* __restrict__ o, Shared& sh) {
    const bool greedy = p.temperature == 0.0f;
    const float t = greedy ? 1.0f : p.temperature;
    const ChunkNeeds needs = chunk_needs(p);
    const float best_v = rs.best_v, gs = rs.gs;
    const u32 best_id = rs.best_id, gid = rs.gid, finite = rs.finite, broken = rs.broken, tau = rs.tau;
    const double z = rs.z;
    PROBE(1, 2);
    if (broken != NONE || best_id == NONE) {
        if (threadIdx.x == 0) {
            o[0] = broken != NONE ? broken : 0u;
            o[1] = broken != NONE ? 1u : 2u;
            o[2] = broken != NONE ? __float_as_uint(l[broken]) : 0u;
            o[3] = 0;
        }
        return true;
    }
    const float max_s = best_v / t;
    PROBE(1, 3);
    const bool want_lp = p.logprobs != NO_LOGPROBS;
    const float lse = want_lp ? max_s + (float)log(z) : 0.0f;
    const bool want_top = want_lp && p.logprobs > 0;
    const bool filtered = !greedy && !plain_draw(p);

    if (!needs.lists) {
        const u32 token = greedy ? best_id : gid;
        if (threadIdx.x == 0) {
            write_result(o, token, want_lp ? l[token] / t - lse : 0.0f);
            o[3] = 0;
        }
        return true;
    }
    if (n_chunks > CHUNKS_MAX) return false;

    // Every chunk's list, sorted best first. The leading n_S entries (keys above tau) are the
    // row's n_S best tokens, every one of them.
    const u32 n_listed = n_chunks * CHUNK_LIST;
    u32 in_s = 0, valid = 0;
    for (u32 i = threadIdx.x; i < n_listed; i += SAMPLE_THREADS) {
        const u32* r = recs + (u64)(i / CHUNK_LIST) * CHUNK_WORDS;
        const u32 j = i % CHUNK_LIST;
        const bool here = j < r[8];
        const float v = __uint_as_float(r[16 + CHUNK_LIST + j]);
        sh.sort_s[i] = here ? v : NEG_INF;
        sh.sort_id[i] = here ? r[16 + j] : NONE;
        valid += here;
        in_s += here && fkey(v) > tau;
    }
    // Both counts in one reduction: each is at most SORT_CAP.
    static_assert(SORT_CAP < 65536, "two counts a word");
    const u32 counts = block_sum_u32((valid << 16) | in_s, sh.red_u32);
    const u32 n_s = counts & 0xffffu;
    valid = counts >> 16;
    PROBE(1, 4);
    // A row its lists cannot settle is told before they are sorted (the sort of a whole list, 28
    // us on an H100, was most of such a row's time here): the listed mass short of top-p's target
    // by more than any summation order could change (a sum in another order, over at most 2,048
    // terms, moves by ~1e-13 of itself), min-p's floor at or below tau, or more alternatives asked
    // for than listed: the decisions the filters below would take after the sort. H100,
    // thirty-seventh session: a flat row at T 1, top-p 0.95 248 -> 189 us, at min-p 0.02 145 -> 83.
    // (Every warp past its last read of the reductions' scratch before any returns: the caller's
    // next reduction writes it.)
    __syncthreads();
    if (want_top && min(p.logprobs, finite) > n_s) return false;
    if (filtered && !(p.top_k > 0 && p.top_k < finite) && tau != 0) {
        bool short_of = false;
        if (p.top_p < 1.0f) {
            // (Not reached without z: see top_p_needs_z. Were it, the row scan decides.)
            if (!needs.z) return false;
            double listed = 0.0;
            for (u32 i = threadIdx.x; i < n_listed; i += SAMPLE_THREADS)
                if (sh.sort_id[i] != NONE && fkey(sh.sort_s[i]) > tau) listed += exp((double)(sh.sort_s[i] - max_s));
            listed = block_sum_f64(listed, sh.red_f64);
            short_of = listed < (double)p.top_p * z * (1.0 - 1e-9);
        } else {
            short_of = !(p.min_p > 0.0f && fkey(max_s + p.ln_min_p) > tau);
        }
        if (short_of) return false;
    }
    // What the draw reads of the sorted list is its first `need` entries and their ties: the
    // top-k survivors, the alternatives asked for. Unless that is the whole list (a top-p or
    // min-p cut without a small top-k), only the entries at or above the need-th best key are
    // sorted, which is most of the sampler's time saved (H200, 2026-12-04, 8 rows of 151,936
    // logits, top-k 40 + top-p + min-p: the full sort of 19 x 64 entries took 29 of 85 us).
    const bool small_k = p.top_k > 0 && p.top_k < finite && p.top_k <= CHUNK_LIST;
    const u32 need = max(filtered ? (small_k ? p.top_k : SORT_CAP) : 0u, want_top ? min(p.logprobs, finite) : 0u);
    // The few best entries (a small top-k, alternatives) by warps in registers; the whole list
    // (a cut without a small top-k), or ties reaching past the 64 best, by the block.
    const bool few = need > 0 && need <= CHUNK_LIST && need <= valid;
    // The need-th best below tau: the filters below would decline the row (top-k's survivors or
    // the alternatives reaching past the tokens surely listed).
    if (few && need > n_s) return false;
    const u32 n_best = few ? best_of_lists(sh, n_chunks, need) : 0u;
    if (n_best == 0) sort_prefix_best_first(sh, n_listed, valid, need);
    PROBE(1, 5);
    // The top-p cut below reads entries before n_S (every survivor of top-k is among them), and
    // none past the n_best sorted (the top-k survivors are among them).
    if (filtered && p.top_p < 1.0f) mass_terms(sh, n_best > 0 ? min(n_s, n_best) : n_s, max_s);
    PROBE(1, 6);

    // The filters, as step 4a cuts them, by warp 0 over the sorted entries (the scalar decisions
    // in every lane alike, the walks over entries 32 at a time: one thread walking them took 3.4
    // us of a 17 us draw, H100, T 0.8, top-k 40, top-p 0.95, min-p 0.05); ok = 0 sends the row to
    // the full scan. The top-p sums are the lanes' partial sums added by the warp, an order of
    // their own (step 4a's differs too; see the file's head).
    const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
    if (threadIdx.x < 32) {
        const u32 lane = threadIdx.x;
        u32 ok = 1, m = 0;
        if (filtered) {
            const bool has_k = p.top_k > 0 && p.top_k < finite;
            // Survivors of top-k (ties at the boundary kept): all of them listed when k <= n_S.
            u32 keep = n_s;
            bool bounded = tau == 0;  // whether every survivor so far is among the n_S (tau 0: all are)
            if (has_k) {
                if (p.top_k > n_s) ok = 0;
                else {
                    keep = p.top_k;
                    while (keep < n_s && fkey(sh.sort_s[keep]) == fkey(sh.sort_s[p.top_k - 1])) keep++;
                    bounded = true;
                }
            }
            if (ok && p.top_p < 1.0f) {
                double total = z;  // no top-k: the whole row survives it
                if (!bounded && !needs.z) ok = 0;  // not reached (top_p_needs_z), but z is not there
                if (bounded) {
                    double part = 0.0;
                    for (u32 j = lane; j < keep; j += 32) part += sh.term[j];
                    total = warp_sum_f64(part);
                }
                const double target = (double)p.top_p * total;
                // The nucleus ends before the first entry whose predecessors' mass reaches the
                // target: `before` is the mass of the entries before this group of 32, and each
                // lane adds the lanes below it (an exclusive scan).
                double before = 0.0;
                bool cut = false;
                for (u32 base = 0; base < keep; base += 32) {
                    const u32 j = base + lane;
                    const double t = j < keep ? sh.term[j] : 0.0;
                    double incl = t;
#pragma unroll
                    for (int o = 1; o < 32; o <<= 1) {
                        const double up = __shfl_up_sync(FULL_WARP, incl, o);
                        if (lane >= (u32)o) incl += up;
                    }
                    const double below = __shfl_up_sync(FULL_WARP, incl, 1);
                    const u32 hit = __ballot_sync(FULL_WARP, j < keep && before + (lane == 0 ? 0.0 : below) >= target);
                    if (hit != 0) {
                        keep = base + __ffs(hit) - 1;
                        cut = true;
                        break;
                    }
                    before += __shfl_sync(FULL_WARP, incl, 31);
                }
                // The listed tokens' mass reaching the target ends the nucleus at them too.
                if (!cut && before >= target) cut = true;
                // Without top-k the full scan keeps every token tied with the last one kept
                // (step 4b cuts at a key); ties share a key above tau, so they are listed.
                if (cut && !has_k)
                    while (keep > 0 && keep < n_s && fkey(sh.sort_s[keep]) == fkey(sh.sort_s[keep - 1])) keep++;
                if (!cut && !bounded) ok = 0;  // the nucleus reaches past the listed tokens
                bounded = bounded || cut;
            }
            if (ok) {
                const float floor_s = max_s + p.ln_min_p;
                // Without a cut so far, min-p must be the cut: every token >= floor listed.
                if (!bounded && !(p.min_p > 0.0f && fkey(floor_s) > tau)) ok = 0;
                // The leading entries at or above the floor (sorted, so the run from entry 0).
                for (u32 base = 0; base < keep; base += 32) {
                    const u32 above = __ballot_sync(FULL_WARP, base + lane < keep && sh.sort_s[base + lane] >= floor_s);
                    const u32 run = ~above == 0 ? 32u : (u32)__ffs(~above) - 1;
                    m += run;
                    if (run < 32) break;
                }
                if (m == 0) m = 1;
            }
        }
        u32 k_top = 0;
        if (ok && want_top) {
            k_top = min(p.logprobs, finite);
            if (k_top > n_s) ok = 0;
        }
        // Few survivors (a small top-k's): their Gumbel-max draw here too, without the block,
        // the float64 noise only for the contenders that float noise leaves within reach of the
        // best (as the chunk pass screens its tokens; the same winner: no score moves by more
        // than tol).
        u32 wid = NONE;
        if (ok && filtered && m <= 64) {
            const float tol = GUMBEL_APPROX_TOL + 1e-6f * (fabsf(max_s) + 2.0f * GUMBEL_MAX);
            float approx[2];
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const u32 j = lane + 32 * h;
                approx[h] = j < m ? sh.sort_s[j] + gumbel_approx(key, sh.sort_id[j]) : NEG_INF;
            }
            const float reach = warp_max(fmaxf(approx[0], approx[1])) - 2.0f * tol;
            const u32 in0 = __ballot_sync(FULL_WARP, lane < m && approx[0] >= reach);
            const u32 in1 = __ballot_sync(FULL_WARP, lane + 32 < m && approx[1] >= reach);
            // One contender is the winner whatever its exact noise.
            const bool alone = __popc(in0) + __popc(in1) == 1;
            float ws = 0.0f;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const u32 j = lane + 32 * h;
                if (((h == 0 ? in0 : in1) >> lane) & 1)
                    better(ws, wid, alone ? 0.0f : sh.sort_s[j] + gumbel(key, sh.sort_id[j]), sh.sort_id[j]);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) {
                const float s2 = __shfl_xor_sync(FULL_WARP, ws, o);
                const u32 id2 = __shfl_xor_sync(FULL_WARP, wid, o);
                better(ws, wid, s2, id2);
            }
        }
        if (lane == 0) {
            sh.bcast[0] = ok;
            sh.bcast[1] = m;
            sh.bcast[2] = k_top;
            sh.bcast[3] = wid;
        }
    }
    __syncthreads();
    if (!sh.bcast[0]) return false;
    PROBE(1, 7);
    const u32 m = sh.bcast[1], k_top = sh.bcast[2];
    u32 token = greedy ? best_id : gid;
    if (filtered && m <= 64) {
        token = sh.bcast[3];
    } else if (filtered) {
        float ws = 0.0f;
        u32 wid = NONE;
        for (u32 j = threadIdx.x; j < m; j += SAMPLE_THREADS) better(ws, wid, sh.sort_s[j] + gumbel(key, sh.sort_id[j]), sh.sort_id[j]);
        block_best(ws, wid, sh.red_s, sh.red_id);
        token = wid;
    }
    PROBE(1, 8);
    if (threadIdx.x == 0) {
        u32 n_top = 0;
        if (k_top > 0) {
            const float last = sh.sort_s[k_top - 1];
            while (n_top < TOP_CAP && n_top < n_s && sh.sort_s[n_top] >= last) {
                o[4 + n_top] = sh.sort_id[n_top];
                o[4 + TOP_CAP + n_top] = __float_as_uint(sh.sort_s[n_top] - lse);
                n_top++;
            }
        }
        write_result(o, token, want_lp ? l[token] / t - lse : 0.0f);
        o[3] = n_top;
    }
    PROBE(1, 9);
    return true;
}

// A row's draw taken over by sample_mass and a second sample_rows launch (the host's `phase`
// argument): out[1] holds DEFERRED, out[2] the bits of max_s and out[3] the best token until the
// second launch writes the draw.
#define DEFERRED 3u
// Words per (row, chunk) of sample_mass's output: the first level's bins of mass (low words, then
// high words) and each bin's best Gumbel score (pack_score, two words a bin).
#define MASS_WORDS (4 * MASS_BINS_0)

// Step 3: log-sum-exp over the whole row. Call with every thread.
__device__ __noinline__ float row_lse(const float* __restrict__ l, u32 vocab, float t, float max_s, Shared& sh) {
    double z = 0.0;
    scan_row(l, vocab, [&](u32, float v) {
        if (v != NEG_INF) z += (double)expf(v / t - max_s);  // float exp, double sum: 1e-7 relative
    });
    z = block_sum_f64(z, sh.red_f64);
    return max_s + (float)log(z);
}

// Step 4b: the key at which top-p cuts the tokens with keys >= thr_key, by radix selection over
// their probability mass (the level digits above MASS_BINS_0; a pass over the row per level).
// With `bins` (sample_mass's output for this row, thr_key 0) the first level's masses are the sums
// of its chunks' bins instead of a pass. Call with every thread.
__device__ __noinline__ u32 top_p_key(const float* __restrict__ l, u32 vocab, float top_p, float t, float max_s, u32 thr_key,
                         const u32* __restrict__ bins, u32 n_chunks, Shared& sh) {
    const int shifts[3] = {MASS_SHIFT_0, 11, 0};
    const int bits[3] = {10, 11, 11};
    const double unit = ldexp(1.0, mass_frac_bits(vocab)), inv_unit = ldexp(1.0, -mass_frac_bits(vocab));  // exact powers of two
    u32 prefix = 0, mask = 0;
    u64 above = 0;
    double target = 0.0;
#pragma unroll 1
    for (int level = 0; level < 3; level++) {
        const int shift = shifts[level];
        const u32 nbins = 1u << bits[level];
        const int per = (int)(nbins / SAMPLE_THREADS);
        u64 m[2] = {0, 0};
        if (level == 0 && bins != nullptr) {
            const u32 bin = nbins - 1 - threadIdx.x;
            for (u32 c = 0; c < n_chunks; c++) {
                const u32* cb = bins + (u64)c * MASS_WORDS;
                m[0] += bin_mass(cb, cb + MASS_BINS_0, bin);
            }
        } else {
            for (u32 b = threadIdx.x; b < nbins; b += SAMPLE_THREADS) sh.mass.lo[b] = sh.mass.hi[b] = 0u;
            __syncthreads();
            // This thread's tokens of one bin in a row add up before one pair of atomics.
            u32 run_bin = 0;
            u64 run = 0;
            scan_row(l, vocab, [&](u32, float v) {
                if (v == NEG_INF) return;
                const float s = v / t;
                const u32 kk = fkey(s);
                if (kk >= thr_key && (kk & mask) == prefix) {
                    const u32 b = (kk >> shift) & (nbins - 1);
                    if (b != run_bin) {
                        add_mass(sh.mass.lo, sh.mass.hi, run_bin, run);
                        run_bin = b;
                        run = 0;
                    }
                    run += mass_term(s, max_s, unit);
                }
            });
            add_mass(sh.mass.lo, sh.mass.hi, run_bin, run);
            __syncthreads();
            for (int i = 0; i < per; i++) m[i] = bin_mass(sh.mass.lo, sh.mass.hi, nbins - 1 - per * threadIdx.x - i);
        }
        const u32 chosen = select_mass_bin(m, per, nbins, level == 0, top_p, inv_unit, above, target, sh);
        prefix |= chosen << shift;
        mask |= (nbins - 1) << shift;
        PROBE(1, 12 + level);
    }
    return max(thr_key, prefix);
}

// Step 5: Gumbel-max over the kept tokens (finite, key >= thr_key, s >= floor_s); noise only
// where it can still win. A token's score is first taken with float noise (gumbel_approx, within
// tol of gumbel's score); its float64 noise is computed only when that comes within 2 tol of the
// best float score this thread has seen. The winner always does, so the draw is gumbel's exactly,
// for a few float64 logarithms a thread instead of two a token. With `bins` (sample_mass's output
// for this row) the first-level bins wholly above the cut give their chunks' winners, and the
// pass scores only the tokens of the bin the cut falls in. Call with every thread.
__device__ __noinline__ u32 gumbel_pick(const float* __restrict__ l, u32 vocab, const RowParams& p, float t, float max_s, u32 best_id,
                           float floor_s, u32 thr_key, const u32* __restrict__ bins, u32 n_chunks, Shared& sh) {
    const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
    const float bound = max_s + gumbel(key, best_id);
    const float tol = GUMBEL_APPROX_TOL + 1e-6f * (fabsf(max_s) + 2.0f * GUMBEL_MAX);
    float ws = bound;
    u32 wid = best_id;
    // The cut as a key: -0 compares equal to a floor of +0, and keys below fkey(+0).
    const u32 cut = max(thr_key, fkey(floor_s == 0.0f ? -0.0f : floor_s));
    const u32 cut_bin = bins != nullptr ? cut >> MASS_SHIFT_0 : 0u;
    if (bins != nullptr) {
        u64 best = 0;
        for (u32 b = cut_bin + 1 + threadIdx.x; b < MASS_BINS_0; b += SAMPLE_THREADS)
            for (u32 c = 0; c < n_chunks; c++) {
                const u32* cb = bins + (u64)c * MASS_WORDS + 2 * MASS_BINS_0;
                best = max(best, ((u64)cb[2 * b + 1] << 32) | cb[2 * b]);
            }
        best = block_max_u64(best, sh.red_u64);
        if (best != 0) better(ws, wid, fkey_inv((u32)(best >> 32)), ~(u32)best);
    }
    float seen = ws;
    scan_row(l, vocab, [&](u32 i, float v) {
        if (v == NEG_INF) return;
        const float s = v / t;
        const u32 kk = fkey(s);
        if (s + GUMBEL_MAX < bound || s < floor_s || kk < cut) return;
        if (bins != nullptr && (kk >> MASS_SHIFT_0) != cut_bin) return;
        const float a = s + gumbel_approx(key, i);
        if (a + 2.0f * tol < seen) return;
        seen = fmaxf(seen, a);
        better(ws, wid, s + gumbel(key, i), i);
    });
    block_best(ws, wid, sh.red_s, sh.red_id);
    return wid;
}

// Step 6: the k best alternatives (and their log-probabilities) into o, by radix selection.
// Returns how many. Call with every thread.
__device__ __noinline__ u32 top_alternatives(const float* __restrict__ l, u32 vocab, const RowParams& p, float t, float lse, u32 finite,
                                u32* __restrict__ o, Shared& sh) {
    auto key_all = [&](u32, float v) { return fkey(v / t); };
    const u32 k = min(p.logprobs, finite);
    const u32 thr = kth_largest_key(l, vocab, k, 0u, key_all, sh);
    if (threadIdx.x == 0) sh.n_gathered = 0;
    __syncthreads();
    scan_row(l, vocab, [&](u32 i, float v) {
        const float s = v / t;
        if (v != NEG_INF && fkey(s) >= thr) {
            const u32 slot = atomicAdd(&sh.n_gathered, 1u);
            if (slot < TOP_CAP) {
                o[4 + slot] = i;
                o[4 + TOP_CAP + slot] = __float_as_uint(s - lse);
            }
        }
    });
    __syncthreads();
    return min(sh.n_gathered, (u32)TOP_CAP);
}

// One block per row. phase 0: every row drawn here, from its chunk records or by scanning the
// row. phase 1: as 0, except that a row whose records do not settle its draw and which has no
// top-k filter (top-p, min-p, or both: what OpenAI clients send) is left DEFERRED for sample_mass
// to bin its chunks in blocks of their own; phase 2 (after sample_mass): only those rows, drawn
// from sample_mass's bins and passes over the tokens of one bin. The draw is the same as the
// scan's, bit for bit; a flat row at T 1 and top-p 0.95 took 410 us scanned by one block (H100,
// 2026-12-06, benches/probe_cuda_sampler.py).
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(float* __restrict__ logits, u32 vocab, const RowParams* __restrict__ params,
                const u32* __restrict__ pen_ids, const u32* __restrict__ pen_counts, const u32* __restrict__ pen_in_prompt,
                const u32* __restrict__ chunks, u32 n_chunks, u32* __restrict__ out, const u32* __restrict__ mass_bins,
                u32 phase) {
    PROBE_NOSYNC(1, phase == 2 ? 20 : 0);
    __shared__ Shared sh;
    const u32 row = blockIdx.x;
    const RowParams p = params[row];  // before the wait, as in sample_chunks
    dependent_wait();
    PROBE(1, phase == 2 ? 21 : 1);
    float* l = logits + (u64)row * vocab;
    u32* o = out + (u64)row * OUT_WORDS;
    const bool greedy = p.temperature == 0.0f;
    const float t = greedy ? 1.0f : p.temperature;
    const bool want_lp = p.logprobs != NO_LOGPROBS;

    if (phase == 2) {
        if (o[1] != DEFERRED) return;
        const u32* recs = chunks + (u64)row * n_chunks * CHUNK_WORDS;
        const u32* bins = mass_bins + (u64)row * n_chunks * MASS_WORDS;
        const RecordSums rs = reduce_records(recs, n_chunks, t, false, sh);
        const u32 best_id = rs.best_id, finite = rs.finite;
        PROBE(1, 22);
        const float max_s = rs.best_v / t;
        const float lse = want_lp ? row_lse(l, vocab, t, max_s, sh) : 0.0f;
        PROBE(1, 23);
        const u32 thr_key = p.top_p < 1.0f ? top_p_key(l, vocab, p.top_p, t, max_s, 0u, bins, n_chunks, sh) : 0u;
        const u32 token = gumbel_pick(l, vocab, p, t, max_s, best_id, max_s + p.ln_min_p, thr_key, bins, n_chunks, sh);
        PROBE(1, 24);
        const u32 n_top = want_lp && p.logprobs > 0 ? top_alternatives(l, vocab, p, t, lse, finite, o, sh) : 0u;
        PROBE(1, 25);
        if (threadIdx.x == 0) {
            write_result(o, token, want_lp ? l[token] / t - lse : 0.0f);
            o[3] = n_top;
        }
        return;
    }

    if (chunks != nullptr) {
        // sample_chunks ran first: the penalties are applied, and its records may settle the draw.
        const u32* recs = chunks + (u64)row * n_chunks * CHUNK_WORDS;
        // Reduced once: the draw from them and the deferral below both read the sums.
        const RecordSums rs = reduce_records(recs, n_chunks, t, chunk_needs(p).z, sh);
        if (draw_from_chunks(l, p, rs, recs, n_chunks, o, sh)) return;
        if (phase == 1 && !greedy) {
            if (!(p.top_k > 0 && p.top_k < rs.finite)) {
                if (threadIdx.x == 0) {
                    o[1] = DEFERRED;
                    o[2] = __float_as_uint(rs.best_v / t);
                    o[3] = rs.best_id;
                }
                return;
            }
        }
    } else {
        // 1. Penalties, in place (entries are distinct tokens), in the host's float order.
        apply_penalties(l, 0, vocab, p, pen_ids, pen_counts, pen_in_prompt, SAMPLE_THREADS);
    }
    __syncthreads();

    PROBE(1, 10);

    // 2. The best token (lowest id on a tie), finite count, and broken values.
    float best_s = 0.0f;
    u32 best_id = 0xffffffffu, finite = 0, broken = 0xffffffffu;
    scan_row(l, vocab, [&](u32 i, float v) {
        if (v != v || v == __uint_as_float(0x7f800000u)) {
            broken = min(broken, i);
        } else if (v != NEG_INF) {
            finite++;
            better(best_s, best_id, v, i);
        }
    });
    block_best(best_s, best_id, sh.red_s, sh.red_id);
    finite = block_sum_u32(finite, sh.red_u32);
    broken = block_min_u32(broken, sh.red_u32);
    if (broken != 0xffffffffu || best_id == 0xffffffffu) {
        if (threadIdx.x == 0) {
            o[0] = broken != 0xffffffffu ? broken : 0u;
            o[1] = broken != 0xffffffffu ? 1u : 2u;  // 1: non-finite value at token o[0]; 2: all -inf
            o[2] = broken != 0xffffffffu ? __float_as_uint(l[broken]) : 0u;
            o[3] = 0;
        }
        return;
    }
    const float max_s = best_s / t;  // the host scales the best logit the same way
    PROBE(1, 11);

    // 3. Log-sum-exp over the whole row when log-probabilities are wanted.
    const float lse = want_lp ? row_lse(l, vocab, t, max_s, sh) : 0.0f;

    u32 token = best_id;
    if (!greedy) {
        const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
        const float floor_s = max_s + p.ln_min_p;  // min-p: scaled >= max + ln(min_p)
        auto key_of = [&](u32, float v) { return fkey(v / t); };
        const bool has_k = p.top_k > 0 && p.top_k < finite;
        u32 thr_key = 0;  // keep keys >= thr_key
        bool drawn = false;
        if (has_k) thr_key = kth_largest_key(l, vocab, p.top_k, 0u, key_of, sh);

        if (has_k && p.top_k <= SMALL_K) {
            // 4a. Gather the top-k survivors, sort them (best first), cut by top-p and min-p, draw.
            if (threadIdx.x == 0) sh.n_gathered = 0;
            __syncthreads();
            scan_row(l, vocab, [&](u32 i, float v) {
                const float s = v / t;
                if (v != NEG_INF && fkey(s) >= thr_key) {
                    const u32 slot = atomicAdd(&sh.n_gathered, 1u);
                    if (slot < SORT_CAP) {
                        sh.sort_s[slot] = s;
                        sh.sort_id[slot] = i;
                    }
                }
            });
            __syncthreads();
            const u32 n = sh.n_gathered;
            if (n <= SORT_CAP) {
                sort_best_first(sh, n);
                if (p.top_p < 1.0f) mass_terms(sh, n, max_s);
                // Keep the shortest prefix reaching top_p of the survivors' mass (the host's
                // rule: keep while the mass ranked before is < p), then min-p; draw.
                if (threadIdx.x == 0) {
                    u32 keep = n;
                    if (p.top_p < 1.0f) {
                        double total = 0.0;
                        for (u32 j = 0; j < n; j++) total += sh.term[j];
                        const double target = (double)p.top_p * total;
                        double before = 0.0;
                        for (u32 j = 0; j < n; j++) {
                            if (before >= target) {
                                keep = j;
                                break;
                            }
                            before += sh.term[j];
                        }
                    }
                    u32 m = 0;
                    while (m < keep && sh.sort_s[m] >= floor_s) m++;
                    sh.bcast[2] = m > 0 ? m : 1;
                }
                __syncthreads();
                const u32 keep = sh.bcast[2];
                float ws = 0.0f;
                u32 wid = 0xffffffffu;
                for (u32 j = threadIdx.x; j < keep; j += SAMPLE_THREADS) better(ws, wid, sh.sort_s[j] + gumbel(key, sh.sort_id[j]), sh.sort_id[j]);
                block_best(ws, wid, sh.red_s, sh.red_id);
                token = wid;
                drawn = true;
            }
        }

        if (!drawn) {
            // 4b. Without a small top-k: top-p by radix selection over probability mass.
            if (p.top_p < 1.0f) thr_key = top_p_key(l, vocab, p.top_p, t, max_s, thr_key, nullptr, 0, sh);
            // 5. Gumbel-max over the kept tokens.
            token = gumbel_pick(l, vocab, p, t, max_s, best_id, floor_s, thr_key, nullptr, 0, sh);
            PROBE(1, 16);
        }
    }

    // 6. Log-probabilities: the chosen token's, and the k best by radix selection.
    const u32 n_top = want_lp && p.logprobs > 0 ? top_alternatives(l, vocab, p, t, lse, finite, o, sh) : 0u;
    if (threadIdx.x == 0) {
        o[0] = token;
        o[1] = 0;
        o[2] = __float_as_uint(want_lp ? l[token] / t - lse : 0.0f);
        o[3] = n_top;
    }
}

// sample_rows's phase between its two launches: for every DEFERRED row, a block per chunk of the
// row adds the first level of step 4b's fixed-point mass bins (when top-p is on) and finds each
// bin's Gumbel-max winner among its tokens at or above the min-p floor, with the scan's float
// screening (a bin's best score only grows, so a token whose float score is 2 tol below it cannot
// win), into MASS_WORDS words of `bins` per (row, chunk). The same integer sums, and the same
// winners, as one block scanning the row.
extern "C" __global__ void __launch_bounds__(CHUNK_THREADS)
    sample_mass(const float* __restrict__ logits, u32 vocab, const RowParams* __restrict__ params,
                const u32* __restrict__ out, u32* __restrict__ bins, u32 chunk_elems) {
    PROBE_NOSYNC(2, 0);
    __shared__ u32 lo[MASS_BINS_0], hi[MASS_BINS_0];
    __shared__ u64 best[MASS_BINS_0];
    const u32 c = blockIdx.x, row = blockIdx.y;
    const RowParams p = params[row];  // before the wait, as in sample_chunks
    dependent_wait();
    const u32* o = out + (u64)row * OUT_WORDS;
    if (o[1] != DEFERRED) return;
    PROBE(2, 1);
    const float max_s = __uint_as_float(o[2]);
    const u32 best_id = o[3];
    const float t = p.temperature;
    const float* l = logits + (u64)row * vocab;
    const u32 c0 = c * chunk_elems;
    const u32 n = min(min(chunk_elems, (u32)CHUNK_ELEMS), vocab - c0);
    for (u32 b = threadIdx.x; b < MASS_BINS_0; b += CHUNK_THREADS) lo[b] = hi[b] = 0u, best[b] = 0;
    __syncthreads();
    PROBE(2, 2);

    const bool want_mass = p.top_p < 1.0f;
    const double unit = ldexp(1.0, mass_frac_bits(vocab));
    const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
    const float bound = max_s + gumbel(key, best_id);
    const float tol = GUMBEL_APPROX_TOL + 1e-6f * (fabsf(max_s) + 2.0f * GUMBEL_MAX);
    const float floor_s = max_s + p.ln_min_p;
    u32 run_bin = 0;
    u64 run = 0;
    // The thread's share in batches of MASS_BATCH values, each batch loaded before any of it is
    // used, as in sample_chunks (the division's slow path would otherwise hold each load until
    // the value before it is done); batches rather than the whole share keep the unrolled loop
    // (two Gumbel draws and a float64 exp a value) to a few thousand instructions.
    constexpr u32 MASS_BATCH = 8;
#pragma unroll 1
    for (u32 base = 0; base < n; base += MASS_BATCH * CHUNK_THREADS) {
        float vals[MASS_BATCH];
#pragma unroll
        for (u32 u = 0; u < MASS_BATCH; u++) {
            const u32 j = base + threadIdx.x + u * CHUNK_THREADS;
            vals[u] = j < n ? l[c0 + j] : NEG_INF;
        }
#pragma unroll
        for (u32 u = 0; u < MASS_BATCH; u++) {
            const u32 j = base + threadIdx.x + u * CHUNK_THREADS;
            const float v = vals[u];
            if (j >= n || v == NEG_INF) continue;
            const float s = v / t;
            const u32 b = fkey(s) >> MASS_SHIFT_0;
            if (want_mass) {
                if (b != run_bin) {
                    add_mass(lo, hi, run_bin, run);
                    run_bin = b;
                    run = 0;
                }
                run += mass_term(s, max_s, unit);
            }
            if (s + GUMBEL_MAX < bound || s < floor_s) continue;
            const u64 now = *(volatile u64*)&best[b];
            if (now != 0 && s + gumbel_approx(key, c0 + j) + 2.0f * tol < fkey_inv((u32)(now >> 32))) continue;
            atomicMax((unsigned long long*)&best[b], (unsigned long long)pack_score(s + gumbel(key, c0 + j), c0 + j));
        }
    }
    add_mass(lo, hi, run_bin, run);
    __syncthreads();
    PROBE(2, 3);
    u32* dst = bins + ((u64)row * gridDim.x + c) * MASS_WORDS;
    for (u32 b = threadIdx.x; b < MASS_BINS_0; b += CHUNK_THREADS) {
        dst[b] = lo[b];
        dst[MASS_BINS_0 + b] = hi[b];
        dst[2 * MASS_BINS_0 + 2 * b] = (u32)best[b];
        dst[2 * MASS_BINS_0 + 2 * b + 1] = (u32)(best[b] >> 32);
    }
    PROBE(2, 4);
}

// The token that output row `row` feeds the next step: its draw, or token 0 where the draw failed
// (its sequence fails when the host takes the draws, and whatever the step computes for it is
// dropped).
__device__ __forceinline__ u32 fed_token(const u32* __restrict__ out, u32 row) {
    const u32* o = out + (u64)row * OUT_WORDS;
    return o[1] == 0 ? o[0] : 0;
}

// A decode step queued before the host has seen the previous step's draws: its token ids come
// from the sampler's output rows. pairs[2i] is the batch token, pairs[2i + 1] the output row.
extern "C" __global__ void feed_drawn_tokens(u32* __restrict__ tokens, const u32* __restrict__ out, const u32* __restrict__ pairs, u32 n_pairs) {
    dependent_wait();
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n_pairs; i += gridDim.x * blockDim.x) {
        tokens[pairs[2 * i]] = fed_token(out, pairs[2 * i + 1]);
    }
}

// A step's batch description (backend.rs upload_batch's packed words) written from the launch's
// own parameters, then the drawn tokens fed as feed_drawn_tokens feeds them (the pairs are words
// fed_at.. of the description): one launch instead of a copy from pinned memory and that kernel,
// so that nothing but launches sits between the last step's draws and this step's first kernel.
// Descriptions up to BATCH_IN_WORDS words (a launch's parameters hold 4 KB); larger ones take the
// copy. Launch with one block.
#define BATCH_IN_WORDS 960
struct BatchWords {
    u32 w[BATCH_IN_WORDS];
};
extern "C" __global__ void batch_in(u32* __restrict__ dst, u32 n_words, const BatchWords words, const u32* __restrict__ out, u32 fed_at,
                                    u32 n_fed) {
    dependent_wait();  // the last step's kernels read dst, and its draws are in out
    for (u32 i = threadIdx.x; i < n_words; i += blockDim.x) dst[i] = words.w[i];
    __syncthreads();  // a fed token lands over the word written above
    for (u32 i = threadIdx.x; i < n_fed; i += blockDim.x) dst[words.w[fed_at + 2 * i]] = fed_token(out, words.w[fed_at + 2 * i + 1]);
}
