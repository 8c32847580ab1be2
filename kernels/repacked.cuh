// Weights repacked once at upload (src/backend/cuda/repack.rs documents and writes the layout):
// 16-row tiles of Q5_0, Q8_0, Q4_K or Q6_K in which lane l = 4g + t of a warp finds, with one
// aligned 16-byte load per plane, the quant codes of rows g and g + 8 at columns 4t .. 4t+3 of
// every 16-column chunk: the A fragment of mma.m16n8k16 (with the columns of each chunk taken in
// the order 4t, 4t+1 | 4t+2, 4t+3 instead of the fragment's 2t, 2t+1 | 2t+8, 2t+9, the same
// permutation applied to x, which leaves the dot products unchanged).
//
// One struct per type, Rp_<snake name>:
//   TILE_COLS, TILE_BYTES   tile geometry (checked against repack.rs's table by a Rust test)
//   CHUNKS                  16-column chunks per tile
//   SCALE_CHUNKS            chunks that share one scale (Q6_K: 1, others: 2)
//   HAS_MIN                 the value has a per-block offset (Q4_K: d1 * q - m1)
//   load(tile, lane, for_bf16)  this lane's registers of one tile (for_bf16 = false: for the int8 path)
//   frag(c, a)              the four bf16x2 A registers of chunk c: the codes as exact integers
//   frag_f16(c, a)          the same as f16x2 (matmul_mma.cu, whose x is f16)
//   scale(sb, s, m)         the scales (and Q4_K's mins) of scale block sb for rows g and g+8
//   S8                      has the int8 path below (matvec_mma.cu):
//   frag_s8(sb, a)          the A registers of mma.m16n8k32.s8 for 32-column sub-block sb
//   scale_s8(sb, sc, m)     its scale (and min) as integers, super_scales(d, dmin) the tile's
//                           (Q4_K); block_scale(sb, d) the float scale of sub-block sb (Q5_0,
//                           Q8_0), whose codes are offset by S8_OFFSET; scale_s8_chunks(sb, sc0,
//                           sc1) the integer scales of its two 16-column chunks and super_scale(d)
//                           the tile's (Q6_K, whose codes frag_s8 makes signed: S8_OFFSET 0)
//   value(tile, r, kc)      one element, computed exactly as the CPU decoder does (embedding,
//                           prefill dequantization)
//
// The integer of a code goes to bf16 exactly: OR-ing a code c < 128 into the mantissa of 128.0
// (0x4300) gives 128 + c, and one bf16x2 fma subtracts 128 plus the type's offset. Q8_0's bytes
// (stored XOR 0x80) go through float32 (OR into 2^23) and keep their exact top halves.
#pragma once
#include "common.cuh"

#define RP_TILE_ROWS 16

// ---- loads: tiles are 16-byte aligned (256-byte aligned buffer, tile sizes multiples of 16);
// weights are read once, so they bypass L1. RP_EVICT_FIRST=1 (matvec_mma.cu's MMA_EVICT_FIRST)
// also marks them first to go from L2 ----
#ifndef RP_EVICT_FIRST
#define RP_EVICT_FIRST 0
#endif
#if RP_EVICT_FIRST
// Before sm_100 only a cache policy says it (the .L2::evict_first qualifier needs 256-bit loads).
__device__ __forceinline__ u64 rp_policy() {
    u64 policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    return policy;
}
#define RP_LD(TYPE, OUTS, ADDR, POLICY) "ld.global.nc.L1::no_allocate.L2::cache_hint" TYPE " " OUTS ", [" ADDR "], " POLICY ";"
#define RP_POLICY , "l"(rp_policy())
#else
#define RP_LD(TYPE, OUTS, ADDR, POLICY) "ld.global.nc.L1::no_allocate" TYPE " " OUTS ", [" ADDR "];"
#define RP_POLICY
#endif
__device__ __forceinline__ uint4 rp_ld16(const u8* p) {
    uint4 v;
    asm(RP_LD(".v4.u32", "{%0, %1, %2, %3}", "%4", "%5") : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) RP_POLICY);
    return v;
}
__device__ __forceinline__ uint2 rp_ld8(const u8* p) {
    uint2 v;
    asm(RP_LD(".v2.u32", "{%0, %1}", "%2", "%3") : "=r"(v.x), "=r"(v.y) : "l"(p) RP_POLICY);
    return v;
}
__device__ __forceinline__ u32 rp_ld4(const u8* p) {
    u32 v;
    asm(RP_LD(".u32", "%0", "%1", "%2") : "=r"(v) : "l"(p) RP_POLICY);
    return v;
}
__device__ __forceinline__ u32 rp_ld2(const u8* p) {
    unsigned short v;
    asm(RP_LD(".u16", "%0", "%1", "%2") : "=h"(v) : "l"(p) RP_POLICY);
    return v;
}

