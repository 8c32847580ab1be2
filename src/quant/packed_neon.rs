//! NEON kernels with the dot-product extension (`sdot`, Armv8.2-A and later) for
//! `PackedMatrix`, the aarch64 counterpart of packed_avx2.rs (packed.rs has the layout and the
//! arithmetic).
//!
//! One 128-bit vector holds a quarter of a block's tile: 4 rows x 4 columns. `sdot` multiplies
//! those 16 weight bytes by the token's four activation bytes, repeated in every lane, and adds
//! the four products into each row's 32-bit lane. The weights go in as signed bytes: the
//! nibble-and-bit-plane formats store values up to 63, which are the same as signed; formats
//! whose stored bytes reach 255 (Q8_0, IQ4_NL: value + 128) are flipped to `value` by xor 0x80,
//! so their products already hold the `-128·Σa` that the other formats add as the init term (as
//! on AVX2). The float operations are the scalar kernel's, in its order, so results match it bit
//! for bit. Every function here requires NEON and dotprod; callers check (`Isa::available`).
//!
//! `sdot` is written as inline assembly: its intrinsic (`vdotq_s32`) is not stable in Rust yet.

use std::arch::aarch64::*;
use std::arch::asm;

use super::packed::{Format, GroupJob, Scales, BLOCK, HDR_DMIN, HDR_KMIN_M, HDR_KMIN_SC, HDR_KSIGNED_SC};

/// Formats multiplied as signed values (stored bytes up to 255, offset 128).
const fn signed<F: Format>() -> bool {
    F::BYTES || F::LUT.is_some()
}

/// `acc[i] += Σ_j w[4i + j] · a[4i + j]` over signed bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut r = acc;
    asm!("sdot {r:v}.4s, {w:v}.16b, {a:v}.16b", r = inout(vreg) r, w = in(vreg) w, a = in(vreg) a, options(pure, nomem, nostack));
    r
}

/// 16 bytes, one per bit of `bits`: 0xFF where the bit is set (bit j -> byte j).
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn bytes_from_bits16(bits: u16) -> uint8x16_t {
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let spread = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    vtstq_u8(spread, vld1q_u8(BIT.as_ptr()))
}

/// Quarter `q` (rows 4q..4q+4) of the block's eight weight vectors, as signed bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn decode<F: Format>(p: *const u8, q: usize) -> [int8x16_t; 8] {
    let mut w = [vdupq_n_u8(0); 8];
    if F::BYTES {
        for (k, wk) in w.iter_mut().enumerate() {
            *wk = veorq_u8(vld1q_u8(p.add(64 * k + 16 * q)), vdupq_n_u8(0x80));
        }
        return w.map(|v| vreinterpretq_s8_u8(v));
    }
    let m4 = vdupq_n_u8(0x0F);
    for i in 0..4 {
        let n = vld1q_u8(p.add(64 * i + 16 * q));
        w[2 * i] = vandq_u8(n, m4);
        w[2 * i + 1] = vshrq_n_u8::<4>(n);
    }
    if let Some(lut) = F::LUT {
        let t = vld1q_u8(lut.as_ptr());
        for wk in w.iter_mut() {
            *wk = veorq_u8(vqtbl1q_u8(t, *wk), vdupq_n_u8(0x80));
        }
    }
    let mut plane = 256;
    for (has, bit) in [(F::HI1, 16u8), (F::HI2, 32u8)] {
        if has {
            let add = vdupq_n_u8(bit);
            for (k, wk) in w.iter_mut().enumerate() {
                let bits = std::ptr::read_unaligned(p.add(plane + 8 * k + 2 * q) as *const u16);
                *wk = vorrq_u8(*wk, vandq_u8(bytes_from_bits16(bits), add));
            }
            plane += 64;
        }
    }
    w.map(|v| vreinterpretq_s8_u8(v))
}

/// `acc + Σ_k w[k] · a[4k..4k+4]` for k in `ks`, per row.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dots(mut acc: int32x4_t, w: &[int8x16_t; 8], a: *const i8, ks: std::ops::Range<usize>) -> int32x4_t {
    for k in ks {
        let av = vreinterpretq_s8_s32(vdupq_n_s32(std::ptr::read_unaligned(a.add(4 * k) as *const i32)));
        acc = sdot(acc, w[k], av);
    }
    acc
}

/// Four f16 values (little-endian) as floats.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn f16x4(p: *const u8) -> float32x4_t {
    let v: [f32; 4] = std::array::from_fn(|i| half::f16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]).to_f32());
    vld1q_f32(v.as_ptr())
}

/// Four scale bytes as floats, unsigned or signed.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn bytes4_ps(p: *const u8, signed_bytes: bool) -> float32x4_t {
    let v: [f32; 4] = std::array::from_fn(|i| if signed_bytes { *p.add(i) as i8 as f32 } else { *p.add(i) as f32 });
    vld1q_f32(v.as_ptr())
}

