//! 256-bit kernels for `PackedMatrix`: AVX2, the fallback where AVX-512 VNNI is missing, and
//! AVX-VNNI (the 256-bit `vpdpbusd` of Intel's client CPUs without AVX-512).
//!
//! The same tiles as the AVX-512 build, read as two halves of 8 rows (one ymm of 32-bit lanes
//! each). With AVX-VNNI a dot is one `vpdpbusd` of the unsigned weight bytes and the signed
//! activation bytes, as on AVX-512. With AVX2 alone it is `maddubs` (unsigned x signed bytes to
//! i16 pairs) and `madd` by ones (to i32); `maddubs` saturates past 32767, so formats whose
//! stored bytes reach 255 (Q8_0, IQ4_NL: value + 128) are multiplied as signed values with the
//! sign trick instead, which yields the same exact integer (`Σ W·a - 128·Σa`). One body
//! (`ymm_kernels!`) serves both builds, and in tests a third that encodes the same `vpdpbusd`
//! with AVX-512 VL, so that the AVX-VNNI arithmetic is checked on machines with AVX-512 (this
//! one has no AVX-VNNI). Callers check the features (`Isa::available`).

macro_rules! ymm_kernels {
    ($features:literal, sign_trick: $trick:literal) => {
        /// Formats multiplied as signed bytes (their stored values go up to 255, offset 128): only
        /// where the dot is `maddubs`.
        const fn signed<F: Format>() -> bool {
            $trick && (F::BYTES || F::LUT.is_some())
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn load32(p: *const u8) -> __m256i {
            _mm256_loadu_si256(p as *const __m256i)
        }

        use crate::quant::matmul_avx2::bytes_from_bits;

        /// Half `h` (rows 8h..8h+8) of the block's weight vectors: unsigned bytes, or for the signed
        /// formats the signed values.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode<F: Format>(p: *const u8, h: usize) -> [__m256i; 8] {
            let mut w = [_mm256_setzero_si256(); 8];
            if F::BYTES {
                for (k, wk) in w.iter_mut().enumerate() {
                    let v = load32(p.add(64 * k + 32 * h));
                    *wk = if signed::<F>() { _mm256_xor_si256(v, _mm256_set1_epi8(-128)) } else { v };
                }
                return w;
            }
            let m4 = _mm256_set1_epi8(0x0F);
            for i in 0..4 {
                let n = load32(p.add(64 * i + 32 * h));
                w[2 * i] = _mm256_and_si256(n, m4);
                w[2 * i + 1] = _mm256_and_si256(_mm256_srli_epi16(n, 4), m4);
            }
            if let Some(lut) = F::LUT {
                let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(lut.as_ptr() as *const __m128i));
                for wk in w.iter_mut() {
                    let v = _mm256_shuffle_epi8(t, *wk);
                    *wk = if signed::<F>() { _mm256_xor_si256(v, _mm256_set1_epi8(-128)) } else { v };
                }
            }
            let mut plane = 256;
            for (has, bit) in [(F::HI1, 16i8), (F::HI2, 32i8)] {
                if has {
                    let add = _mm256_set1_epi8(bit);
                    for (k, wk) in w.iter_mut().enumerate() {
                        let bits = std::ptr::read_unaligned(p.add(plane + 8 * k + 4 * h) as *const u32);
                        *wk = _mm256_or_si256(*wk, _mm256_and_si256(bytes_from_bits(bits), add));
                    }
                    plane += 64;
                }
            }
            w
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn dots<F: Format>(mut acc: __m256i, w: &[__m256i; 8], a: *const i8, ks: std::ops::Range<usize>) -> __m256i {
            for k in ks {
                let av = _mm256_set1_epi32(std::ptr::read_unaligned(a.add(4 * k) as *const i32));
                acc = dot4::<F>(acc, w[k], av);
            }
            acc
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16x8(p: *const u8) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn bytes8_ps(p: *const u8, signed_bytes: bool) -> __m256 {
            let v = _mm_loadl_epi64(p as *const __m128i);
            _mm256_cvtepi32_ps(if signed_bytes { _mm256_cvtepi8_epi32(v) } else { _mm256_cvtepu8_epi32(v) })
        }

        /// # Safety
        /// The module's features must be available; `out` must hold `n_rows` floats for each token of the job.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn kernel<F: Format>(job: &GroupJob<'_>, out: *mut f32) {
            let mut t = 0;
            // Four tokens at a time keep W (8), the accumulators and temporaries in 16 registers.
            while t < job.nt {
                let nt = (job.nt - t).min(4);
                for h in 0..2 {
                    if 8 * h >= job.valid_rows {
                        break;
                    }
                    match nt {
                        1 => half::<F, 1>(job, job.t0 + t, h, out),
                        2 => half::<F, 2>(job, job.t0 + t, h, out),
                        3 => half::<F, 3>(job, job.t0 + t, h, out),
                        _ => half::<F, 4>(job, job.t0 + t, h, out),
                    }
                }
                t += nt;
            }
        }

        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn half<F: Format, const NT: usize>(job: &GroupJob<'_>, t0: usize, h: usize, out: *mut f32) {
            let n_cols = job.n_cols;
            let nb = n_cols / BLOCK;
            let blocks_per_super = F::SUPER_COLS / BLOCK;
            let a = job.acts;
            let (aq, ad, ainit, adsum) = (a.q.as_ptr(), a.d.as_ptr(), a.init.as_ptr(), a.dsum.as_ptr());
            let (planes, scales) = (job.planes.as_ptr(), job.scales.as_ptr());
            // The signed formats' products already include the -128·Σa the init term stands for.
            let init = |i: usize| if signed::<F>() { _mm256_setzero_si256() } else { _mm256_set1_epi32(*ainit.add(i)) };
            let mut acc = [_mm256_setzero_ps(); NT];
            for s in 0..n_cols / F::SUPER_COLS {
                let hdr = scales.add(s * F::HEADER_BYTES);
                let d = f16x8(hdr.add(16 * h));
                let dmin = if F::SCALES == Scales::KMin { f16x8(hdr.add(HDR_DMIN + 16 * h)) } else { d };
                for j in 0..blocks_per_super {
                    let b = s * blocks_per_super + j;
                    let w = decode::<F>(planes.add(b * F::PLANE_BYTES), h);
                    match F::SCALES {
                        Scales::Legacy => {
                            for (t, acc_t) in acc.iter_mut().enumerate() {
                                let tok = t0 + t;
                                let i = dots::<F>(init(tok * nb + b), &w, aq.add(tok * n_cols + b * BLOCK), 0..8);
                                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(*ad.add(tok * nb + b)));
                                *acc_t = _mm256_fmadd_ps(d, v, *acc_t);
                            }
                        }
                        Scales::KMin => {
                            let s_v = _mm256_mul_ps(d, bytes8_ps(hdr.add(HDR_KMIN_SC + 16 * j + 8 * h), false));
                            let mn = _mm256_mul_ps(dmin, bytes8_ps(hdr.add(HDR_KMIN_M + 16 * j + 8 * h), false));
                            for (t, acc_t) in acc.iter_mut().enumerate() {
                                let tok = t0 + t;
                                let i = dots::<F>(_mm256_setzero_si256(), &w, aq.add(tok * n_cols + b * BLOCK), 0..8);
                                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(*ad.add(tok * nb + b)));
                                *acc_t = _mm256_fmadd_ps(s_v, v, *acc_t);
                                *acc_t = _mm256_fnmadd_ps(mn, _mm256_set1_ps(*adsum.add(tok * nb + b)), *acc_t);
                            }
                        }
                        Scales::KSigned16 => {
                            let s0 = _mm256_mul_ps(d, bytes8_ps(hdr.add(HDR_KSIGNED_SC + 16 * (2 * j) + 8 * h), true));
                            let s1 = _mm256_mul_ps(d, bytes8_ps(hdr.add(HDR_KSIGNED_SC + 16 * (2 * j + 1) + 8 * h), true));
                            for (t, acc_t) in acc.iter_mut().enumerate() {
                                let tok = t0 + t;
                                let at = aq.add(tok * n_cols + b * BLOCK);
                                let da = _mm256_set1_ps(*ad.add(tok * nb + b));
                                let i0 = dots::<F>(init(tok * 2 * nb + 2 * b), &w, at, 0..4);
                                let i1 = dots::<F>(init(tok * 2 * nb + 2 * b + 1), &w, at, 4..8);
                                *acc_t = _mm256_fmadd_ps(s0, _mm256_mul_ps(_mm256_cvtepi32_ps(i0), da), *acc_t);
                                *acc_t = _mm256_fmadd_ps(s1, _mm256_mul_ps(_mm256_cvtepi32_ps(i1), da), *acc_t);
                            }
                        }
                    }
                }
            }
            let valid = (job.valid_rows - 8 * h).min(8);
            for (t, acc_t) in acc.iter().enumerate() {
                let o = out.add((t0 + t) * job.n_rows + job.first_row + 8 * h);
                if valid == 8 {
                    _mm256_storeu_ps(o, *acc_t);
                } else {
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *acc_t);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), o, valid);
                }
            }
        }
    };
}

