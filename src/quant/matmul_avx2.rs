//! AVX2 kernels for `matmul`: unpacking weight rows to i8 and the integer block dot products.
//!
//! Same arithmetic as the portable kernels in matmul.rs (exact integer block sums, then f32
//! scaling), but the f32 accumulation runs in 8 lanes, so results differ from the portable
//! build by f32 rounding only. Every function here requires AVX2, FMA and F16C; callers check.

use std::arch::x86_64::*;

use super::matmul::{QuantizedActs, Scheme, UnpackedRow};
use super::GgmlType;

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load32(p: &[i8]) -> __m256i {
    debug_assert!(p.len() >= 32);
    _mm256_loadu_si256(p.as_ptr() as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store32(p: &mut [i8], v: __m256i) {
    debug_assert!(p.len() >= 32);
    _mm256_storeu_si256(p.as_mut_ptr() as *mut __m256i, v)
}

/// Pairwise products of signed bytes summed to 16 i16 lanes. `maddubs` wants one unsigned
/// operand, so |w| is paired with a·sign(w). No saturation: |w| <= 128 and |a| <= 127 (the
/// activation quantizer clamps), so a pair is at most 2·128·127 = 32512.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn dot_i16(w: __m256i, a: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Bit j of `bits` -> byte j = 0xFF or 0x00, for j in 0..32.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    // Byte j takes source byte j / 8 ...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    // ... and is all-ones exactly when its bit j % 8 is set: OR in every other bit.
    const OTHER_BITS: i64 = i64::from_le_bytes([!1, !2, !4, !8, !16, !32, !64, !128]);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(OTHER_BITS)), _mm256_set1_epi8(-1))
}

/// The 32 nibbles of 16 bytes in element order: low nibbles then high nibbles.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn nibbles16(b: &[u8]) -> __m256i {
    let x = _mm_loadu_si128(b.as_ptr() as *const __m128i);
    let m = _mm_set1_epi8(0x0F);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m), _mm_and_si128(x, m))
}

/// Unpacks a row of the types with AVX2 unpackers; returns false for the others, which the
/// caller then unpacks with the portable code.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn unpack_row(ty: GgmlType, row: &[u8], n_cols: usize, u: &mut UnpackedRow) -> bool {
    use GgmlType::*;
    if !matches!(ty, Q8_0 | Q4_0 | Q5_0 | Q4_K | Q6_K) {
        return false;
    }
    u.q.resize(n_cols, 0);
    u.d.clear();
    u.dmin.clear();
    u.sc.clear();
    u.m.clear();
    let (bb, be) = (ty.block_bytes(), ty.block_elems());
    match ty {
        Q8_0 => {
            for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
                u.d.push(f16_at(b, 0));
                store32(q, _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i));
            }
        }
        Q4_0 => {
            for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
                u.d.push(f16_at(b, 0));
                store32(q, _mm256_sub_epi8(nibbles16(&b[2..18]), _mm256_set1_epi8(8)));
            }
        }
        Q5_0 => {
            for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
                u.d.push(f16_at(b, 0));
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
                let v = _mm256_or_si256(nibbles16(&b[6..22]), high);
                store32(q, _mm256_sub_epi8(v, _mm256_set1_epi8(16)));
            }
        }
        Q4_K => {
            let m = _mm256_set1_epi8(0x0F);
            for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
                u.d.push(f16_at(b, 0));
                u.dmin.push(f16_at(b, 2));
                let (sc, mn) = super::k_quants::k4_scale_min(&b[4..16]);
                u.sc.extend(sc.iter().map(|&v| v as i32));
                u.m.extend(mn.iter().map(|&v| v as i32));
                for c in 0..4 {
                    let x = _mm256_loadu_si256(b[16 + 32 * c..48 + 32 * c].as_ptr() as *const __m256i);
                    store32(&mut q[64 * c..], _mm256_and_si256(x, m));
                    store32(&mut q[64 * c + 32..], _mm256_and_si256(_mm256_srli_epi16(x, 4), m));
                }
            }
        }
        Q6_K => {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(0x30);
            let off = _mm256_set1_epi8(32);
            for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
                u.d.push(f16_at(b, 208));
                u.sc.extend(b[192..208].iter().map(|&v| v as i8 as i32));
                for half in 0..2 {
                    let l0 = _mm256_loadu_si256(b[half * 64..].as_ptr() as *const __m256i);
                    let l1 = _mm256_loadu_si256(b[half * 64 + 32..].as_ptr() as *const __m256i);
                    let h = _mm256_loadu_si256(b[128 + half * 32..].as_ptr() as *const __m256i);
                    // Elements 32s + m take bits 2s..2s+2 of qh byte m, moved to bits 4..6.
                    let hs = [
                        _mm256_and_si256(_mm256_slli_epi16(h, 4), m2),
                        _mm256_and_si256(_mm256_slli_epi16(h, 2), m2),
                        _mm256_and_si256(h, m2),
                        _mm256_and_si256(_mm256_srli_epi16(h, 2), m2),
                    ];
                    let ls = [
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                        _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                    ];
                    for s in 0..4 {
                        let v = _mm256_sub_epi8(_mm256_or_si256(ls[s], hs[s]), off);
                        store32(&mut q[half * 128 + 32 * s..], v);
                    }
                }
            }
        }
        _ => unreachable!(),
    }
    true
}