/// # Safety
/// NEON and dotprod must be available; `out` must hold `n_rows` floats for each token of the job.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn kernel<F: Format>(job: &GroupJob<'_>, out: *mut f32) {
    let mut t = 0;
    // Four tokens at a time: W (8), four accumulators and temporaries in 32 registers.
    while t < job.nt {
        let nt = (job.nt - t).min(4);
        for q in 0..4 {
            if 4 * q >= job.valid_rows {
                break;
            }
            match nt {
                1 => quarter::<F, 1>(job, job.t0 + t, q, out),
                2 => quarter::<F, 2>(job, job.t0 + t, q, out),
                3 => quarter::<F, 3>(job, job.t0 + t, q, out),
                _ => quarter::<F, 4>(job, job.t0 + t, q, out),
            }
        }
        t += nt;
    }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn quarter<F: Format, const NT: usize>(job: &GroupJob<'_>, t0: usize, q: usize, out: *mut f32) {
    let n_cols = job.n_cols;
    let nb = n_cols / BLOCK;
    let blocks_per_super = F::SUPER_COLS / BLOCK;
    let a = job.acts;
    let (aq, ad, ainit, adsum) = (a.q.as_ptr(), a.d.as_ptr(), a.init.as_ptr(), a.dsum.as_ptr());
    let (planes, scales) = (job.planes.as_ptr(), job.scales.as_ptr());
    // The signed formats' products already include the -128·Σa the init term stands for.
    let init = |i: usize| if signed::<F>() { vdupq_n_s32(0) } else { vdupq_n_s32(*ainit.add(i)) };
    let mut acc = [vdupq_n_f32(0.0); NT];
    for s in 0..n_cols / F::SUPER_COLS {
        let hdr = scales.add(s * F::HEADER_BYTES);
        let d = f16x4(hdr.add(8 * q));
        let dmin = if F::SCALES == Scales::KMin { f16x4(hdr.add(HDR_DMIN + 8 * q)) } else { d };
        for j in 0..blocks_per_super {
            let b = s * blocks_per_super + j;
            let w = decode::<F>(planes.add(b * F::PLANE_BYTES), q);
            match F::SCALES {
                Scales::Legacy => {
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let i = dots(init(tok * nb + b), &w, aq.add(tok * n_cols + b * BLOCK), 0..8);
                        let v = vmulq_f32(vcvtq_f32_s32(i), vdupq_n_f32(*ad.add(tok * nb + b)));
                        *acc_t = vfmaq_f32(*acc_t, d, v);
                    }
                }
                Scales::KMin => {
                    let s_v = vmulq_f32(d, bytes4_ps(hdr.add(HDR_KMIN_SC + 16 * j + 4 * q), false));
                    let mn = vmulq_f32(dmin, bytes4_ps(hdr.add(HDR_KMIN_M + 16 * j + 4 * q), false));
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let i = dots(vdupq_n_s32(0), &w, aq.add(tok * n_cols + b * BLOCK), 0..8);
                        let v = vmulq_f32(vcvtq_f32_s32(i), vdupq_n_f32(*ad.add(tok * nb + b)));
                        *acc_t = vfmaq_f32(*acc_t, s_v, v);
                        *acc_t = vfmsq_f32(*acc_t, mn, vdupq_n_f32(*adsum.add(tok * nb + b)));
                    }
                }
                Scales::KSigned16 => {
                    let s0 = vmulq_f32(d, bytes4_ps(hdr.add(HDR_KSIGNED_SC + 16 * (2 * j) + 4 * q), true));
                    let s1 = vmulq_f32(d, bytes4_ps(hdr.add(HDR_KSIGNED_SC + 16 * (2 * j + 1) + 4 * q), true));
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let at = aq.add(tok * n_cols + b * BLOCK);
                        let da = vdupq_n_f32(*ad.add(tok * nb + b));
                        let i0 = dots(init(tok * 2 * nb + 2 * b), &w, at, 0..4);
                        let i1 = dots(init(tok * 2 * nb + 2 * b + 1), &w, at, 4..8);
                        *acc_t = vfmaq_f32(*acc_t, s0, vmulq_f32(vcvtq_f32_s32(i0), da));
                        *acc_t = vfmaq_f32(*acc_t, s1, vmulq_f32(vcvtq_f32_s32(i1), da));
                    }
                }
            }
        }
    }
    let valid = (job.valid_rows - 4 * q).min(4);
    for (t, acc_t) in acc.iter().enumerate() {
        let o = out.add((t0 + t) * job.n_rows + job.first_row + 4 * q);
        if valid == 4 {
            vst1q_f32(o, *acc_t);
        } else {
            let mut tmp = [0f32; 4];
            vst1q_f32(tmp.as_mut_ptr(), *acc_t);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
        }
    }
}
