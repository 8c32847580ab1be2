//! The 256-element "K" super-block formats: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//!
//! A super-block carries one or two f16 scales and 8 or 16 small per-sub-block scales. Bit planes
//! are interleaved in strides of 32 elements: in each 128-element half, 2-bit fields at shift
//! 2s of byte m belong to element 32s + m, and 4-bit fields at shift 4h of byte m of a 64-element
//! group belong to element 32h + m. The float arithmetic below is done in the same order as
//! gguf-py's reference (scale products first, then one multiply per element) so results are
//! bit-identical to it.

use super::f16_at;

pub fn q2_k_block(b: &[u8], out: &mut [f32]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    for half in 0..2 {
        for s in 0..4 {
            for m in 0..32 {
                let e = half * 128 + s * 32 + m;
                let q = ((qs[half * 32 + m] >> (2 * s)) & 3) as f32;
                let sc = scales[e / 16];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                out[e] = dl * q - ml;
            }
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block: low nibbles in bytes 0..8 (elements 0..8 low
/// nibble, 8..16 high nibble), high 2-bit pairs in bytes 8..12.
pub fn q3_k_scales(sc: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
        let hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *o = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

pub fn q3_k_block(b: &[u8], out: &mut [f32]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for half in 0..2 {
        for s in 0..4 {
            for m in 0..32 {
                let e = half * 128 + s * 32 + m;
                let lo = ((qs[half * 32 + m] >> (2 * s)) & 3) as i32;
                // A set hmask bit means "no -4 offset".
                let hbit = ((hmask[m] >> (e / 32)) & 1) as i32;
                let q = lo - ((hbit ^ 1) << 2);
                out[e] = (d * scales[e / 16] as f32) * q as f32;
            }
        }
    }
}

/// The 8 (scale, min) 6-bit pairs of a Q4_K/Q5_K block, packed in 12 bytes: sub-blocks 0..4 in
/// the low 6 bits of bytes 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 take their low
/// nibbles from bytes 8..12 and their top 2 bits from the spare bits of bytes 0..8.
pub fn k4_scale_min(sc: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scale = [0u8; 8];
    let mut min = [0u8; 8];
    for j in 0..4 {
        scale[j] = sc[j] & 0x3F;
        min[j] = sc[j + 4] & 0x3F;
        scale[j + 4] = (sc[j + 8] & 0x0F) | ((sc[j] >> 2) & 0x30);
        min[j + 4] = (sc[j + 8] >> 4) | ((sc[j + 4] >> 2) & 0x30);
    }
    (scale, min)
}

pub fn q4_k_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (scale, min) = k4_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for sub in 0..8 {
        let dl = d * scale[sub] as f32;
        let ml = dmin * min[sub] as f32;
        let bytes = &qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
        let shift = 4 * (sub % 2);
        for m in 0..32 {
            out[sub * 32 + m] = dl * ((bytes[m] >> shift) & 0x0F) as f32 - ml;
        }
    }
}

pub fn q5_k_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let (scale, min) = k4_scale_min(&b[4..16]);
    let qh = &b[16..48];
    let qs = &b[48..176];
    for sub in 0..8 {
        let dl = d * scale[sub] as f32;
        let ml = dmin * min[sub] as f32;
        let bytes = &qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
        let shift = 4 * (sub % 2);
        for m in 0..32 {
            let q = ((bytes[m] >> shift) & 0x0F) | (((qh[m] >> sub) & 1) << 4);
            out[sub * 32 + m] = dl * q as f32 - ml;
        }
    }
}

pub fn q6_k_block(b: &[u8], out: &mut [f32]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_at(b, 208);
    // Element 32s + m of each 128-element half: low nibble of ql byte (s % 2)·32 + m (high
    // nibble when s >= 2), top 2 bits at shift 2s of qh byte m. Loops are shaped so each
    // 16-element run has constant shifts and one scale, which vectorizes.
    for half in 0..2 {
        let h = &qh[half * 32..half * 32 + 32];
        for s in 0..4 {
            let l = &ql[half * 64 + (s % 2) * 32..half * 64 + (s % 2) * 32 + 32];
            let (lshift, hshift) = (4 * (s / 2), 2 * s);
            for sub in 0..2 {
                let e0 = half * 128 + s * 32 + sub * 16;
                let dl = d * (scales[e0 / 16] as i8) as f32;
                let o = &mut out[e0..e0 + 16];
                for m in 0..16 {
                    let i = sub * 16 + m;
                    let q = ((l[i] >> lshift) & 0x0F) | (((h[i] >> hshift) & 3) << 4);
                    o[m] = dl * (q as i32 - 32) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [u8; 2] = [0x00, 0x3C];
    const TWO: [u8; 2] = [0x00, 0x40];

    #[test]
    fn q4_k_scale_min_unpacking() {
        let mut sc = [0u8; 12];
        sc[0] = 0b11_000101; // scale0 = 5, top bits of scale4 = 3
        sc[4] = 0b01_000111; // min0 = 7, top bits of min4 = 1
        sc[8] = 0x9A; // scale4 low = 0xA, min4 low = 0x9
        let (s, m) = k4_scale_min(&sc);
        assert_eq!(s[0], 5);
        assert_eq!(m[0], 7);
        assert_eq!(s[4], 0x30 | 0xA);
        assert_eq!(m[4], 0x10 | 0x9);
    }

    #[test]
    fn q4_k_element_layout() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&ONE);
        b[2..4].copy_from_slice(&TWO);
        b[4 + 1] = 3; // scale of sub-block 1 = 3, min 0
        b[4 + 4] = 1; // min of sub-block 0 = 1
        b[16] = 0x52; // element 0 = 2 (sub 0), element 32 = 5 (sub 1)
        let mut out = [0f32; 256];
        q4_k_block(&b, &mut out);
        assert_eq!(out[0], 0.0 * 2.0 - 2.0); // scale 0 -> d*0*q - dmin*1
        assert_eq!(out[32], 3.0 * 5.0);
        assert_eq!(out[1], -2.0);
    }

    #[test]
    fn q5_k_high_bit_plane() {
        let mut b = vec![0u8; 176];
        b[0..2].copy_from_slice(&ONE);
        b[4 + 7] = 0;
        b[4 + 8 + 3] = 0x01; // scale of sub-block 7 = 1
        b[16 + 4] = 0x80; // element 7*32+4 gets +16
        b[48 + 96 + 4] = 0x30; // sub-block 7 is the high nibble of bytes 96..128
        let mut out = [0f32; 256];
        q5_k_block(&b, &mut out);
        assert_eq!(out[7 * 32 + 4], 19.0);
        assert_eq!(out[7 * 32 + 5], 0.0);
    }

    #[test]
    fn q6_k_element_layout() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&ONE);
        for s in 0..16 {
            b[192 + s] = (s as i8 - 8) as u8;
        }
        // Element 128 + 64 + 3: ql byte 64 + 3 high nibble, qh byte 32 + 3 shift 4.
        b[64 + 3] = 0xA0;
        b[128 + 32 + 3] = 0b10 << 4;
        let mut out = [0f32; 256];
        q6_k_block(&b, &mut out);
        let e = 128 + 64 + 3;
        // sub-block 12 has scale 4; q = (0xA | 2 << 4) - 32 = 10.
        assert_eq!(out[e], 40.0);
        assert_eq!(out[0], -32.0 * -8.0);
    }

    #[test]
    fn q2_k_and_q3_k_layout() {
        let mut b = vec![0u8; 84];
        b[2] = 0x21; // sub-block 2: scale 1, min 2
        b[16 + 32] = 0b11 << 2; // half 1, shift 1 -> element 128 + 32
        b[80..82].copy_from_slice(&ONE);
        b[82..84].copy_from_slice(&TWO);
        let mut out = [0f32; 256];
        q2_k_block(&b, &mut out);
        assert_eq!(out[32], -4.0); // sub-block 2, q = 0: 0 - 2*2
        let mut b3 = vec![0u8; 110];
        b3[108..110].copy_from_slice(&ONE);
        let sc = q3_k_scales(&b3[96..108]);
        assert!(sc.iter().all(|&s| s == -32));
        b3[96] = 0x01; // scale 0 low nibble 1
        b3[104] = 0x02; // scale 0 high bits 2 -> 0x21 - 32 = 1
        b3[32] = 0x03; // element 0 low bits 3
        b3[0] = 0x01; // element 0 hmask set: no -4
        q3_k_block(&b3, &mut out);
        assert_eq!(out[0], 3.0);
        assert_eq!(out[1], -4.0); // low 0, hmask clear -> -4, scale 1
    }
}
