// Drawing the next token of every row of logits on the GPU, as src/sampling defines the draw:
// penalties, then greedy (temperature 0) or temperature, top-k, top-p over what top-k kept,
// min-p, and a Gumbel-max draw whose noise is a function of (the draw's key, token id) --
// the same bits as src/sampling/noise.rs. Nothing sorts the vocabulary: top-k finds its boundary
// by radix selection (three counting passes over the row), top-p either sorts the few top-k
// survivors in shared memory or, without a small top-k, finds its boundary by radix selection
// over probability mass. Only the chosen token, its log-probability and the k best alternatives
// go back to the host.
//
// One block of SAMPLE_THREADS threads per row. Differences from the host sampler: ties exactly at
// a top-k or top-p boundary keep every tied token (the host keeps the lower ids), and sums run in
// another order (a token within rounding of the top-p boundary may go either way).
#include "common.cuh"

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

// ---- block reductions (every thread calls, every thread gets the result) ----

__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    v = warp_sum_f64(v);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    double t = lane < SAMPLE_WARPS ? scratch[lane] : 0.0;
    t = warp_sum_f64(t);
    return t;
}

__device__ __forceinline__ u32 block_sum_u32(u32 v, u32* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_WARP, v, o);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 t = lane < SAMPLE_WARPS ? scratch[lane] : 0u;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(FULL_WARP, t, o);
    return t;
}

__device__ __forceinline__ u32 block_min_u32(u32 v, u32* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(FULL_WARP, v, o));
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    u32 t = lane < SAMPLE_WARPS ? scratch[lane] : 0xffffffffu;
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
    s = lane < SAMPLE_WARPS ? sc_s[lane] : 0.0f;
    id = lane < SAMPLE_WARPS ? sc_id[lane] : 0xffffffffu;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float s2 = __shfl_xor_sync(FULL_WARP, s, o);
        const u32 id2 = __shfl_xor_sync(FULL_WARP, id, o);
        better(s, id, s2, id2);
    }
}

struct Shared {
    u32 hist[2048];
    double mass[256];
    double red_f64[SAMPLE_WARPS];
    u32 red_u32[SAMPLE_WARPS];
    float red_s[SAMPLE_WARPS];
    u32 red_id[SAMPLE_WARPS];
    u32 bcast[4];
    double bcast_f64[2];
    float sort_s[SORT_CAP];
    u32 sort_id[SORT_CAP];
    u32 n_gathered;
};

