//! 4-bit float (E2M1) block formats: MXFP4 (32 weights, one E8M0 power-of-two scale) and NVFP4
//! (64 weights in 4 groups of 16, one unsigned E4M3 scale per group).
//!
//! Both store E2M1 codes as nibbles; the table holds their values doubled (so they are
//! integers), and the scales are decoded at half value to compensate.

/// E2M1 code -> value × 2.
pub const E2M1_DOUBLED: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// 2^(e - 127) / 2 as an f32, built from bits: e < 2 lands in the subnormal range.
pub fn e8m0_half(e: u8) -> f32 {
    if e < 2 {
        f32::from_bits(0x0020_0000u32 << e)
    } else {
        f32::from_bits(((e - 1) as u32) << 23)
    }
}

pub fn mxfp4_block(b: &[u8], out: &mut [f32]) {
    let d = e8m0_half(b[0]);
    let qs = &b[1..17];
    for j in 0..16 {
        out[j] = d * E2M1_DOUBLED[(qs[j] & 0x0F) as usize] as f32;
        out[j + 16] = d * E2M1_DOUBLED[(qs[j] >> 4) as usize] as f32;
    }
}

/// Unsigned E4M3 (bias 7) scale at half value. The sign bit is not part of the format and is
/// ignored; 0x7F (the E4M3 NaN) decodes to 0, as in gguf-py.
pub fn ue4m3_half(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = ((x >> 3) & 0x0F) as i32;
    let man = (x & 0x07) as f32;
    // Every value here is exactly representable, so the order of operations cannot matter.
    let raw = if exp == 0 { man * (2f32).powi(-9) } else { (1.0 + man / 8.0) * (2f32).powi(exp - 7) };
    raw * 0.5
}

pub fn nvfp4_block(b: &[u8], out: &mut [f32]) {
    for g in 0..4 {
        let d = ue4m3_half(b[g]);
        let qs = &b[4 + 8 * g..12 + 8 * g];
        // Group g: low nibbles are weights 0..8, high nibbles 8..16.
        for j in 0..8 {
            out[16 * g + j] = d * E2M1_DOUBLED[(qs[j] & 0x0F) as usize] as f32;
            out[16 * g + 8 + j] = d * E2M1_DOUBLED[(qs[j] >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_scales() {
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(254), 2f32.powi(126));
    }

    #[test]
    fn mxfp4_block_values() {
        let mut b = [0u8; 17];
        b[0] = 128; // scale 1 (doubled table / 2)
        b[1] = 0xF7; // element 0 = code 7 -> 6.0, element 16 = code 15 -> -6.0
        let mut out = [0f32; 32];
        mxfp4_block(&b, &mut out);
        assert_eq!(out[0], 12.0);
        assert_eq!(out[16], -12.0);
        assert_eq!(out[1], 0.0);
    }

    #[test]
    fn nvfp4_scales_and_layout() {
        assert_eq!(ue4m3_half(0x38), 0.5); // exp 7, man 0 -> 1.0, halved
        assert_eq!(ue4m3_half(0x01), 2f32.powi(-10)); // subnormal 2^-9, halved
        assert_eq!(ue4m3_half(0x7F), 0.0);
        let mut b = [0u8; 36];
        b[1] = 0x40; // group 1 scale: exp 8 -> 2.0, halved = 1.0
        b[4 + 8] = 0x52; // group 1 weight 0 = code 2 (1.0 doubled), weight 8 = code 5 (3.0 doubled)
        let mut out = [0f32; 64];
        nvfp4_block(&b, &mut out);
        assert_eq!(out[16], 2.0);
        assert_eq!(out[24], 6.0);
        assert_eq!(out[0], 0.0);
    }
}