/// AVX2, FMA and F16C.
pub(crate) mod avx2 {
    use std::arch::x86_64::*;

    use crate::quant::packed::{Format, GroupJob, Scales, BLOCK, HDR_DMIN, HDR_KMIN_M, HDR_KMIN_SC, HDR_KSIGNED_SC};

    /// `acc + W·a` per 32-bit lane, W unsigned (or, for the signed formats, signed) bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot4<F: Format>(acc: __m256i, w: __m256i, av: __m256i) -> __m256i {
        let p16 = if signed::<F>() { _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(av, w)) } else { _mm256_maddubs_epi16(w, av) };
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    ymm_kernels!("avx2,fma,f16c", sign_trick: true);
}

/// AVX-VNNI (with AVX2, FMA and F16C).
pub(crate) mod avx_vnni {
    use std::arch::x86_64::*;

    use crate::quant::packed::{Format, GroupJob, Scales, BLOCK, HDR_DMIN, HDR_KMIN_M, HDR_KMIN_SC, HDR_KSIGNED_SC};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
    unsafe fn dot4<F: Format>(acc: __m256i, w: __m256i, av: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, w, av)
    }

    ymm_kernels!("avx2,fma,f16c,avxvnni", sign_trick: false);
}

/// The AVX-VNNI arithmetic with AVX-512 VL's encoding of the same instruction, for the tests.
#[cfg(test)]
pub(crate) mod avx512_ymm {
    use std::arch::x86_64::*;

    use crate::quant::packed::{Format, GroupJob, Scales, BLOCK, HDR_DMIN, HDR_KMIN_M, HDR_KMIN_SC, HDR_KSIGNED_SC};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    unsafe fn dot4<F: Format>(acc: __m256i, w: __m256i, av: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, av)
    }

    ymm_kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512vnni", sign_trick: false);
}
