// The ggml block decoders: `deq_<type>(block, i)` is element i of one block as float32, computed
// with exactly the float operations of the CPU reference (src/quant) in the same order, written
// with explicit round-to-nearest intrinsics so that no compiler option (such as --fmad) can change
// a bit. Shared by dequant.cu, embed.cu and matvec.cu, so every kernel that reads weights sees
// the same values the CPU path computes with.
//
// Block fields are read byte by byte: blocks are 17, 18, 22, 34, 110, 210 ... bytes long, so a
// block inside a tensor is generally not 4-byte aligned.
#pragma once
#include "common.cuh"
#include "iq_tables.cuh"

// The block types the kernels decode, in GGUF id order: X(snake name, elements per block, bytes
// per block), with each block's fields (ggml's names; `d` fields are f16 unless noted). A Rust
// test (kernels.rs) checks this list against the one table in src/quant/types.rs: the same
// types as the CPU decodes, with the same geometry.
#define FERRITE_BLOCK_TYPES(X)                                                                          \
    X(f32, 1, 4)                                                                                        \
    X(f16, 1, 2)                                                                                        \
    X(q4_0, 32, 18)     /* d, qs[16] */                                                                 \
    X(q4_1, 32, 20)     /* d, m, qs[16] */                                                              \
    X(q5_0, 32, 22)     /* d, qh[4], qs[16] */                                                          \
    X(q5_1, 32, 24)     /* d, m, qh[4], qs[16] */                                                       \
    X(q8_0, 32, 34)     /* d, qs[32] (int8) */                                                          \
    X(q2_k, 256, 84)    /* scales[16], qs[64], d, dmin */                                               \
    X(q3_k, 256, 110)   /* hmask[32], qs[64], scales[12], d */                                          \
    X(q4_k, 256, 144)   /* d, dmin, scales[12], qs[128] */                                              \
    X(q5_k, 256, 176)   /* d, dmin, scales[12], qh[32], qs[128] */                                      \
    X(q6_k, 256, 210)   /* ql[128], qh[64], scales[16] (int8), d */                                     \
    X(iq2_xxs, 256, 66) /* d, qs[32] (u16) */                                                           \
    X(iq2_xs, 256, 74)  /* d, qs[32] (u16), scales[8] */                                                \
    X(iq3_xxs, 256, 98) /* d, qs[64], scales_and_signs[32] */                                           \
    X(iq1_s, 256, 50)   /* d, qs[32], qh[8] (u16) */                                                    \
    X(iq4_nl, 32, 18)   /* d, qs[16] */                                                                 \
    X(iq3_s, 256, 110)  /* d, qs[64], qh[8], signs[32], scales[4] */                                    \
    X(iq2_s, 256, 82)   /* d, qs[64], qh[8], scales[8] */                                               \
    X(iq4_xs, 256, 136) /* d, scales_h (u16), scales_l[4], qs[128] */                                   \
    X(iq1_m, 256, 56)   /* qs[32], qh[16], scales[8] (the f16 scale spread over scales' top nibbles) */ \
    X(bf16, 1, 2)                                                                                       \
    X(tq1_0, 256, 54)   /* qs[48], qh[4], d */                                                          \
    X(tq2_0, 256, 66)   /* qs[64], d */                                                                 \
    X(mxfp4, 32, 17)    /* e (E8M0), qs[16] */                                                          \
    X(nvfp4, 64, 36)    /* scales[4] (unsigned E4M3, one per 16 elements), qs[32] */

__device__ __forceinline__ float sign_of(u32 signs, int bit) { return (signs >> bit) & 1u ? -1.0f : 1.0f; }
__device__ __forceinline__ float i2f(int v) { return __int2float_rn(v); }
__device__ __forceinline__ float u2f(u32 v) { return __uint2float_rn(v); }