// ---- exact conversions ----
// f16 bits -> float, by the hardware (exact for every finite half, subnormals included).
__device__ __forceinline__ float rp_half(u32 h) {
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"((unsigned short)h));
    return f;
}
// bf16x2: a * 1 + c, elementwise (the subtraction of the magic-number offset; exact here).
__device__ __forceinline__ u32 rp_bf16x2_add(u32 a, u32 c) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3F803F80u), "r"(c));
    return d;
}
// v, as a value the compiler keeps in a register: the decoders' masks are used dozens of times
// a tile, and ptxas otherwise rebuilds a constant with a move before each use (a shuffle's
// result it cannot rebuild). One shuffle a tile.
__device__ __forceinline__ u32 rp_keep(u32 v) { return __shfl_sync(FULL_WARP, v, 0); }
// Byte b of w as an exact float, one byte permute and one subtraction: `magic` holds 2^23's
// bits, 0x4B000000 (from rp_keep), and the permute puts byte b under its exponent.
__device__ __forceinline__ float rp_byte_f(u32 w, int b, u32 magic) {
    return __fsub_rn(__uint_as_float(__byte_perm(w, magic, 0x7440u | (u32)b)), 8388608.0f);
}
// Byte b of w, sign-extended, in one byte permute (a selector nibble with bit 3 set replicates
// the sign of the byte it names).
__device__ __forceinline__ int rp_sbyte(u32 w, int b) {
    const u32 e = 8u | (u32)b, sel = (u32)b | (e << 4) | (e << 8) | (e << 12);
    u32 v;
    asm("prmt.b32 %0, %1, 0, %2;" : "=r"(v) : "r"(w), "r"(sel));
    return (int)v;
}
#define RP_BF16X2_128 0x43004300u        // 128.0 in both halves
#define RP_BF16X2_MINUS_128 0xC300C300u  // -128
#define RP_BF16X2_MINUS_144 0xC310C310u  // -(128 + 16): Q5_0's codes are offset by 16
#define RP_BF16X2_MINUS_160 0xC320C320u  // -(128 + 32): Q6_K's codes are offset by 32

// The f16 decoding (matmul_mma.cu): a code c < 1024 OR-ed into the mantissa of 1024.0 (0x6400)
// gives 1024 + c, and one f16x2 fma subtracts 1024 plus the type's offset, exactly.
__device__ __forceinline__ u32 rp_f16x2_add(u32 a, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3C003C00u), "r"(c));
    return d;
}
#define RP_F16X2_1024 0x64006400u
#define RP_F16X2_MINUS_1024 0xE400E400u  // Q4_K's codes 0..15
#define RP_F16X2_MINUS_1040 0xE410E410u  // Q5_0's, offset by 16
#define RP_F16X2_MINUS_1056 0xE420E420u  // Q6_K's, offset by 32
#define RP_F16X2_MINUS_1152 0xE480E480u  // Q8_0's bytes, stored XOR 0x80

// The two codes of pair P of nibble words `q` (at bits 4 (P % 4) and 16 + 4 (P % 4) of word
// P / 4), as the low and high halves; `mask` is 0x000F000F (Q4_K passes its kept register).
__device__ __forceinline__ u32 rp_nibbles(const u32* q, int P, u32 mask) { return (q[P >> 2] >> (4 * (P & 3))) & mask; }

// Block sb's f16 scale, rows g and g+8, of a 32-column-block type (Q5_0, Q8_0) whose tile holds
// four scales a row in `d` (blocks 0 and 1 in .x, 2 and 3 in .y).
__device__ __forceinline__ void rp_block_scales(const uint2 d[2], int sb, float d_out[2]) {
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const u32 w = sb < 2 ? d[h].x : d[h].y;
        d_out[h] = rp_half((sb & 1) ? (w >> 16) : (w & 0xffffu));
    }
}