/// The dot product of one unpacked weight row with token `t`'s quantized activations.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn row_dot(s: Scheme, u: &UnpackedRow, acts: &QuantizedActs, n_cols: usize, t: usize) -> f32 {
    let aq = &acts.q[t * n_cols..(t + 1) * n_cols];
    match s {
        Scheme::Legacy => {
            let ad = &acts.d[t * n_cols / 32..(t + 1) * n_cols / 32];
            let ones = _mm256_set1_epi16(1);
            let mut acc = _mm256_setzero_ps();
            for (b, (wd, a_d)) in u.d.iter().zip(ad).enumerate() {
                let sumi = _mm256_madd_epi16(dot_i16(load32(&u.q[b * 32..]), load32(&aq[b * 32..])), ones);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(wd * a_d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_ps(acc)
        }
        Scheme::KMin => {
            let nb = n_cols / 256;
            let ad = &acts.d[t * nb..(t + 1) * nb];
            let asum = &acts.sum32[t * n_cols / 32..(t + 1) * n_cols / 32];
            let mut acc = _mm256_setzero_ps();
            let mut acc_min = 0f32;
            for b in 0..nb {
                let mut isum = _mm256_setzero_si256();
                let mut msum = 0i32;
                for j in 0..8 {
                    let at = b * 256 + j * 32;
                    // Weights are 0..31 here, so they can be maddubs's unsigned operand directly.
                    let p = _mm256_maddubs_epi16(load32(&u.q[at..]), load32(&aq[at..]));
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, _mm256_set1_epi16(u.sc[b * 8 + j] as i16)));
                    msum += u.m[b * 8 + j] * asum[b * 8 + j];
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d[b] * ad[b]), _mm256_cvtepi32_ps(isum), acc);
                acc_min += (u.dmin[b] * ad[b]) * msum as f32;
            }
            hsum_ps(acc) - acc_min
        }
        Scheme::KSigned => {
            let nb = n_cols / 256;
            let ad = &acts.d[t * nb..(t + 1) * nb];
            let mut acc = _mm256_setzero_ps();
            for b in 0..nb {
                let mut isum = _mm256_setzero_si256();
                for jj in 0..8 {
                    let at = b * 256 + jj * 32;
                    let p = dot_i16(load32(&u.q[at..]), load32(&aq[at..]));
                    // Low 8 i16 lanes are sub-block 2jj, high 8 are sub-block 2jj + 1.
                    let sc = _mm256_set_m128i(
                        _mm_set1_epi16(u.sc[b * 16 + 2 * jj + 1] as i16),
                        _mm_set1_epi16(u.sc[b * 16 + 2 * jj] as i16),
                    );
                    isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, sc));
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d[b] * ad[b]), _mm256_cvtepi32_ps(isum), acc);
            }
            hsum_ps(acc)
        }
        Scheme::Float => unreachable!("float rows use fdot"),
    }
}

/// Σ a·b in f32, 32 products per step in 4 FMA chains.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn fdot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc_k) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * k));
            let y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * k));
            *acc_k = _mm256_fmadd_ps(x, y, *acc_k);
        }
        i += 32;
    }
    let mut tail = 0f32;
    while i < n {
        tail += a[i] * b[i];
        i += 1;
    }
    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail
}

/// F16 row to f32, 8 at a time.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_row(row: &[u8], out: &mut [f32]) {
    let n = out.len().min(row.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(row.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    while i < n {
        out[i] = f16_at(row, 2 * i);
        i += 1;
    }
}
