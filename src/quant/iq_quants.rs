//! The "importance" lattice formats: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S,
//! IQ4_NL, IQ4_XS.
//!
//! The IQ1/2/3 types store, per group of 8 (or 4) weights, an index into a fixed codebook of
//! magnitudes (iq_grids.rs) plus sign bits; IQ4 types store 4-bit indices into a non-linear
//! table of 16 levels. Float arithmetic follows gguf-py's order so results are bit-identical.

use super::f16_at;
use super::iq_grids::*;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `v`, negated when `negative`: a sign-bit flip (what multiplying by -1 does), branch-free
/// because the sign bits are random and a branch would mispredict half the time.
#[inline(always)]
fn signed(v: f32, negative: bool) -> f32 {
    f32::from_bits(v.to_bits() ^ ((negative as u32) << 31))
}

/// Writes `db * grid[k] * ±1` for one group of 8 weights, bit k of `signs` giving the sign.
#[inline]
fn group8(out: &mut [f32], db: f32, grid: &[u8; 8], signs: u8) {
    for k in 0..8 {
        out[k] = signed(db * grid[k] as f32, (signs >> k) & 1 != 0);
    }
}

pub fn iq2_xxs_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for ib in 0..8 {
        let grid_idx = u32_at(b, 2 + 8 * ib).to_le_bytes();
        let aux = u32_at(b, 2 + 8 * ib + 4);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 0x7F) as usize];
            let at = ib * 32 + l * 8;
            group8(&mut out[at..at + 8], db, &IQ2XXS_GRID[grid_idx[l] as usize], signs);
        }
    }
}

pub fn iq2_xs_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales = &b[66..74];
    for g in 0..32 {
        let q = u16_at(b, 2 + 2 * g);
        let s = (scales[g / 4] >> (4 * ((g / 2) % 2))) & 0x0F;
        let db = d * (0.5 + s as f32) * 0.25;
        let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
        group8(&mut out[g * 8..g * 8 + 8], db, &IQ2XS_GRID[(q & 511) as usize], signs);
    }
}

pub fn iq2_s_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    let signs = &b[34..66];
    let qh = &b[66..74];
    let scales = &b[74..82];
    for g in 0..32 {
        let s = (scales[g / 4] >> (4 * ((g / 2) % 2))) & 0x0F;
        let db = d * (0.5 + s as f32) * 0.25;
        let idx = qs[g] as usize | ((((qh[g / 4] >> (2 * (g % 4))) & 3) as usize) << 8);
        group8(&mut out[g * 8..g * 8 + 8], db, &IQ2S_GRID[idx], signs[g]);
    }
}

pub fn iq3_xxs_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    for ib in 0..8 {
        let aux = u32_at(b, 66 + 4 * ib);
        let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
        for l in 0..4 {
            let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 0x7F) as usize];
            let at = ib * 32 + l * 8;
            let g0 = &IQ3XXS_GRID[qs[ib * 8 + 2 * l] as usize];
            let g1 = &IQ3XXS_GRID[qs[ib * 8 + 2 * l + 1] as usize];
            for k in 0..4 {
                out[at + k] = signed(db * g0[k] as f32, (signs >> k) & 1 != 0);
                out[at + 4 + k] = signed(db * g1[k] as f32, (signs >> (4 + k)) & 1 != 0);
            }
        }
    }
}

pub fn iq3_s_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..66];
    let qh = &b[66..74];
    let signs = &b[74..106];
    let scales = &b[106..110];
    for ib in 0..8 {
        let s = (scales[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let db = d * (1 + 2 * s as u32) as f32;
        for j in 0..8 {
            // qs index i covers elements 4i..4i+4; its 9th bit is bit i%8 of qh[i/8].
            let i = ib * 8 + j;
            let idx = qs[i] as usize | ((((qh[i / 8] >> (i % 8)) & 1) as usize) << 8);
            let grid = &IQ3S_GRID[idx];
            for k in 0..4 {
                let e = 4 * i + k;
                out[e] = signed(db * grid[k] as f32, (signs[e / 8] >> (e % 8)) & 1 != 0);
            }
        }
    }
}

/// ±1/8: IQ1 codebook values are shifted by this before scaling, the sign chosen per group.
const IQ1_DELTA: f32 = 0.125;

pub fn iq1_s_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..34];
    for ib in 0..8 {
        let qh = u16_at(b, 34 + 2 * ib);
        let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
        let delta = if qh & 0x8000 != 0 { -IQ1_DELTA } else { IQ1_DELTA };
        for l in 0..4 {
            let idx = qs[ib * 4 + l] as usize | ((((qh >> (3 * l)) & 7) as usize) << 8);
            let grid = &IQ1S_GRID[idx];
            for k in 0..8 {
                out[ib * 32 + l * 8 + k] = dl * (grid[k] as f32 + delta);
            }
        }
    }
}