// Where an element of a tile lives (see repack.rs): row r (0..16), tile column kc.
struct RpSlot {
    int h, lane, chunk, pair, second, j;
    __device__ __forceinline__ RpSlot(int r, int kc) {
        const int g = r & 7, e = kc & 15, t = e >> 2;
        h = r >> 3;
        lane = 4 * g + t;
        chunk = kc >> 4;
        j = e & 3;
        pair = 2 * chunk + (j >> 1);
        second = j & 1;
    }
};
// Byte offset of the nibble-plane word holding pair P of (h, lane), for `parts` 16-byte parts.
__device__ __forceinline__ int rp_nibble_word_at(int parts, int h, int lane, int pair) {
    const int w = pair >> 2;
    return ((h * parts + (w >> 2)) * 32 + lane) * 16 + 4 * (w & 3);
}

// ---------------------------------------------------------------- Q5_0
struct Rp_q5_0 {
    static constexpr int TILE_COLS = 128, TILE_BYTES = 1408, CHUNKS = 8, SCALE_CHUNKS = 2;
    static constexpr bool HAS_MIN = false, S8 = true;
    static constexpr int S8_OFFSET = 16;  // the int8 path's codes are 0..31; the value is d * (code - 16)
    u32 q[2][4];  // nibble words of rows g, g+8
    u32 qh[2];    // high bits
    uint2 d[2];   // the four blocks' f16 scales

    __device__ __forceinline__ void load(const u8* tile, int lane, bool for_bf16 = true) {
        const int g = lane >> 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const uint4 v = rp_ld16(tile + (h * 32 + lane) * 16);
            q[h][0] = v.x, q[h][1] = v.y, q[h][2] = v.z, q[h][3] = v.w;
            qh[h] = rp_ld4(tile + 1024 + (h * 32 + lane) * 4);
            d[h] = rp_ld8(tile + 1280 + (g + 8 * h) * 8);
        }
    }
    __device__ __forceinline__ u32 pair(int h, int P) const {
        const u32 v = rp_nibbles(q[h], P, 0x000F000Fu) | (((qh[h] >> P) & 0x00010001u) << 4) | RP_BF16X2_128;
        return rp_bf16x2_add(v, RP_BF16X2_MINUS_144);
    }
    __device__ __forceinline__ void frag(int c, u32 a[4]) const {
        a[0] = pair(0, 2 * c), a[1] = pair(1, 2 * c), a[2] = pair(0, 2 * c + 1), a[3] = pair(1, 2 * c + 1);
    }
    __device__ __forceinline__ u32 pair_f16(int h, int P) const {
        const u32 v = rp_nibbles(q[h], P, 0x000F000Fu) | (((qh[h] >> P) & 0x00010001u) << 4) | RP_F16X2_1024;
        return rp_f16x2_add(v, RP_F16X2_MINUS_1040);
    }
    __device__ __forceinline__ void frag_f16(int c, u32 a[4]) const {
        a[0] = pair_f16(0, 2 * c), a[1] = pair_f16(1, 2 * c), a[2] = pair_f16(0, 2 * c + 1), a[3] = pair_f16(1, 2 * c + 1);
    }
    __device__ __forceinline__ void scale(int sb, float s[2], float m[2]) const {
        block_scale(sb, s);
        m[0] = m[1] = 0.0f;
    }
    // The int8 path: sub-block sb (one Q5_0 block) as Rp_q4_k::frag_s8 gives it, the fifth bit
    // of each code (qh bit P of pair P, bit P + 16 of its second element) moved to bit 4 of
    // the code's byte: bytes [c0 j0, c1 j0, c0 j1, c1 j1] take bits 4sb, 4sb+2, 4sb+16, 4sb+18
    // of qh, bytes [c0 j2, c1 j2, c0 j3, c1 j3] bits 4sb+1, 4sb+3, 4sb+17, 4sb+19.
    __device__ __forceinline__ void frag_s8(int sb, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 hb = qh[h] >> (4 * sb);
            a[h] = (q[h][sb] & 0x0F0F0F0Fu) | ((hb << 4) & 0x00100010u) | ((hb << 10) & 0x10001000u);
            a[2 + h] = ((q[h][sb] >> 4) & 0x0F0F0F0Fu) | ((hb << 3) & 0x00100010u) | ((hb << 9) & 0x10001000u);
        }
    }
    // Block sb's scale d, rows g and g+8.
    __device__ __forceinline__ void block_scale(int sb, float d_out[2]) const { rp_block_scales(d, sb, d_out); }
    static __device__ __forceinline__ float value(const u8* tile, int r, int kc) {
        const RpSlot s(r, kc);
        const u32 sh = 4 * (s.pair & 3) + 16 * s.second;
        const u32 lo = (ld_u32(tile + rp_nibble_word_at(1, s.h, s.lane, s.pair)) >> sh) & 15u;
        const u32 hi = (ld_u32(tile + 1024 + (s.h * 32 + s.lane) * 4) >> (s.pair + 16 * s.second)) & 1u;
        const float d = ld_f16(tile + 1280 + 8 * r + 2 * (kc >> 5));
        return __fmul_rn(__int2float_rn((int)(lo | (hi << 4)) - 16), d);
    }
};

