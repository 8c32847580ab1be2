//! AVX-512 VNNI kernels for `PackedMatrix` (packed.rs has the layout and the arithmetic).
//!
//! One zmm holds a block's 16 rows x 4 columns; `vpdpbusd` multiplies the unsigned weight bytes
//! by the token's four activation bytes broadcast to every lane (an embedded-broadcast memory
//! operand) and adds the four products into each row's 32-bit lane. Every function here requires
//! AVX-512 F, BW and VNNI; callers check (`Isa::available`).

use std::arch::x86_64::*;

use super::packed::{Format, GroupJob, Scales, BLOCK, HDR_DMIN, HDR_KMIN_M, HDR_KMIN_SC, HDR_KSIGNED_SC, TILE_ROWS};

/// How far ahead of the block being multiplied a matrix-vector product prefetches. Prefetches
/// never fault, so running past the end of the planes is harmless.
const PREFETCH_BYTES: usize = 4096;

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn load64(p: *const u8) -> __m512i {
    _mm512_load_si512(p as *const __m512i)
}

/// The block's eight weight vectors `W[0..8]`, unsigned bytes (see packed.rs).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn decode<F: Format>(p: *const u8) -> [__m512i; 8] {
    let mut w = [_mm512_setzero_si512(); 8];
    if F::BYTES {
        for (k, wk) in w.iter_mut().enumerate() {
            *wk = load64(p.add(64 * k));
        }
        return w;
    }
    let m4 = _mm512_set1_epi8(0x0F);
    for i in 0..4 {
        let n = load64(p.add(64 * i));
        w[2 * i] = _mm512_and_si512(n, m4);
        w[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16(n, 4), m4);
    }
    if let Some(lut) = F::LUT {
        let t = _mm512_broadcast_i32x4(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
        for wk in w.iter_mut() {
            *wk = _mm512_shuffle_epi8(t, *wk);
        }
    }
    let mut plane = 256;
    for (has, bit) in [(F::HI1, 16i8), (F::HI2, 32i8)] {
        if has {
            let add = _mm512_set1_epi8(bit);
            for (k, wk) in w.iter_mut().enumerate() {
                let m = _cvtu64_mask64(std::ptr::read_unaligned(p.add(plane + 8 * k) as *const u64));
                *wk = _mm512_mask_add_epi8(*wk, m, *wk, add);
            }
            plane += 64;
        }
    }
    w
}

/// `acc + Σ_{k in ks} W[k] · a[4k..4k+4]` per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dots(mut acc: __m512i, w: &[__m512i; 8], a: *const i8, ks: std::ops::Range<usize>) -> __m512i {
    for k in ks {
        acc = _mm512_dpbusd_epi32(acc, w[k], _mm512_set1_epi32(std::ptr::read_unaligned(a.add(4 * k) as *const i32)));
    }
    acc
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn f16x16(p: *const u8) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

