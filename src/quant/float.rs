//! Unquantized element types: F32, F16, BF16 (one element per "block").

use half::f16;

pub fn f32_block(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub fn f16_block(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// BF16 is the top half of an f32, so widening is a shift and keeps NaN payloads.
pub fn bf16_block(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_and_bf16_known_values() {
        // f16 0x3C00 = 1.0, 0xC000 = -2.0, 0x0001 = 2^-24 (smallest subnormal).
        let mut out = [0f32; 3];
        f16_block(&[0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00], &mut out);
        assert_eq!(out, [1.0, -2.0, 2f32.powi(-24)]);
        // bf16 0x3F80 = 1.0, 0xC040 = -3.0, 0x7F80 = +inf.
        bf16_block(&[0x80, 0x3F, 0x40, 0xC0, 0x80, 0x7F], &mut out);
        assert_eq!(out, [1.0, -3.0, f32::INFINITY]);
        f32_block(&1.5f32.to_le_bytes(), &mut out[..1]);
        assert_eq!(out[0], 1.5);
    }
}