// ---------------------------------------------------------------- Q8_0
struct Rp_q8_0 {
    static constexpr int TILE_COLS = 128, TILE_BYTES = 2176, CHUNKS = 8, SCALE_CHUNKS = 2;
    static constexpr bool HAS_MIN = false, S8 = true;
    static constexpr int S8_OFFSET = 0;
    u32 q[2][8];  // chunk c's four bytes (int8 XOR 0x80) of rows g, g+8
    uint2 d[2];

    __device__ __forceinline__ void load(const u8* tile, int lane, bool for_bf16 = true) {
        const int g = lane >> 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const uint4 v = rp_ld16(tile + ((h * 2 + part) * 32 + lane) * 16);
                q[h][4 * part] = v.x, q[h][4 * part + 1] = v.y, q[h][4 * part + 2] = v.z, q[h][4 * part + 3] = v.w;
            }
            d[h] = rp_ld8(tile + 2048 + (g + 8 * h) * 8);
        }
    }
    // Byte b of w as an exact float (the byte is the int8 XOR 0x80): 2^23 + byte - (2^23 + 128).
    static __device__ __forceinline__ u32 code_bits(u32 w, int b) {
        return __float_as_uint(__fsub_rn(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | b)), 8388736.0f));
    }
    // Two integers in float32 have their low 16 bits zero: their top halves are the bf16.
    static __device__ __forceinline__ u32 pair_of(u32 w, int b) { return __byte_perm(code_bits(w, b), code_bits(w, b + 1), 0x7632u); }
    __device__ __forceinline__ void frag(int c, u32 a[4]) const {
        a[0] = pair_of(q[0][c], 0), a[1] = pair_of(q[1][c], 0), a[2] = pair_of(q[0][c], 2), a[3] = pair_of(q[1][c], 2);
    }
    // Bytes b and b + 1 of w under 1024.0's exponent (0x64), then minus 1024 + 128.
    static __device__ __forceinline__ u32 pair_f16_of(u32 w, int b) {
        return rp_f16x2_add(__byte_perm(w, 0x64u, b == 0 ? 0x4140u : 0x4342u), RP_F16X2_MINUS_1152);
    }
    __device__ __forceinline__ void frag_f16(int c, u32 a[4]) const {
        a[0] = pair_f16_of(q[0][c], 0), a[1] = pair_f16_of(q[1][c], 0), a[2] = pair_f16_of(q[0][c], 2), a[3] = pair_f16_of(q[1][c], 2);
    }
    __device__ __forceinline__ void scale(int sb, float s[2], float m[2]) const {
        block_scale(sb, s);
        m[0] = m[1] = 0.0f;
    }
    // The int8 path: sub-block sb (one Q8_0 block, chunks 2 sb and 2 sb + 1) with its bytes
    // interleaved into the order stage_x_s8 stages x in ([c0 j0, c1 j0, c0 j1, c1 j1] and [c0 j2,
    // c1 j2, c0 j3, c1 j3], as the nibble types' codes come), signed again.
    __device__ __forceinline__ void frag_s8(int sb, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            a[h] = __byte_perm(q[h][2 * sb], q[h][2 * sb + 1], 0x5140u) ^ 0x80808080u;
            a[2 + h] = __byte_perm(q[h][2 * sb], q[h][2 * sb + 1], 0x7362u) ^ 0x80808080u;
        }
    }
    __device__ __forceinline__ void block_scale(int sb, float d_out[2]) const { rp_block_scales(d, sb, d_out); }
    static __device__ __forceinline__ float value(const u8* tile, int r, int kc) {
        const RpSlot s(r, kc);
        const u32 b = tile[((s.h * 2 + (s.chunk >> 2)) * 32 + s.lane) * 16 + 4 * (s.chunk & 3) + s.j];
        const float d = ld_f16(tile + 2048 + 8 * r + 2 * (kc >> 5));
        return __fmul_rn(__int2float_rn((int)(signed char)(unsigned char)(b ^ 0x80u)), d);
    }
};