// ---- 32-element block types ----
__device__ __forceinline__ float deq_q4_0(const u8* b, int i) {
    float d = ld_f16(b);
    u32 q = b[2 + (i & 15)];
    int x = (int)(i < 16 ? (q & 0xfu) : (q >> 4)) - 8;
    return __fmul_rn(i2f(x), d);
}
__device__ __forceinline__ float deq_q4_1(const u8* b, int i) {
    float d = ld_f16(b), m = ld_f16(b + 2);
    u32 q = b[4 + (i & 15)];
    u32 x = i < 16 ? (q & 0xfu) : (q >> 4);
    return __fadd_rn(__fmul_rn(u2f(x), d), m);
}
__device__ __forceinline__ float deq_q5_0(const u8* b, int i) {
    float d = ld_f16(b);
    u32 qh = ld_u32(b + 2);
    u32 q = b[6 + (i & 15)];
    u32 lo = i < 16 ? (q & 0xfu) : (q >> 4);
    u32 hi = (qh >> i) & 1u;
    int x = (int)(lo | (hi << 4)) - 16;
    return __fmul_rn(i2f(x), d);
}
__device__ __forceinline__ float deq_q5_1(const u8* b, int i) {
    float d = ld_f16(b), m = ld_f16(b + 2);
    u32 qh = ld_u32(b + 4);
    u32 q = b[8 + (i & 15)];
    u32 lo = i < 16 ? (q & 0xfu) : (q >> 4);
    u32 hi = (qh >> i) & 1u;
    return __fadd_rn(__fmul_rn(u2f(lo | (hi << 4)), d), m);
}
__device__ __forceinline__ float deq_q8_0(const u8* b, int i) {
    return __fmul_rn(i2f((i8)b[2 + i]), ld_f16(b));
}
__device__ __forceinline__ float deq_iq4_nl(const u8* b, int i) {
    u32 q = b[2 + (i & 15)];
    return __fmul_rn(ld_f16(b), i2f(kvalues_iq4nl[i < 16 ? (q & 0xfu) : (q >> 4)]));
}
// NVFP4: 64 elements in 4 groups of 16, each with an unsigned E4M3 scale byte (halved to match
// the doubled E2M1 values). 0 and 0x7F decode to 0; bit 7 is ignored.
__device__ __forceinline__ float ue4m3_half(u32 x) {
    if (x == 0 || x == 0x7f) return 0.0f;
    u32 exp = (x >> 3) & 0xfu, man = x & 7u;
    // Exact in float either way, so any order gives the CPU's bits:
    // (1 + man/8) * 2^(exp-7) / 2 = (8 + man) * 2^(exp-11); man * 2^-9 / 2 = man * 2^-10.
    float v = exp == 0 ? __fmul_rn(u2f(man), 9.765625e-4f) : __fmul_rn(u2f(8u + man), __uint_as_float((exp + 116u) << 23));
    return v;
}
__device__ __forceinline__ float deq_nvfp4(const u8* b, int i) {
    int g = i >> 4, r = i & 15;
    float d = ue4m3_half(b[g]);
    u32 q = b[4 + 8 * g + (r & 7)];
    return __fmul_rn(d, i2f(kvalues_mxfp4[r < 8 ? (q & 0xfu) : (q >> 4)]));
}
__device__ __forceinline__ float deq_mxfp4(const u8* b, int i) {
    float d = e8m0_to_f32_half(b[0]);
    u32 q = b[1 + (i & 15)];
    return __fmul_rn(i2f(kvalues_mxfp4[i < 16 ? (q & 0xfu) : (q >> 4)]), d);
}