pub fn iq1_m_block(b: &[u8], out: &mut [f32]) {
    let qs = &b[0..32];
    let qh = &b[32..48];
    let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
    // The f16 super-block scale is spread over the top nibbles of the four scale words.
    let d_bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
    let d = half::f16::from_bits(d_bits).to_f32();
    for g in 0..32 {
        // Group g of 8 weights: 3-bit scale s of its 16-weight half, 4-bit qh nibble.
        let half_idx = g / 2;
        let s = (sc[half_idx / 4] >> (3 * (half_idx % 4))) & 7;
        let dl = d * (2 * s + 1) as f32;
        let nib = (qh[g / 2] >> (4 * (g % 2))) & 0x0F;
        let idx = qs[g] as usize | (((nib & 7) as usize) << 8);
        let delta = if nib & 0x08 != 0 { -IQ1_DELTA } else { IQ1_DELTA };
        let grid = &IQ1S_GRID[idx];
        for k in 0..8 {
            out[g * 8 + k] = dl * (grid[k] as f32 + delta);
        }
    }
}

/// The 16 non-uniform levels of IQ4_NL / IQ4_XS.
pub const IQ4_LEVELS: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

pub fn iq4_nl_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = d * IQ4_LEVELS[(qs[j] & 0x0F) as usize] as f32;
        out[j + 16] = d * IQ4_LEVELS[(qs[j] >> 4) as usize] as f32;
    }
}