// ---------------------------------------------------------------- Q4_K
struct Rp_q4_k {
    static constexpr int TILE_COLS = 256, TILE_BYTES = 2304, CHUNKS = 16, SCALE_CHUNKS = 2;
    static constexpr bool HAS_MIN = true;
    u32 q[2][8];     // nibble words of rows g, g+8
    uint4 rec[2];    // d | dmin << 16, then the 12 packed scale bytes
    u32 nib, magic;  // 0x000F000F and 0x4B000000 in registers (rp_keep)

    __device__ __forceinline__ void load(const u8* tile, int lane, bool for_bf16 = true) {
        const int g = lane >> 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const uint4 v = rp_ld16(tile + ((h * 2 + part) * 32 + lane) * 16);
                q[h][4 * part] = v.x, q[h][4 * part + 1] = v.y, q[h][4 * part + 2] = v.z, q[h][4 * part + 3] = v.w;
            }
            rec[h] = rp_ld16(tile + 2048 + (g + 8 * h) * 16);
        }
        if (for_bf16) {  // the int8 path needs neither (and the shuffles cost a few instructions a tile)
            nib = rp_keep(0x000F000Fu);
            magic = rp_keep(0x4B000000u);
        }
    }
    __device__ __forceinline__ u32 code(int h, int P) const {
        const u32 v = rp_nibbles(q[h], P, nib) | RP_BF16X2_128;
        return rp_bf16x2_add(v, RP_BF16X2_MINUS_128);
    }
    __device__ __forceinline__ void frag(int c, u32 a[4]) const {
        a[0] = code(0, 2 * c), a[1] = code(1, 2 * c), a[2] = code(0, 2 * c + 1), a[3] = code(1, 2 * c + 1);
    }
    __device__ __forceinline__ u32 code_f16(int h, int P) const {
        return rp_f16x2_add(rp_nibbles(q[h], P, 0x000F000Fu) | RP_F16X2_1024, RP_F16X2_MINUS_1024);
    }
    __device__ __forceinline__ void frag_f16(int c, u32 a[4]) const {
        a[0] = code_f16(0, 2 * c), a[1] = code_f16(1, 2 * c), a[2] = code_f16(0, 2 * c + 1), a[3] = code_f16(1, 2 * c + 1);
    }
    // The 6-bit scales (scw) and mins (mw) of the four sub-blocks of sb's half, one a byte, for
    // row g + 8h (scale_min_k4 in common.cuh): bytes 0..3 of the packed scales hold sc[0..3] (low
    // 6 bits) and the top bits of sc[4..7], bytes 4..7 m[0..3] and the top bits of m[4..7], bytes
    // 8..11 the low nibbles of sc/m[4..7].
    __device__ __forceinline__ void scale_words(int h, int sb, u32& scw, u32& mw) const {
        const u32 s0 = rec[h].y, s1 = rec[h].z, s2 = rec[h].w;
        scw = sb < 4 ? (s0 & 0x3F3F3F3Fu) : ((s2 & 0x0F0F0F0Fu) | ((s0 >> 2) & 0x30303030u));
        mw = sb < 4 ? (s1 & 0x3F3F3F3Fu) : (((s2 >> 4) & 0x0F0F0F0Fu) | ((s1 >> 2) & 0x30303030u));
    }
    // ---- the f16 GEMM's folded path (matmul_mma.cu) ----
    // Sub-block sb's 6-bit scale sc as f16 in both halves (sc2) and -1024 * sc likewise (neg2),
    // rows g and g+8: exact (sc * 1024 <= 64512).
    __device__ __forceinline__ void scale_pairs_f16(int sb, u32 sc2[2], u32 neg2[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 scw, mw;
            scale_words(h, sb, scw, mw);
            const u32 v = __byte_perm(scw, 0u, 0x4440u | (u32)(sb & 3)) * 0x00010001u;
            sc2[h] = rp_f16x2_add(v | RP_F16X2_1024, RP_F16X2_MINUS_1024);
            asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(neg2[h]) : "r"(sc2[h]), "r"(0xE400E400u));
        }
    }
    // Chunk c's A registers as sc * code, exactly (at most 63 * 15 = 945): one f16x2 fma of
    // 1024 + code (the OR into 1024.0's mantissa) times sc, plus -1024 * sc. (Needs `nib`:
    // loaded with for_bf16.)
    __device__ __forceinline__ void frag_f16_scaled(int c, const u32 sc2[2], const u32 neg2[2], u32 a[4]) const {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int h = i & 1, P = 2 * c + (i >> 1);
            const u32 v = rp_nibbles(q[h], P, nib) | RP_F16X2_1024;
            asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(a[i]) : "r"(v), "r"(sc2[h]), "r"(neg2[h]));
        }
    }
    // The A registers of the tile's mins as one 16-column chunk: column 2 sb + e (e = 0, 1) of
    // row r holds m[r][sb], so that B columns [hi, lo] of x's 32-column sums give sum(m * xsum);
    // lane t holds columns 4t .. 4t+3, the mins of sub-blocks 2t and 2t + 1.
    __device__ __forceinline__ void mins_frag_f16(int t, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int sb = 2 * t + e;
                u32 scw, mw;
                scale_words(h, sb, scw, mw);
                const u32 v = __byte_perm(mw, 0u, 0x4440u | (u32)(sb & 3)) * 0x00010001u;
                a[2 * e + h] = rp_f16x2_add(v | RP_F16X2_1024, RP_F16X2_MINUS_1024);
            }
        }
    }
    // Sub-block sb's scale and min as floats (times d and dmin), rows g and g+8.
    __device__ __forceinline__ void scale(int sb, float s[2], float m[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 scw, mw;
            scale_words(h, sb, scw, mw);
            s[h] = __fmul_rn(rp_half(rec[h].x & 0xffffu), rp_byte_f(scw, sb & 3, magic));
            m[h] = __fmul_rn(rp_half(rec[h].x >> 16), rp_byte_f(mw, sb & 3, magic));
        }
    }
    // ---- the int8 path (matvec_mma.cu: one or two x rows, and from three up to MMA_S8_MAX_NT) ----
    static constexpr bool S8 = true;
    static constexpr int S8_OFFSET = 0;
    // Sub-block sb (32 columns) as the A fragment of mma.m16n8k32.s8, the codes 0..15 as bytes.
    // Nibble word sb of a row holds, for column j of this lane's four in chunk c = 2 sb + u,
    // the code at bit 4 (2u + (j >> 1)) + 16 (j & 1); masking the low and the high nibbles of
    // its bytes gives bytes [c0 j0, c1 j0, c0 j1, c1 j1] and [c0 j2, c1 j2, c0 j3, c1 j3]. The
    // fragment's columns 4t .. 4t+3 and 16+4t .. 16+4t+3 are taken in that order: stage_x_s8
    // stages x the same way, so the dot products are unchanged.
    __device__ __forceinline__ void frag_s8(int sb, u32 a[4]) const {
        a[0] = q[0][sb] & 0x0F0F0F0Fu, a[1] = q[1][sb] & 0x0F0F0F0Fu;
        a[2] = (q[0][sb] >> 4) & 0x0F0F0F0Fu, a[3] = (q[1][sb] >> 4) & 0x0F0F0F0Fu;
    }
    // Sub-block sb's 6-bit scale and min as integers, rows g and g+8.
    __device__ __forceinline__ void scale_s8(int sb, int sc[2], int m[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 scw, mw;
            scale_words(h, sb, scw, mw);
            sc[h] = (int)__byte_perm(scw, 0u, 0x4440u | (u32)(sb & 3));
            m[h] = (int)__byte_perm(mw, 0u, 0x4440u | (u32)(sb & 3));
        }
    }
    // The tile's mins as the A fragment of one mma.m16n8k32.s8 whose k is the sub-block: lane t
    // holds k = 4t .. 4t+3 of rows g and g+8, so t = 0 the mins of sub-blocks 0-3 and t = 1 those
    // of 4-7 (a byte each, as scale_words packs them); k >= 8 is zero. Times B = x's 32-column
    // sums by sub-block, it gives sum(m * sum(x)) for the whole tile in one instruction.
    __device__ __forceinline__ void mins_frag_s8(int t, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            u32 scw, mw;
            scale_words(h, t == 1 ? 4 : 0, scw, mw);
            a[h] = t < 2 ? mw : 0u;
        }
        a[2] = a[3] = 0u;
    }
    // The tile's super-block scales d and dmin, rows g and g+8.
    __device__ __forceinline__ void super_scales(float d[2], float dmin[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) d[h] = rp_half(rec[h].x & 0xffffu), dmin[h] = rp_half(rec[h].x >> 16);
    }
    static __device__ __forceinline__ float value(const u8* tile, int r, int kc) {
        const RpSlot s(r, kc);
        const u32 sh = 4 * (s.pair & 3) + 16 * s.second;
        const u32 q = (ld_u32(tile + rp_nibble_word_at(2, s.h, s.lane, s.pair)) >> sh) & 15u;
        const u8* rec = tile + 2048 + 16 * r;
        u32 sc, m;
        scale_min_k4(kc >> 5, rec + 4, &sc, &m);
        const float d1 = __fmul_rn(ld_f16(rec), __uint2float_rn(sc));
        const float m1 = __fmul_rn(ld_f16(rec + 2), __uint2float_rn(m));
        return __fsub_rn(__fmul_rn(d1, __uint2float_rn(q)), m1);
    }
};