// ---- 256-element K-quants ----
__device__ __forceinline__ float deq_q2_k(const u8* b, int i) {
    const u8* scales = b;
    const u8* qs = b + 16;
    float d = ld_f16(b + 80), dmin = ld_f16(b + 82);
    int n = i >> 7, r = i & 127, j = r >> 5, half = (r >> 4) & 1, l = r & 15;
    u32 sc = scales[n * 8 + j * 2 + half];
    float dl = __fmul_rn(d, u2f(sc & 0xfu));
    float ml = __fmul_rn(dmin, u2f(sc >> 4));
    u32 q = (qs[n * 32 + half * 16 + l] >> (2 * j)) & 3u;
    return __fsub_rn(__fmul_rn(dl, u2f(q)), ml);
}
__device__ __forceinline__ float deq_q3_k(const u8* b, int i) {
    const u8* hmask = b;
    const u8* qs = b + 32;
    const u8* scales = b + 96;
    float d_all = ld_f16(b + 108);
    int n = i >> 7, r = i & 127, j = r >> 5, half = (r >> 4) & 1, l = r & 15;
    float dl = __fmul_rn(d_all, i2f(scale_q3_k(n * 8 + j * 2 + half, scales)));
    int q = (int)((qs[n * 32 + half * 16 + l] >> (2 * j)) & 3u);
    int h = (hmask[half * 16 + l] >> (n * 4 + j)) & 1u;
    return __fmul_rn(dl, i2f(q - (h ? 0 : 4)));
}
__device__ __forceinline__ float deq_q4_k(const u8* b, int i) {
    float d = ld_f16(b), dmin = ld_f16(b + 2);
    const u8* scales = b + 4;
    const u8* qs = b + 16;
    int g = i >> 6, hi = (i >> 5) & 1, l = i & 31;
    u32 sc, m;
    scale_min_k4(2 * g + hi, scales, &sc, &m);
    float d1 = __fmul_rn(d, u2f(sc));
    float m1 = __fmul_rn(dmin, u2f(m));
    u32 q = qs[32 * g + l];
    return __fsub_rn(__fmul_rn(d1, u2f(hi ? (q >> 4) : (q & 0xfu))), m1);
}
__device__ __forceinline__ float deq_q5_k(const u8* b, int i) {
    float d = ld_f16(b), dmin = ld_f16(b + 2);
    const u8* scales = b + 4;
    const u8* qh = b + 16;
    const u8* qs = b + 48;
    int g = i >> 6, hi = (i >> 5) & 1, l = i & 31;
    u32 sc, m;
    scale_min_k4(2 * g + hi, scales, &sc, &m);
    float d1 = __fmul_rn(d, u2f(sc));
    float m1 = __fmul_rn(dmin, u2f(m));
    u32 q = qs[32 * g + l];
    u32 lo = hi ? (q >> 4) : (q & 0xfu);
    u32 h = (qh[l] >> (2 * g + hi)) & 1u;
    return __fsub_rn(__fmul_rn(d1, u2f(lo + (h ? 16u : 0u))), m1);
}
__device__ __forceinline__ float deq_q6_k(const u8* b, int i) {
    const u8* ql = b;
    const u8* qh = b + 128;
    const i8* sc = (const i8*)(b + 192);
    float d = ld_f16(b + 208);
    int n = i >> 7, r = i & 127, quarter = r >> 5, l = r & 31;
    u32 lq = ql[n * 64 + l + (quarter & 1) * 32];
    u32 lo = quarter >= 2 ? (lq >> 4) : (lq & 0xfu);
    u32 hb = (qh[n * 32 + l] >> (2 * quarter)) & 3u;
    int q = (int)(lo | (hb << 4)) - 32;
    int s = sc[n * 8 + (l >> 4) + 2 * quarter];
    return __fmul_rn(__fmul_rn(d, i2f(s)), i2f(q));
}