// The key of the k-th largest key (1-based) among keys(i) >= floor_key, by radix selection:
// digits of 11, 11 and 10 bits, one counting pass each. Call with every thread.
template <typename KeyOf>
__device__ u32 kth_largest_key(u32 n, u32 k, u32 floor_key, KeyOf key_of, Shared& sh) {
    u32 prefix = 0, mask = 0, remaining = k;
    const int shifts[3] = {21, 10, 0};
    const int bits[3] = {11, 11, 10};
#pragma unroll
    for (int level = 0; level < 3; level++) {
        const u32 nbins = 1u << bits[level];
        for (u32 b = threadIdx.x; b < nbins; b += SAMPLE_THREADS) sh.hist[b] = 0;
        __syncthreads();
        for (u32 i = threadIdx.x; i < n; i += SAMPLE_THREADS) {
            const u32 kk = key_of(i);
            if (kk >= floor_key && (kk & mask) == prefix) atomicAdd(&sh.hist[(kk >> shifts[level]) & (nbins - 1)], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 cum = 0, chosen = 0;
            for (int b = (int)nbins - 1; b >= 0; b--) {
                if (cum + sh.hist[b] >= remaining) {
                    chosen = (u32)b;
                    break;
                }
                cum += sh.hist[b];
            }
            sh.bcast[0] = chosen;
            sh.bcast[1] = remaining - cum;
        }
        __syncthreads();
        prefix |= sh.bcast[0] << shifts[level];
        mask |= (nbins - 1) << shifts[level];
        remaining = sh.bcast[1];
        __syncthreads();
    }
    return prefix;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(float* __restrict__ logits, u32 vocab, const RowParams* __restrict__ params,
                const u32* __restrict__ pen_ids, const u32* __restrict__ pen_counts, const u32* __restrict__ pen_in_prompt,
                u32* __restrict__ out) {
    __shared__ Shared sh;
    const u32 row = blockIdx.x;
    const RowParams p = params[row];
    float* l = logits + (u64)row * vocab;
    u32* o = out + (u64)row * OUT_WORDS;

    // 1. Penalties, in place (entries are distinct tokens), in the host's float order.
    for (u32 e = threadIdx.x; e < p.n_penalty; e += SAMPLE_THREADS) {
        const u32 id = pen_ids[p.penalty_offset + e];
        if (id >= vocab) continue;
        const u32 count = pen_counts[p.penalty_offset + e];
        float v = l[id];
        if (p.repetition != 1.0f && (count > 0 || pen_in_prompt[p.penalty_offset + e])) v = v > 0.0f ? v / p.repetition : v * p.repetition;
        if (count > 0 && (p.presence != 0.0f || p.frequency != 0.0f)) v -= p.presence + p.frequency * (float)count;
        l[id] = v;
    }
    __syncthreads();

    const bool greedy = p.temperature == 0.0f;
    const float t = greedy ? 1.0f : p.temperature;

    // 2. The best token (lowest id on a tie), finite count, and broken values.
    float best_s = 0.0f;
    u32 best_id = 0xffffffffu, finite = 0, broken = 0xffffffffu;
    for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        const float v = l[i];
        if (v != v || v == __uint_as_float(0x7f800000u)) {
            broken = min(broken, i);
            continue;
        }
        if (v == NEG_INF) continue;
        finite++;
        better(best_s, best_id, v, i);
    }
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

    // 3. Log-sum-exp over the whole row when log-probabilities are wanted.
    const bool want_lp = p.logprobs != NO_LOGPROBS;
    float lse = 0.0f;
    if (want_lp) {
        double z = 0.0;
        for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            const float v = l[i];
            if (v != NEG_INF) z += exp((double)(v / t - max_s));
        }
        z = block_sum_f64(z, sh.red_f64);
        lse = max_s + (float)log(z);
    }

    u32 token = best_id;
    if (!greedy) {
        const u64 key = ((u64)p.key_hi << 32) | p.key_lo;
        const float floor_s = max_s + p.ln_min_p;  // min-p: scaled >= max + ln(min_p)
        auto key_of = [&](u32 i) { return fkey(l[i] / t); };
        const bool has_k = p.top_k > 0 && p.top_k < finite;
        u32 thr_key = 0;  // keep keys >= thr_key
        bool drawn = false;
        if (has_k) thr_key = kth_largest_key(vocab, p.top_k, 0u, key_of, sh);

        if (has_k && p.top_k <= SMALL_K) {
            // 4a. Gather the top-k survivors, sort them (best first), cut by top-p and min-p, draw.
            if (threadIdx.x == 0) sh.n_gathered = 0;
            __syncthreads();
            for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
                const float s = l[i] / t;
                if (l[i] != NEG_INF && fkey(s) >= thr_key) {
                    const u32 slot = atomicAdd(&sh.n_gathered, 1u);
                    if (slot < SORT_CAP) {
                        sh.sort_s[slot] = s;
                        sh.sort_id[slot] = i;
                    }
                }
            }
            __syncthreads();
            const u32 n = sh.n_gathered;
            if (n <= SORT_CAP) {
                // Bitonic sort of the next power of two, padded with "none", best first.
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
                                // "i before partner" in best-first order.
                                float bs = si;
                                u32 bid = ii;
                                better(bs, bid, sp, ip);
                                const bool i_first = bid == ii && !(ii == 0xffffffffu && ip != 0xffffffffu);
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
                // Keep the shortest prefix reaching top_p of the survivors' mass (the host's
                // rule: keep while the mass ranked before is < p), then min-p; draw.
                if (threadIdx.x == 0) {
                    u32 keep = n;
                    if (p.top_p < 1.0f) {
                        double total = 0.0;
                        for (u32 j = 0; j < n; j++) total += exp((double)(sh.sort_s[j] - max_s));
                        const double target = (double)p.top_p * total;
                        double before = 0.0;
                        for (u32 j = 0; j < n; j++) {
                            if (before >= target) {
                                keep = j;
                                break;
                            }
                            before += exp((double)(sh.sort_s[j] - max_s));
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
            if (p.top_p < 1.0f) {
                u32 prefix = 0, mask = 0;
                double above = 0.0, target = 0.0;
                for (int level = 0; level < 4; level++) {
                    const int shift = 24 - 8 * level;
                    for (u32 b = threadIdx.x; b < 256; b += SAMPLE_THREADS) sh.mass[b] = 0.0;
                    __syncthreads();
                    for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
                        if (l[i] == NEG_INF) continue;
                        const float s = l[i] / t;
                        const u32 kk = fkey(s);
                        if (kk >= thr_key && (kk & mask) == prefix) atomicAdd(&sh.mass[(kk >> shift) & 255u], exp((double)(s - max_s)));
                    }
                    __syncthreads();
                    if (threadIdx.x == 0) {
                        if (level == 0) {
                            double z = 0.0;
                            for (int b = 0; b < 256; b++) z += sh.mass[b];
                            target = (double)p.top_p * z;
                        }
                        int chosen = -1, lowest = 0;
                        for (int b = 255; b >= 0; b--) {
                            if (sh.mass[b] > 0.0) lowest = b;
                            if (chosen < 0 && above + sh.mass[b] >= target) chosen = b;
                            if (chosen < 0) above += sh.mass[b];
                        }
                        // Rounding kept the total below the target: keep everything left.
                        sh.bcast[0] = chosen >= 0 ? (u32)chosen : (u32)lowest;
                        sh.bcast_f64[0] = above;
                        sh.bcast_f64[1] = target;
                    }
                    __syncthreads();
                    prefix |= sh.bcast[0] << shift;
                    mask |= 0xffu << shift;
                    above = sh.bcast_f64[0];
                    target = sh.bcast_f64[1];
                    __syncthreads();
                }
                thr_key = max(thr_key, prefix);
            }
            // 5. Gumbel-max over the kept tokens; noise only where it can still win.
            const float bound = max_s + gumbel(key, best_id);
            float ws = bound;
            u32 wid = best_id;
            for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
                if (l[i] == NEG_INF) continue;
                const float s = l[i] / t;
                if (s + GUMBEL_MAX < bound || s < floor_s || fkey(s) < thr_key) continue;
                better(ws, wid, s + gumbel(key, i), i);
            }
            block_best(ws, wid, sh.red_s, sh.red_id);
            token = wid;
        }
    }

    // 6. Log-probabilities: the chosen token's, and the k best by radix selection.
    u32 n_top = 0;
    if (want_lp && p.logprobs > 0) {
        auto key_all = [&](u32 i) { return fkey(l[i] / t); };
        const u32 k = min(p.logprobs, finite);
        const u32 thr = kth_largest_key(vocab, k, 0u, key_all, sh);
        if (threadIdx.x == 0) sh.n_gathered = 0;
        __syncthreads();
        for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            const float s = l[i] / t;
            if (l[i] != NEG_INF && fkey(s) >= thr) {
                const u32 slot = atomicAdd(&sh.n_gathered, 1u);
                if (slot < TOP_CAP) {
                    o[4 + slot] = i;
                    o[4 + TOP_CAP + slot] = __float_as_uint(s - lse);
                }
            }
        }
        __syncthreads();
        n_top = min(sh.n_gathered, (u32)TOP_CAP);
    }
    if (threadIdx.x == 0) {
        o[0] = token;
        o[1] = 0;
        o[2] = __float_as_uint(want_lp ? l[token] / t - lse : 0.0f);
        o[3] = n_top;
    }
}
