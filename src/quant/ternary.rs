//! The ternary formats TQ1_0 and TQ2_0: weights in {-1, 0, 1} times one f16 scale per 256.
//!
//! TQ1_0 packs 5 trits per byte (4 in the last 4 bytes) as a base-3 fixed-point fraction: the
//! n-th trit of byte q is the top "digit" of q·3ⁿ (mod 256), read as (x·3) >> 8. TQ2_0 stores
//! each trit + 1 in 2 bits.

use super::f16_at;

/// Trit n of a TQ1_0 byte: `((q · 3ⁿ mod 256) · 3) >> 8`, minus 1. The mod 256 is the packing's
/// design (u8 wrap-around shifts the next digit to the top), not an accident.
#[inline]
fn trit(q: u8, pow3: u8) -> i32 {
    let shifted = q.wrapping_mul(pow3) as u32;
    ((shifted * 3) >> 8) as i32 - 1
}

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

pub fn tq1_0_block(b: &[u8], out: &mut [f32]) {
    let qs = &b[0..48];
    let qh = &b[48..52];
    let d = f16_at(b, 52);
    // Bytes 0..32: 5 trits each, trit n of byte m is element 32n + m.
    for n in 0..5 {
        for m in 0..32 {
            out[32 * n + m] = d * trit(qs[m], POW3[n]) as f32;
        }
    }
    // Bytes 32..48: trit n of byte 32 + m is element 160 + 16n + m.
    for n in 0..5 {
        for m in 0..16 {
            out[160 + 16 * n + m] = d * trit(qs[32 + m], POW3[n]) as f32;
        }
    }
    // The last 4 bytes hold 4 trits each: element 240 + 4n + m.
    for n in 0..4 {
        for m in 0..4 {
            out[240 + 4 * n + m] = d * trit(qh[m], POW3[n]) as f32;
        }
    }
}

pub fn tq2_0_block(b: &[u8], out: &mut [f32]) {
    let qs = &b[0..64];
    let d = f16_at(b, 64);
    for half in 0..2 {
        for s in 0..4 {
            for m in 0..32 {
                let q = ((qs[half * 32 + m] >> (2 * s)) & 3) as i32 - 1;
                out[half * 128 + s * 32 + m] = d * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs 5 trits (each -1..=1, most significant first) the way the format's quantizer does:
    /// the base-3 number as a fraction of 243, rounded up to 8 bits.
    fn pack5(trits: [i32; 5]) -> u8 {
        let v = trits.iter().fold(0u32, |acc, t| acc * 3 + (t + 1) as u32);
        (v * 256).div_ceil(243) as u8
    }

    #[test]
    fn tq1_0_round_trips_every_5_trit_pattern() {
        for v in 0..243u32 {
            let mut trits = [0i32; 5];
            let mut x = v;
            for t in trits.iter_mut().rev() {
                *t = (x % 3) as i32 - 1;
                x /= 3;
            }
            let q = pack5(trits);
            for n in 0..5 {
                assert_eq!(trit(q, POW3[n]), trits[n], "pattern {v} trit {n}");
            }
        }
    }

    #[test]
    fn tq_block_layouts() {
        let mut b = vec![0u8; 54];
        b[52..54].copy_from_slice(&[0x00, 0x40]); // d = 2
        b[5] = pack5([1, 0, -1, 1, 1]);
        b[32 + 2] = pack5([-1, 1, 0, 0, 1]);
        b[48 + 3] = pack5([1, -1, 0, 1, 0]);
        let mut out = [0f32; 256];
        tq1_0_block(&b, &mut out);
        assert_eq!([out[5], out[37], out[69], out[101], out[133]], [2.0, 0.0, -2.0, 2.0, 2.0]);
        assert_eq!([out[162], out[178], out[194], out[226]], [-2.0, 2.0, 0.0, 2.0]);
        assert_eq!([out[243], out[247], out[251], out[255]], [2.0, -2.0, 0.0, 2.0]);

        let mut t = vec![0u8; 66];
        t[64..66].copy_from_slice(&[0x00, 0x3C]);
        t[32 + 1] = 0b10_00_01_10; // element 129: +1, 161: 0, 193: -1, 225: +1
        let mut out = [0f32; 256];
        tq2_0_block(&t, &mut out);
        assert_eq!([out[129], out[161], out[193], out[225]], [1.0, 0.0, -1.0, 1.0]);
        assert_eq!(out[0], -1.0);
    }
}