// ---- IQ types ----
__device__ __forceinline__ float deq_iq2_xxs(const u8* b, int i) {
    float d = ld_f16(b);
    int ib = i >> 5, r = i & 31, l = r >> 3, j = r & 7;
    const u8* q = b + 2 + 8 * ib;
    u32 aux1 = ld_u32(q + 4);
    float db = __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, u2f(aux1 >> 28))), 0.25f);
    u32 grid = iq2xxs_grid[q[l] * 8 + j];
    u32 signs = ksigns_iq2xs((aux1 >> (7 * l)) & 127u);
    return __fmul_rn(__fmul_rn(db, u2f(grid)), sign_of(signs, j));
}
__device__ __forceinline__ float deq_iq2_xs(const u8* b, int i) {
    float d = ld_f16(b);
    int ib = i >> 5, r = i & 31, l = r >> 3, j = r & 7;
    u32 q = ld_u16(b + 2 + 2 * (4 * ib + l));
    u32 sc = b[66 + ib];
    float db = __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, u2f(l < 2 ? (sc & 0xfu) : (sc >> 4)))), 0.25f);
    u32 grid = iq2xs_grid[(q & 511u) * 8 + j];
    u32 signs = ksigns_iq2xs(q >> 9);
    return __fmul_rn(__fmul_rn(db, u2f(grid)), sign_of(signs, j));
}
__device__ __forceinline__ float deq_iq2_s(const u8* b, int i) {
    float d = ld_f16(b);
    const u8* qs = b + 2;
    const u8* qh = b + 66;
    const u8* scales = b + 74;
    int ib = i >> 5, r = i & 31, l = r >> 3, j = r & 7;
    u32 sc = scales[ib];
    float db = __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, u2f(l < 2 ? (sc & 0xfu) : (sc >> 4)))), 0.25f);
    u32 idx = qs[4 * ib + l] | (((u32)qh[ib] << (8 - 2 * l)) & 0x300u);
    u32 grid = iq2s_grid[idx * 8 + j];
    u32 signs = qs[32 + 4 * ib + l];
    return __fmul_rn(__fmul_rn(db, u2f(grid)), sign_of(signs, j));
}
__device__ __forceinline__ float deq_iq3_xxs(const u8* b, int i) {
    float d = ld_f16(b);
    const u8* qs = b + 2;
    int ib = i >> 5, r = i & 31, l = r >> 3, j8 = r & 7;
    u32 aux = ld_u32(b + 66 + 4 * ib);
    float db = __fmul_rn(__fmul_rn(d, __fadd_rn(0.5f, u2f(aux >> 28))), 0.5f);
    u32 signs = ksigns_iq2xs((aux >> (7 * l)) & 127u);
    u32 grid = iq3xxs_grid[qs[8 * ib + 2 * l + (j8 >> 2)] * 4 + (j8 & 3)];
    return __fmul_rn(__fmul_rn(db, u2f(grid)), sign_of(signs, j8));
}
__device__ __forceinline__ float deq_iq3_s(const u8* b, int i) {
    float d = ld_f16(b);
    const u8* qs = b + 2;
    const u8* qh = b + 66;
    const u8* signs = b + 74;
    const u8* scales = b + 106;
    int ib = i >> 5, r = i & 31, l = r >> 3, j8 = r & 7;
    u32 sc = (scales[ib >> 1] >> (4 * (ib & 1))) & 0xfu;
    float db = __fmul_rn(d, i2f((int)(1 + 2 * sc)));
    u32 h = qh[ib];
    u32 idx = j8 < 4 ? (qs[8 * ib + 2 * l] | ((h << (8 - 2 * l)) & 256u))
                     : (qs[8 * ib + 2 * l + 1] | ((h << (7 - 2 * l)) & 256u));
    u32 grid = iq3s_grid[idx * 4 + (j8 & 3)];
    return __fmul_rn(__fmul_rn(db, u2f(grid)), sign_of(signs[4 * ib + l], j8));
}
__device__ __forceinline__ float deq_iq1_s(const u8* b, int i) {
    float d = ld_f16(b);
    int ib = i >> 5, r = i & 31, l = r >> 3, j = r & 7;
    u32 qh = ld_u16(b + 34 + 2 * ib);
    float dl = __fmul_rn(d, i2f((int)(2 * ((qh >> 12) & 7u) + 1)));
    float delta = (qh & 0x8000u) ? -IQ1S_DELTA : IQ1S_DELTA;
    u32 idx = b[2 + 4 * ib + l] | (((qh >> (3 * l)) & 7u) << 8);
    int g = iq1s_grid[idx * 8 + j];
    return __fmul_rn(dl, __fadd_rn(i2f(g), delta));
}
__device__ __forceinline__ float deq_iq1_m(const u8* b, int i) {
    const u8* qs = b;
    const u8* qh = b + 32;
    u32 sc0 = ld_u16(b + 48), sc1 = ld_u16(b + 50), sc2 = ld_u16(b + 52), sc3 = ld_u16(b + 54);
    u32 scale_bits = (sc0 >> 12) | ((sc1 >> 8) & 0x00f0u) | ((sc2 >> 4) & 0x0f00u) | (sc3 & 0xf000u);
    float d = f16_to_f32(scale_bits);
    int ib = i >> 5, r = i & 31, l = r >> 3, j = r & 7;
    u32 s = ld_u16(b + 48 + 2 * (ib >> 1));
    u32 shift = 6 * (ib & 1) + (l < 2 ? 0 : 3);
    float dl = __fmul_rn(d, i2f((int)(2 * ((s >> shift) & 7u) + 1)));
    u32 h = qh[2 * ib + (l >> 1)];
    u32 idx = qs[4 * ib + l] | ((h << ((l & 1) ? 4 : 8)) & 0x700u);
    float delta = (h & ((l & 1) ? 0x80u : 0x08u)) ? -IQ1M_DELTA : IQ1M_DELTA;
    int g = iq1s_grid[idx * 8 + j];
    return __fmul_rn(dl, __fadd_rn(i2f(g), delta));
}
__device__ __forceinline__ float deq_iq4_xs(const u8* b, int i) {
    float d = ld_f16(b);
    u32 scales_h = ld_u16(b + 2);
    const u8* scales_l = b + 4;
    const u8* qs = b + 8;
    int ib = i >> 5, r = i & 31, hi = r >> 4, j = r & 15;
    u32 ls = ((scales_l[ib >> 1] >> (4 * (ib & 1))) & 0xfu) | (((scales_h >> (2 * ib)) & 3u) << 4);
    float dl = __fmul_rn(d, i2f((int)ls - 32));
    u32 q = qs[16 * ib + j];
    return __fmul_rn(dl, i2f(kvalues_iq4nl[hi ? (q >> 4) : (q & 0xfu)]));
}