// ---------------------------------------------------------------- Q6_K
// RP_Q6_K_S8=0 keeps Q6_K on the bf16 path of matvec_mma.cu (for comparison).
#ifndef RP_Q6_K_S8
#define RP_Q6_K_S8 1
#endif
struct Rp_q6_k {
    static constexpr int TILE_COLS = 256, TILE_BYTES = 3360, CHUNKS = 16, SCALE_CHUNKS = 1;
    static constexpr bool HAS_MIN = false, S8 = RP_Q6_K_S8;
    static constexpr int S8_OFFSET = 0;
    u32 q[2][8];   // low nibbles
    u32 qh[2][4];  // two high bits per code
    u32 sc[2][4];  // the 16 int8 scales (chunk j's at byte j)
    u32 d[2];      // f16 bits

    __device__ __forceinline__ void load(const u8* tile, int lane, bool for_bf16 = true) {
        const int g = lane >> 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int part = 0; part < 2; part++) {
                const uint4 v = rp_ld16(tile + ((h * 2 + part) * 32 + lane) * 16);
                q[h][4 * part] = v.x, q[h][4 * part + 1] = v.y, q[h][4 * part + 2] = v.z, q[h][4 * part + 3] = v.w;
            }
            const uint4 hv = rp_ld16(tile + 2048 + (h * 32 + lane) * 16);
            qh[h][0] = hv.x, qh[h][1] = hv.y, qh[h][2] = hv.z, qh[h][3] = hv.w;
            const uint4 sv = rp_ld16(tile + 3072 + (g + 8 * h) * 16);
            sc[h][0] = sv.x, sc[h][1] = sv.y, sc[h][2] = sv.z, sc[h][3] = sv.w;
            d[h] = rp_ld2(tile + 3328 + (g + 8 * h) * 2);
        }
    }
    __device__ __forceinline__ u32 pair(int h, int P) const {
        const u32 hi = ((qh[h][P >> 3] >> (2 * (P & 7))) & 0x00030003u) << 4;
        return rp_bf16x2_add(rp_nibbles(q[h], P, 0x000F000Fu) | hi | RP_BF16X2_128, RP_BF16X2_MINUS_160);
    }
    __device__ __forceinline__ void frag(int c, u32 a[4]) const {
        a[0] = pair(0, 2 * c), a[1] = pair(1, 2 * c), a[2] = pair(0, 2 * c + 1), a[3] = pair(1, 2 * c + 1);
    }
    __device__ __forceinline__ u32 pair_f16(int h, int P) const {
        const u32 hi = ((qh[h][P >> 3] >> (2 * (P & 7))) & 0x00030003u) << 4;
        return rp_f16x2_add(rp_nibbles(q[h], P, 0x000F000Fu) | hi | RP_F16X2_1024, RP_F16X2_MINUS_1056);
    }
    __device__ __forceinline__ void frag_f16(int c, u32 a[4]) const {
        a[0] = pair_f16(0, 2 * c), a[1] = pair_f16(1, 2 * c), a[2] = pair_f16(0, 2 * c + 1), a[3] = pair_f16(1, 2 * c + 1);
    }
    // The CPU computes (d * sc) * q; d * sc is exact (11 by 8 bits), so it is the scale here.
    __device__ __forceinline__ void scale(int sb, float s[2], float m[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            s[h] = __fmul_rn(rp_half(d[h]), __int2float_rn(rp_sbyte(sc[h][sb >> 2], sb & 3)));
            m[h] = 0.0f;
        }
    }
    // ---- the int8 path (matvec_mma.cu) ----
    // Sub-block sb (32 columns: chunks 2 sb and 2 sb + 1) as the A fragment of
    // mma.m16n8k32.s8 in Rp_q4_k::frag_s8's column order, each code as the signed byte code - 32:
    // bytes [c0 j0, c1 j0, c0 j1, c1 j1] and [c0 j2, c1 j2, c0 j3, c1 j3], so chunk 2 sb's codes
    // are bytes 0 and 2 of every register and chunk 2 sb + 1's bytes 1 and 3 (the two chunks
    // have scales of their own: tile_products_s8_chunks masks one or the other). The high bits
    // of pair P = 4 sb + k sit at bit 8 (sb & 1) + 2k of word sb / 2 (+16 for its second
    // element) and move to bits 4-5 of their code's byte.
    __device__ __forceinline__ void frag_s8(int sb, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 w = qh[h][sb >> 1] >> (8 * (sb & 1));
            const u32 lo = (q[h][sb] & 0x0F0F0F0Fu) | ((w << 4) & 0x00300030u) | ((w << 8) & 0x30003000u);
            const u32 hi = ((q[h][sb] >> 4) & 0x0F0F0F0Fu) | ((w << 2) & 0x00300030u) | ((w << 6) & 0x30003000u);
            a[h] = signed6(lo), a[2 + h] = signed6(hi);
        }
    }
    // The same codes as unsigned bytes 0..63 (frag_s8 before signed6; written out again, since
    // sharing the code moved the default kernels' scheduling), for mma's u8 x s8 form
    // (matvec_mma.cu, MMA_S8_SUMS_MMA: the -32 then comes back through x's chunk sums, see
    // scales_frag_s8).
    __device__ __forceinline__ void frag_u8(int sb, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 w = qh[h][sb >> 1] >> (8 * (sb & 1));
            a[h] = (q[h][sb] & 0x0F0F0F0Fu) | ((w << 4) & 0x00300030u) | ((w << 8) & 0x30003000u);
            a[2 + h] = ((q[h][sb] >> 4) & 0x0F0F0F0Fu) | ((w << 2) & 0x00300030u) | ((w << 6) & 0x30003000u);
        }
    }
    // The tile's 16 chunk scales as the A fragment of one mma.m16n8k32.s8 whose k is the chunk:
    // lane t holds k = 4t .. 4t+3 of rows g and g+8, the scales of chunks 4t .. 4t+3 (word t of
    // sc); k >= 16 is zero. Times B = x's 16-column sums by chunk, it gives sum(sc * sum(x)).
    __device__ __forceinline__ void scales_frag_s8(int t, u32 a[4]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) a[h] = t == 0 ? sc[h][0] : t == 1 ? sc[h][1] : t == 2 ? sc[h][2] : sc[h][3];
        a[2] = a[3] = 0u;
    }
    // Four 6-bit codes c (one a byte) as the signed bytes c - 32: c ^ 32 is c - 32 modulo 64,
    // and bit 5 (its sign) copied into bits 6 and 7 (times 6: no carry leaves a byte).
    static __device__ __forceinline__ u32 signed6(u32 v) {
        v ^= 0x20202020u;
        return v | ((v & 0x20202020u) * 6u);
    }
    // The signed scales of chunks 2 sb (sc0) and 2 sb + 1 (sc1), rows g and g+8.
    __device__ __forceinline__ void scale_s8_chunks(int sb, int sc0[2], int sc1[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 w = sc[h][sb >> 1];
            sc0[h] = rp_sbyte(w, 2 * (sb & 1));
            sc1[h] = rp_sbyte(w, 2 * (sb & 1) + 1);
        }
    }
    // The tile's super-block scale d, rows g and g+8.
    __device__ __forceinline__ void super_scale(float d_out[2]) const {
#pragma unroll
        for (int h = 0; h < 2; h++) d_out[h] = rp_half(d[h]);
    }
    static __device__ __forceinline__ float value(const u8* tile, int r, int kc) {
        const RpSlot s(r, kc);
        const u32 sh = 4 * (s.pair & 3) + 16 * s.second;
        const u32 lo = (ld_u32(tile + rp_nibble_word_at(2, s.h, s.lane, s.pair)) >> sh) & 15u;
        const u32 hb = (ld_u32(tile + 2048 + (s.h * 32 + s.lane) * 16 + 4 * (s.pair >> 3)) >> (2 * (s.pair & 7) + 16 * s.second)) & 3u;
        const int sc = (int)(signed char)tile[3072 + 16 * r + (kc >> 4)];
        const float d = ld_f16(tile + 3328 + 2 * r);
        return __fmul_rn(__fmul_rn(d, __int2float_rn(sc)), __int2float_rn((int)(lo | (hb << 4)) - 32));
    }
};

// The element at (row, col) of a repacked matrix with k_tiles column tiles.
template <class T>
__device__ __forceinline__ float rp_element(const u8* __restrict__ tiles, u32 k_tiles, u32 row, u32 col) {
    const u8* tile = tiles + ((u64)(row / RP_TILE_ROWS) * k_tiles + col / T::TILE_COLS) * T::TILE_BYTES;
    return T::value(tile, (int)(row % RP_TILE_ROWS), (int)(col % T::TILE_COLS));
}
