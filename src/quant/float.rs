//! Unquantized element types: F32, F16, BF16 (one element per "block").

use half::f16;

pub fn f32_block(b: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

/// Converts through `half`'s slice conversion, which uses F16C when the CPU has it (8 values
/// per instruction) instead of one software conversion per value. Both are exact for every
/// finite and infinite value; F16C may quiet a signalling NaN's payload bit.
pub fn f16_block(b: &[u8], out: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    const STEP: usize = 256;
    let mut bits = [0u16; STEP];
    for (bc, oc) in b.chunks(2 * STEP).zip(out.chunks_mut(STEP)) {
        let n = oc.len();
        for (x, c) in bits[..n].iter_mut().zip(bc.chunks_exact(2)) {
            *x = u16::from_le_bytes([c[0], c[1]]);
        }
        let halves: &[f16] = bits[..n].reinterpret_cast();
        halves.convert_to_f32_slice(oc);
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