// ---- ternary ----
__device__ __forceinline__ float deq_tq1_0(const u8* b, int i) {
    const u32 pow3[6] = {1, 3, 9, 27, 81, 243};
    float d = ld_f16(b + 52);
    u32 byte, p;
    if (i < 160) {
        byte = b[i & 31];
        p = pow3[i >> 5];
    } else if (i < 240) {
        int k = i - 160;
        byte = b[32 + (k & 15)];
        p = pow3[k >> 4];
    } else {
        int k = i - 240;
        byte = b[48 + (k & 3)];
        p = pow3[k >> 2];
    }
    u32 q = (byte * p) & 0xffu;
    int xi = (int)((q * 3u) >> 8);
    return __fmul_rn(i2f(xi - 1), d);
}
__device__ __forceinline__ float deq_tq2_0(const u8* b, int i) {
    float d = ld_f16(b + 64);
    int j = i >> 7, r = i & 127, l = r >> 5, m = r & 31;
    int q = (int)((b[32 * j + m] >> (2 * l)) & 3u);
    return __fmul_rn(i2f(q - 1), d);
}

// ---- plain float types (one "block" = one element) ----
__device__ __forceinline__ float deq_f32(const u8* b, int) { return __uint_as_float(ld_u32(b)); }
__device__ __forceinline__ float deq_f16(const u8* b, int) { return ld_f16(b); }
__device__ __forceinline__ float deq_bf16(const u8* b, int) { return bf16_to_f32(ld_u16(b)); }

// Elements [32*g, 32*g + 32) of a row (g: 32-element group index within the row) into w.
// Every block type holds a whole number of 32-element groups (QK = 32, 64 or 256), except the
// plain float types (QK = 1), whose groups span 32 one-element "blocks".
template <float (*F)(const u8*, int), int QK, int BYTES>
__device__ __forceinline__ void deq_group32(const u8* __restrict__ row, u32 g, float* w) {
    if constexpr (QK >= 32) {
        const u8* blk = row + (u64)(g / (QK / 32)) * BYTES;
        const int first = (int)(g % (QK / 32)) * 32;
#pragma unroll
        for (int j = 0; j < 32; j++) w[j] = F(blk, first + j);
    } else {
#pragma unroll
        for (int j = 0; j < 32; j++) w[j] = F(row + ((u64)g * 32 + j) * BYTES, 0);
    }
}
