//! The original 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.
//!
//! Layouts (little-endian): a f16 scale `d` (and for the `_1` types a f16 offset `m`), for the
//! 5-bit types a u32 of high bits (bit j belongs to element j), then the low bits. The 4-bit
//! nibbles are split by position: byte j holds element j in its low nibble and element j + 16
//! in its high nibble.

use super::f16_at;
use super::GgmlType;

pub fn q4_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0F) as i32 - 8) as f32;
        out[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
    }
}

pub fn q4_1_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = d * (qs[j] & 0x0F) as f32 + m;
        out[j + 16] = d * (qs[j] >> 4) as f32 + m;
    }
}

/// Bit j of `qh` moved to bit 4 of byte j: the fifth bit of element j.
#[inline(always)]
fn fifth_bits(qh: u32) -> [u8; 32] {
    let mut h = [0u8; 32];
    for (j, v) in h.iter_mut().enumerate() {
        *v = (((qh >> j) & 1) << 4) as u8;
    }
    h
}

pub fn q5_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let h = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
    let qs = &b[6..22];
    for j in 0..16 {
        out[j] = d * (((qs[j] & 0x0F) | h[j]) as i32 - 16) as f32;
        out[j + 16] = d * (((qs[j] >> 4) | h[j + 16]) as i32 - 16) as f32;
    }
}

pub fn q5_1_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let h = fifth_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]));
    let qs = &b[8..24];
    for j in 0..16 {
        out[j] = d * ((qs[j] & 0x0F) | h[j]) as f32 + m;
        out[j + 16] = d * ((qs[j] >> 4) | h[j + 16]) as f32 + m;
    }
}

pub fn q8_0_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = d * (q as i8) as f32;
    }
}

/// One Q4_0 or Q5_0 block (`ty`'s `b`) as the Q8_0 block of the same values, into `out` (34
/// bytes): each code less its offset (8 or 16) is an int8 under the same f16 scale, so every
/// element dequantizes to the same float (`d * code`, the same product). Q8_0 is copied.
pub fn widen_block_to_q8_0(ty: GgmlType, b: &[u8], out: &mut [u8]) {
    out[..2].copy_from_slice(&b[..2]);
    match ty {
        GgmlType::Q4_0 => {
            for j in 0..16 {
                out[2 + j] = ((b[2 + j] & 0x0F) as i8 - 8) as u8;
                out[2 + j + 16] = ((b[2 + j] >> 4) as i8 - 8) as u8;
            }
        }
        GgmlType::Q5_0 => {
            let h = fifth_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]));
            for j in 0..16 {
                out[2 + j] = (((b[6 + j] & 0x0F) | h[j]) as i8 - 16) as u8;
                out[2 + j + 16] = (((b[6 + j] >> 4) | h[j + 16]) as i8 - 16) as u8;
            }
        }
        _ => out[2..34].copy_from_slice(&b[2..34]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // f16 bit patterns used below.
    const ONE: [u8; 2] = [0x00, 0x3C];
    const HALF: [u8; 2] = [0x00, 0x38];
    const MINUS_TWO: [u8; 2] = [0x00, 0xC0];

    #[test]
    fn q4_0_nibble_order_and_offset() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&HALF);
        // byte 0: element 0 = 0x3 -> (3-8)/2, element 16 = 0xF -> (15-8)/2.
        b[2] = 0xF3;
        let mut out = [0f32; 32];
        q4_0_block(&b, &mut out);
        assert_eq!(out[0], -2.5);
        assert_eq!(out[16], 3.5);
        assert_eq!(out[1], -4.0); // nibble 0 -> -8 * 0.5
    }

    #[test]
    fn q4_1_adds_offset() {
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&HALF);
        b[2..4].copy_from_slice(&MINUS_TWO);
        b[4 + 5] = 0x9A; // element 5 = 10, element 21 = 9
        let mut out = [0f32; 32];
        q4_1_block(&b, &mut out);
        assert_eq!(out[5], 10.0 * 0.5 - 2.0);
        assert_eq!(out[21], 9.0 * 0.5 - 2.0);
        assert_eq!(out[0], -2.0);
    }

    #[test]
    fn q5_high_bits_come_from_u32() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&ONE);
        // high bit of element 0 and of element 31.
        b[2..6].copy_from_slice(&(1u32 | (1 << 31)).to_le_bytes());
        b[6] = 0x07; // element 0 low = 7, element 16 low = 0
        b[6 + 15] = 0xF0; // element 31 low = 15
        let mut out = [0f32; 32];
        q5_0_block(&b, &mut out);
        assert_eq!(out[0], (16 + 7 - 16) as f32);
        assert_eq!(out[16], -16.0);
        assert_eq!(out[31], (16 + 15 - 16) as f32);

        let mut b1 = vec![0u8; 24];
        b1[..2].copy_from_slice(&ONE);
        b1[2..4].copy_from_slice(&HALF);
        b1[4..8].copy_from_slice(&(1u32 << 16).to_le_bytes());
        let mut out1 = [0f32; 32];
        q5_1_block(&b1, &mut out1);
        assert_eq!(out1[16], 16.5);
        assert_eq!(out1[0], 0.5);
    }

    #[test]
    fn q8_0_signed_bytes() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&MINUS_TWO);
        b[2] = 0x80; // -128
        b[3] = 0x7F; // 127
        let mut out = [0f32; 32];
        q8_0_block(&b, &mut out);
        assert_eq!(out[0], 256.0);
        assert_eq!(out[1], -254.0);
    }
}