/// # Safety
/// AVX-512 F/BW/VNNI must be available; `out` must hold `n_rows` floats for each token of the job.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn kernel<F: Format>(job: &GroupJob<'_>, out: *mut f32) {
    match job.nt {
        1 => kernel_nt::<F, 1>(job, out),
        2 => kernel_nt::<F, 2>(job, out),
        3 => kernel_nt::<F, 3>(job, out),
        4 => kernel_nt::<F, 4>(job, out),
        5 => kernel_nt::<F, 5>(job, out),
        6 => kernel_nt::<F, 6>(job, out),
        7 => kernel_nt::<F, 7>(job, out),
        8 => kernel_nt::<F, 8>(job, out),
        _ => unreachable!("token tiles are 1..=8"),
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel_nt<F: Format, const NT: usize>(job: &GroupJob<'_>, out: *mut f32) {
    let n_cols = job.n_cols;
    let nb = n_cols / BLOCK;
    let blocks_per_super = F::SUPER_COLS / BLOCK;
    let a = job.acts;
    let (aq, ad, ainit, adsum) = (a.q.as_ptr(), a.d.as_ptr(), a.init.as_ptr(), a.dsum.as_ptr());
    let (planes, scales) = (job.planes.as_ptr(), job.scales.as_ptr());
    let t0 = job.t0;
    let mut acc = [_mm512_setzero_ps(); NT];
    for s in 0..n_cols / F::SUPER_COLS {
        let hdr = scales.add(s * F::HEADER_BYTES);
        let d = f16x16(hdr);
        let dmin = if F::SCALES == Scales::KMin { f16x16(hdr.add(HDR_DMIN)) } else { d };
        for j in 0..blocks_per_super {
            let b = s * blocks_per_super + j;
            if NT == 1 {
                // A decode step streams every weight once from DRAM: ask for the lines a few KiB
                // ahead so more misses are in flight than the hardware prefetcher keeps.
                for l in 0..F::PLANE_BYTES / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(planes.wrapping_add(b * F::PLANE_BYTES + PREFETCH_BYTES + 64 * l) as *const i8);
                }
            }
            let w = decode::<F>(planes.add(b * F::PLANE_BYTES));
            match F::SCALES {
                Scales::Legacy => {
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let at = aq.add(tok * n_cols + b * BLOCK);
                        let init = _mm512_set1_epi32(*ainit.add(tok * nb + b));
                        let i = if NT == 1 {
                            // One token: two dependency chains instead of one of eight.
                            _mm512_add_epi32(dots(init, &w, at, 0..4), dots(_mm512_setzero_si512(), &w, at, 4..8))
                        } else {
                            dots(init, &w, at, 0..8)
                        };
                        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(*ad.add(tok * nb + b)));
                        *acc_t = _mm512_fmadd_ps(d, v, *acc_t);
                    }
                }
                Scales::KMin => {
                    let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(hdr.add(HDR_KMIN_SC + TILE_ROWS * j) as *const __m128i)));
                    let m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(hdr.add(HDR_KMIN_M + TILE_ROWS * j) as *const __m128i)));
                    let (s_v, mn) = (_mm512_mul_ps(d, sc), _mm512_mul_ps(dmin, m));
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let at = aq.add(tok * n_cols + b * BLOCK);
                        let z = _mm512_setzero_si512();
                        let i = if NT == 1 { _mm512_add_epi32(dots(z, &w, at, 0..4), dots(z, &w, at, 4..8)) } else { dots(z, &w, at, 0..8) };
                        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(*ad.add(tok * nb + b)));
                        *acc_t = _mm512_fmadd_ps(s_v, v, *acc_t);
                        *acc_t = _mm512_fnmadd_ps(mn, _mm512_set1_ps(*adsum.add(tok * nb + b)), *acc_t);
                    }
                }
                Scales::KSigned16 => {
                    let sub = |h: usize| {
                        let p = hdr.add(HDR_KSIGNED_SC + TILE_ROWS * (2 * j + h)) as *const __m128i;
                        _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))))
                    };
                    let (s0, s1) = (sub(0), sub(1));
                    for (t, acc_t) in acc.iter_mut().enumerate() {
                        let tok = t0 + t;
                        let at = aq.add(tok * n_cols + b * BLOCK);
                        let da = _mm512_set1_ps(*ad.add(tok * nb + b));
                        let i0 = dots(_mm512_set1_epi32(*ainit.add(tok * 2 * nb + 2 * b)), &w, at, 0..4);
                        let i1 = dots(_mm512_set1_epi32(*ainit.add(tok * 2 * nb + 2 * b + 1)), &w, at, 4..8);
                        *acc_t = _mm512_fmadd_ps(s0, _mm512_mul_ps(_mm512_cvtepi32_ps(i0), da), *acc_t);
                        *acc_t = _mm512_fmadd_ps(s1, _mm512_mul_ps(_mm512_cvtepi32_ps(i1), da), *acc_t);
                    }
                }
            }
        }
    }
    let mask: __mmask16 = if job.valid_rows >= TILE_ROWS { 0xFFFF } else { (1u16 << job.valid_rows) - 1 };
    for (t, acc_t) in acc.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add((t0 + t) * job.n_rows + job.first_row), mask, *acc_t);
    }
}

/// `quantize_blocks_scalar` 16 lanes at a time, with the same f32 operations (so the same
/// bytes and scales); blocks holding a NaN or an infinity take the scalar path.
///
/// # Safety
/// AVX-512 F/BW must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    let abs_mask = _mm512_set1_epi32(0x7FFF_FFFF);
    for ((xb, qb), db) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(d.iter_mut()) {
        let v0 = _mm512_loadu_ps(xb.as_ptr());
        let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
        let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v0), abs_mask));
        let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), abs_mask));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        if !amax.is_finite() || xb.iter().any(|v| v.is_nan()) {
            super::packed::quantize_blocks_scalar(xb, qb, std::slice::from_mut(db));
            continue;
        }
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let iv = _mm512_set1_ps(inv);
        let lim = _mm512_set1_epi32(127);
        let nlim = _mm512_set1_epi32(-127);
        let r0 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v0, iv)), lim), nlim);
        let r1 = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v1, iv)), lim), nlim);
        _mm_storeu_si128(qb.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(r0));
        _mm_storeu_si128(qb.as_mut_ptr().add(16) as *mut __m128i, _mm512_cvtepi32_epi8(r1));
        *db = scale;
    }
}