pub fn iq4_xs_block(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let scales_h = u16_at(b, 2);
    let scales_l = &b[4..8];
    let qs = &b[8..136];
    for ib in 0..8 {
        let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
        let hi = ((scales_h >> (2 * ib)) & 3) as u8;
        let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
        let bytes = &qs[ib * 16..ib * 16 + 16];
        for m in 0..16 {
            out[ib * 32 + m] = dl * IQ4_LEVELS[(bytes[m] & 0x0F) as usize] as f32;
            out[ib * 32 + 16 + m] = dl * IQ4_LEVELS[(bytes[m] >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: [u8; 2] = [0x00, 0x3C];

    #[test]
    fn iq2_xxs_scale_grid_and_signs() {
        let mut b = vec![0u8; 66];
        b[..2].copy_from_slice(&ONE);
        // Sub-block 0: group 0 uses grid row 1 ([43, 8, ...]); scale nibble 1 -> 1.5/4.
        // Sign index 1 -> ksigns[1] = 0x81: weights 0 and 7 negative.
        b[2] = 1;
        b[6..10].copy_from_slice(&((1u32 << 28) | 1).to_le_bytes());
        let mut out = [0f32; 256];
        iq2_xxs_block(&b, &mut out);
        let db = 1.5 * 0.25;
        assert_eq!(out[0], -43.0 * db);
        assert_eq!(out[1], 8.0 * db);
        assert_eq!(out[7], -8.0 * db);
        assert_eq!(out[8], 8.0 * db); // group 1: row 0, sign index 0
    }

    #[test]
    fn iq2_xs_grid_index_sign_index_and_scale_nibbles() {
        // block_iq2_xs: d, qs[32] u16 (9-bit grid index | 7-bit sign index << 9), scales[8]
        // (one byte per 32 weights: low nibble for groups 0-1, high nibble for groups 2-3).
        assert_eq!(KSIGNS_IQ2XS[1], 0x81); // 7 sign bits + parity: weights 0 and 7 negative
        let mut b = vec![0u8; 74];
        b[..2].copy_from_slice(&ONE);
        b[2 + 2 * 3..2 + 2 * 3 + 2].copy_from_slice(&((1u16 << 9) | 5).to_le_bytes()); // group 3
        b[66] = 0x20; // weights 0..16 scale 0 -> 0.125, weights 16..32 scale 2 -> 0.625
        let mut out = [0f32; 256];
        iq2_xs_block(&b, &mut out);
        assert_eq!(out[0], 0.125 * IQ2XS_GRID[0][0] as f32);
        assert_eq!(out[16], 0.625 * IQ2XS_GRID[0][0] as f32); // group 2: high nibble
        assert_eq!(out[24], -0.625 * IQ2XS_GRID[5][0] as f32);
        assert_eq!(out[25], 0.625 * IQ2XS_GRID[5][1] as f32);
        assert_eq!(out[31], -0.625 * IQ2XS_GRID[5][7] as f32);
    }

    #[test]
    fn iq2_s_high_index_bits_sign_bytes_and_scales() {
        // block_iq2_s: d, qs[32] (grid index low bytes), signs[32] (one byte per 8 weights),
        // qh[8] (2 high index bits per group), scales[8] (nibbles as in IQ2_XS).
        let mut b = vec![0u8; 82];
        b[..2].copy_from_slice(&ONE);
        let g = 5; // sub-block 1, group 1
        b[2 + g] = 3;
        b[66 + 1] = 0b01 << 2; // qh of sub-block 1, bits 2..3 belong to its group 1
        b[34 + g] = 0x02; // weight 1 of the group negative
        b[74 + 1] = 0x03; // sub-block 1, groups 0-1 scale 3 -> 3.5 / 4
        let mut out = [0f32; 256];
        iq2_s_block(&b, &mut out);
        let row = &IQ2S_GRID[3 | (1 << 8)];
        assert_eq!(out[40], 0.875 * row[0] as f32);
        assert_eq!(out[41], -0.875 * row[1] as f32);
        assert_eq!(out[47], 0.875 * row[7] as f32);
        assert_eq!(out[48], 0.125 * IQ2S_GRID[0][0] as f32); // group 6: high nibble 0
    }

    #[test]
    fn iq3_xxs_grid_pairs_and_packed_scale_signs() {
        // block_iq3_xxs: d, qs[64] (two 4-value grid indices per 8 weights), then 8 u32: per 32
        // weights four 7-bit sign indices and a 4-bit scale in the top nibble.
        let mut b = vec![0u8; 98];
        b[..2].copy_from_slice(&ONE);
        let (ib, l) = (2, 1);
        b[2 + 8 * ib + 2 * l] = 4;
        b[2 + 8 * ib + 2 * l + 1] = 9;
        b[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&((3u32 << 28) | (1 << (7 * l))).to_le_bytes());
        let mut out = [0f32; 256];
        iq3_xxs_block(&b, &mut out);
        let (db, at) = (3.5 * 0.5, 32 * ib + 8 * l);
        assert_eq!(out[at], -db * IQ3XXS_GRID[4][0] as f32);
        assert_eq!(out[at + 1], db * IQ3XXS_GRID[4][1] as f32);
        assert_eq!(out[at + 4], db * IQ3XXS_GRID[9][0] as f32);
        assert_eq!(out[at + 7], -db * IQ3XXS_GRID[9][3] as f32);
        assert_eq!(out[at - 8], db * IQ3XXS_GRID[0][0] as f32); // group 0 of the sub-block
    }

    #[test]
    fn iq4_nl_levels_and_iq4_xs_scales() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&ONE);
        b[2] = 0xF0;
        let mut out = [0f32; 32];
        iq4_nl_block(&b, &mut out);
        assert_eq!(out[0], -127.0);
        assert_eq!(out[16], 113.0);

        let mut x = vec![0u8; 136];
        x[..2].copy_from_slice(&ONE);
        x[2..4].copy_from_slice(&(0b10u16 << 2).to_le_bytes()); // sub-block 1 high bits = 2
        x[4] = 0x10; // sub-block 1 low nibble = 1 -> 33 - 32 = 1
        x[8 + 16] = 0x08; // sub-block 1, element 0 -> level 8 = 1
        let mut out = [0f32; 256];
        iq4_xs_block(&x, &mut out);
        assert_eq!(out[32], 1.0);
        assert_eq!(out[48], -127.0);
        assert_eq!(out[0], -32.0 * -127.0);
    }

    #[test]
    fn iq1_m_scale_is_assembled_from_nibbles() {
        let mut b = vec![0u8; 56];
        // f16 1.0 = 0x3C00: nibbles (low to high) 0, 0, C, 3 go to words 0..3's top nibble.
        let words = [0x0000u16, 0x0000, 0xC000, 0x3000];
        for (i, w) in words.iter().enumerate() {
            b[48 + 2 * i..50 + 2 * i].copy_from_slice(&w.to_le_bytes());
        }
        b[32] = 0x08; // group 0 delta negative; index 0
        let mut out = [0f32; 256];
        iq1_m_block(&b, &mut out);
        let g0 = IQ1S_GRID[0][0] as f32;
        assert_eq!(out[0], g0 - 0.125);
        assert_eq!(out[8], IQ1S_GRID[0][0] as f32 + 0.125); // group 1: nibble 0
    }

    #[test]
    fn iq1_s_and_iq3_s_scales() {
        let mut b = vec![0u8; 50];
        b[..2].copy_from_slice(&ONE);
        b[34..36].copy_from_slice(&(0x8000u16 | (2 << 12)).to_le_bytes()); // dl = 5, delta -1/8
        let mut out = [0f32; 256];
        iq1_s_block(&b, &mut out);
        assert_eq!(out[0], 5.0 * (IQ1S_GRID[0][0] as f32 - 0.125));

        let mut s = vec![0u8; 110];
        s[..2].copy_from_slice(&ONE);
        s[106] = 0x02; // sub-block 0 scale 2 -> 5
        s[2 + 1] = 7; // elements 4..8 grid row 7
        s[74] = 0x20; // element 5 negative
        iq3_s_block(&s, &mut out);
        assert_eq!(out[4], 5.0 * IQ3S_GRID[7][0] as f32);
        assert_eq!(out[5], -5.0 * IQ3S_GRID[7][1] as f32);
    }
}
