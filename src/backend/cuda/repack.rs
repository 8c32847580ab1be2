//! Weights repacked once at upload into tiles that the tensor-core matrix-vector kernels
//! (kernels/matvec_mma.cu) read with 16-byte, coalesced loads.
//!
//! GGUF blocks are 22, 34, 144 or 210 bytes long, so a block in a tensor is rarely even 4-byte
//! aligned, and one row's blocks are contiguous: a warp reading 32 rows at once touches 32
//! scattered places. A tile instead holds 16 rows x `tile_cols` columns, arranged so that lane
//! `l = 4g + t` of a warp finds, in one 16-byte load per plane, exactly the values it feeds to
//! `mma.m16n8k16`: rows `g` and `g + 8`, and in every 16-column chunk the columns `4t .. 4t+3`.
//! Planes (quant codes, high bits, scales) sit apart inside the tile and every plane offset is a
//! multiple of 16 bytes, so with a 256-byte aligned allocation every load is aligned.
//!
//! Tiles are stored row-tile major: tile `(mt, kt)` at `(mt * k_tiles + kt) * tile_bytes`. Rows
//! past the matrix and columns past its width are padding with zero scales.
//!
//! Codes, per element (the kernels turn each into its float with a magic-number trick):
//!
//! | type | code | value (exactly as the CPU decoder) |
//! |---|---|---|
//! | Q5_0 | 5 bits: nibble + high bit | `(code - 16) * d` |
//! | Q8_0 | the int8 XOR 0x80 | `((code ^ 0x80) as i8) * d` |
//! | Q4_K | nibble | `(d * sc) * code - dmin * m` |
//! | Q6_K | 6 bits: nibble + two high bits | `(d * sc) * (code - 32)` |
//!
//! Layout of one tile, for the lane `l` and row half `h` (rows `g + 8h`). Pair `P = 2c + j/2`
//! is the `j/2`-th pair of the lane's four columns of chunk `c`; a pair's two codes share a
//! 32-bit word, the first at bit `b`, the second at bit `b + 16`:
//!
//! * nibble plane (Q5_0, Q4_K, Q6_K) at 0: `words = tile_cols / 32` words per (h, lane), in
//!   16-byte parts: part `p` of (h, lane) at `((h * parts + p) * 32 + lane) * 16`; pair P in
//!   word `P / 4` at bit `4 * (P % 4)`.
//! * Q8_0 byte plane at 0: chunk `c`'s four bytes at `((h * 2 + c / 4) * 32 + lane) * 16 + 4 * (c % 4)`.
//! * Q5_0 high bits at 1024: one word per (h, lane) at `1024 + (h * 32 + lane) * 4`, pair P at bit P.
//! * Q6_K high bits at 2048: four words per (h, lane) at `2048 + (h * 32 + lane) * 16`; pair P in
//!   word `P / 8` at bits `2 * (P % 8)` (two bits per code).
//! * scales, by tile row r (0..16): Q5_0 and Q8_0: the four blocks' f16 `d` at `base + 8r`
//!   (base 1280 and 2048); Q4_K: the block's first 16 bytes (d, dmin, the 12 packed scale bytes)
//!   at `2048 + 16r`; Q6_K: the 16 int8 scales at `3072 + 16r` and `d` at `3328 + 2r`.

use rayon::prelude::*;

use crate::quant::{check_len, GgmlType};

/// Rows per tile: the M of `mma.m16n8k16`.
pub const TILE_ROWS: usize = 16;

/// Geometry of one repacked type. The kernels' copy is `RP_TILE_COLS` / `RP_TILE_BYTES` in
/// kernels/repacked.cuh, checked against this table by a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileFormat {
    pub ty: GgmlType,
    /// Columns per tile: four 32-element blocks, or one 256-element super-block.
    pub tile_cols: usize,
    /// Bytes per tile: exactly 16 rows' worth of the type's blocks.
    pub tile_bytes: usize,
    /// Rows of x up to which matvec_mma.cu multiplies on the int8 tensor cores (x in three int8
    /// parts for one or two rows, two from three; more rows keep two bf16 parts), its
    /// `MMA_S8_MAX_NT` (see `kernels::tile_type_defines`). From 3 rows on an H100, 2026-12-05
    /// (docs/results/h100-2026-12-05b/a): Q4_K's 3584 x 3584 at 4 rows 9.9 -> 8.5 us, its
    /// 896 x 4864 6.7 -> 5.5, Q6_K's 10.6 -> 10.1 and 6.7 -> 6.3, Q8_0 the same or up to 7 %
    /// faster; Q5_0's 9728 x 896 (the 0.5B's gate and up) 8.4 -> 9.1, so Q5_0 stays on bf16. At 8
    /// rows only Q4_K gained everywhere (14.6 -> 12.9, 9.0 -> 8.0); Q6_K's 896 x 4864 lost
    /// (8.8 -> 9.5), as did Q8_0's 9728 x 896 (10.5 -> 11.9), so those two stop at 4. (From 5
    /// rows the decode step multiplies on cuBLAS anyway: `matmul::MATVEC_PREFERRED_MAX_ROWS`.)
    /// A decode step with this table against bf16 for every type (d/ab.txt): Qwen2.5-7B's shapes
    /// at 3 / 4 sequences 4.50 -> 4.06 / 4.59 -> 4.16 ms, the 0.5B's 0.998 -> 0.979 / 0.981.
    pub int8_max_rows: usize,
}

/// The types with repacked tiles and tensor-core matvec kernels. Every other type keeps the
/// file's blocks and the generic kernels of matvec.cu.
pub const TILE_FORMATS: [TileFormat; 4] = [
    TileFormat { ty: GgmlType::Q5_0, tile_cols: 128, tile_bytes: 1408, int8_max_rows: 2 },
    TileFormat { ty: GgmlType::Q8_0, tile_cols: 128, tile_bytes: 2176, int8_max_rows: 4 },
    TileFormat { ty: GgmlType::Q4_K, tile_cols: 256, tile_bytes: 2304, int8_max_rows: 8 },
    TileFormat { ty: GgmlType::Q6_K, tile_cols: 256, tile_bytes: 3360, int8_max_rows: 4 },
];

/// The tile format of `ty`, if it has one.
pub fn tile_format(ty: GgmlType) -> Option<TileFormat> {
    TILE_FORMATS.iter().copied().find(|f| f.ty == ty)
}

/// A matrix's tile grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub format: TileFormat,
    pub n_rows: usize,
    pub n_cols: usize,
    /// Row tiles: `ceil(n_rows / 16)`.
    pub m_tiles: usize,
    /// Column tiles: `ceil(n_cols / tile_cols)`.
    pub k_tiles: usize,
}

impl TileGrid {
    pub fn new(format: TileFormat, n_rows: usize, n_cols: usize) -> TileGrid {
        TileGrid { format, n_rows, n_cols, m_tiles: n_rows.div_ceil(TILE_ROWS), k_tiles: n_cols.div_ceil(format.tile_cols) }
    }

    /// Bytes of the repacked matrix (padding included).
    pub fn bytes(&self) -> usize {
        self.m_tiles * self.k_tiles * self.format.tile_bytes
    }
}

/// Where one element of a tile lives, for the lane layout described in the module docs.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Row half: the element's row is `g + 8h` within the tile.
    h: usize,
    lane: usize,
    /// Chunk of 16 columns within the tile.
    chunk: usize,
    /// Pair index `2 * chunk + j / 2`.
    pair: usize,
    /// 0 for the first code of its pair (low half of the word), 1 for the second.
    second: usize,
    /// Position (0..4) among the lane's four columns of the chunk.
    j: usize,
}

fn slot(r: usize, kc: usize) -> Slot {
    let (h, g) = (r / 8, r % 8);
    let (chunk, e) = (kc / 16, kc % 16);
    let (t, j) = (e / 4, e % 4);
    Slot { h, lane: 4 * g + t, chunk, pair: 2 * chunk + j / 2, second: j % 2, j }
}

fn or_word(tile: &mut [u8], byte_at: usize, bits: u32) {
    let w = u32::from_le_bytes(tile[byte_at..byte_at + 4].try_into().expect("4 bytes")) | bits;
    tile[byte_at..byte_at + 4].copy_from_slice(&w.to_le_bytes());
}

fn word(tile: &[u8], byte_at: usize) -> u32 {
    u32::from_le_bytes(tile[byte_at..byte_at + 4].try_into().expect("4 bytes"))
}

/// Byte offset of the nibble-plane word holding pair `pair` of (h, lane).
fn nibble_word_at(format: &TileFormat, s: &Slot) -> usize {
    let parts = format.tile_cols / 128; // 16-byte parts per (h, lane): 4 words each
    let w = s.pair / 4;
    ((s.h * parts + w / 4) * 32 + s.lane) * 16 + 4 * (w % 4)
}

/// The code of element `i` of one block (see the table in the module docs).
fn code(ty: GgmlType, b: &[u8], i: usize) -> u32 {
    match ty {
        GgmlType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let q = b[6 + (i & 15)] as u32;
            let lo = if i < 16 { q & 15 } else { q >> 4 };
            lo | (((qh >> i) & 1) << 4)
        }
        GgmlType::Q8_0 => (b[2 + i] ^ 0x80) as u32,
        GgmlType::Q4_K => {
            let (g, hi, l) = (i >> 6, (i >> 5) & 1, i & 31);
            let q = b[16 + 32 * g + l] as u32;
            if hi == 1 {
                q >> 4
            } else {
                q & 15
            }
        }
        GgmlType::Q6_K => {
            let (n, r) = (i >> 7, i & 127);
            let (quarter, l) = (r >> 5, r & 31);
            let lq = b[n * 64 + l + (quarter & 1) * 32] as u32;
            let lo = if quarter >= 2 { lq >> 4 } else { lq & 15 };
            let hb = (b[128 + n * 32 + l] as u32 >> (2 * quarter)) & 3;
            lo | (hb << 4)
        }
        _ => unreachable!("{ty} has no tile format"),
    }
}

/// Places the code of the element at tile row `r`, tile column `kc`.
fn put_code(format: &TileFormat, tile: &mut [u8], r: usize, kc: usize, c: u32) {
    let s = slot(r, kc);
    match format.ty {
        GgmlType::Q8_0 => {
            let at = ((s.h * 2 + s.chunk / 4) * 32 + s.lane) * 16 + 4 * (s.chunk % 4) + s.j;
            tile[at] = c as u8;
        }
        _ => {
            let shift = 4 * (s.pair % 4) + 16 * s.second;
            or_word(tile, nibble_word_at(format, &s), (c & 15) << shift);
            match format.ty {
                GgmlType::Q5_0 => or_word(tile, 1024 + (s.h * 32 + s.lane) * 4, ((c >> 4) & 1) << (s.pair + 16 * s.second)),
                GgmlType::Q6_K => {
                    let at = 2048 + (s.h * 32 + s.lane) * 16 + 4 * (s.pair / 8);
                    or_word(tile, at, ((c >> 4) & 3) << (2 * (s.pair % 8) + 16 * s.second));
                }
                _ => {}
            }
        }
    }
}

/// Copies the scale fields of the block at tile row `r`, block `blk` of the tile.
fn put_scales(format: &TileFormat, tile: &mut [u8], r: usize, blk: usize, b: &[u8]) {
    match format.ty {
        GgmlType::Q5_0 => tile[1280 + 8 * r + 2 * blk..][..2].copy_from_slice(&b[..2]),
        GgmlType::Q8_0 => tile[2048 + 8 * r + 2 * blk..][..2].copy_from_slice(&b[..2]),
        GgmlType::Q4_K => tile[2048 + 16 * r..][..16].copy_from_slice(&b[..16]),
        GgmlType::Q6_K => {
            tile[3072 + 16 * r..][..16].copy_from_slice(&b[192..208]);
            tile[3328 + 2 * r..][..2].copy_from_slice(&b[208..210]);
        }
        _ => unreachable!("{} has no tile format", format.ty),
    }
}

/// Q4_K: the 6-bit scale and min of sub-block `j` (0..8) from the 12 packed bytes (as
/// `scale_min_k4` in kernels/common.cuh).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Repacks `n_rows` rows of `n_cols` elements of `format.ty` (the file's blocks, row after row)
/// into tiles. Fails (never panics) when `bytes` does not hold exactly that matrix.
pub fn repack(format: TileFormat, bytes: &[u8], n_rows: usize, n_cols: usize) -> Result<Vec<u8>, crate::quant::QuantError> {
    let ty = format.ty;
    check_len(ty, bytes.len(), n_rows.saturating_mul(n_cols))?;
    let grid = TileGrid::new(format, n_rows, n_cols);
    let (qk, block_bytes) = (ty.block_elems(), ty.block_bytes());
    let row_bytes = n_cols / qk * block_bytes;
    let blocks_per_tile = format.tile_cols / qk;
    let tile_row_bytes = grid.k_tiles * format.tile_bytes;
    let mut out = vec![0u8; grid.bytes()];
    if out.is_empty() {
        return Ok(out);
    }
    out.par_chunks_mut(tile_row_bytes).enumerate().for_each(|(mt, tiles)| {
        for (kt, tile) in tiles.chunks_mut(format.tile_bytes).enumerate() {
            for r in 0..TILE_ROWS {
                let row = mt * TILE_ROWS + r;
                if row >= n_rows {
                    break; // padding rows stay zero: zero scales
                }
                for blk in 0..blocks_per_tile {
                    let col0 = kt * format.tile_cols + blk * qk;
                    if col0 >= n_cols {
                        break; // padding columns: zero scales
                    }
                    let b = &bytes[row * row_bytes + col0 / qk * block_bytes..][..block_bytes];
                    put_scales(&format, tile, r, blk, b);
                    for i in 0..qk {
                        put_code(&format, tile, r, blk * qk + i, code(ty, b, i));
                    }
                }
            }
        }
    });
    Ok(out)
}

/// The element at (`row`, `col`) of a repacked matrix, computed with the CPU decoder's float
/// operations in its order, so it is bit-identical to `quant::dequantize`. The reference for
/// `rp_value` in kernels/repacked.cuh (the GPU embedding and prefill read weights through it).
pub fn value_at(grid: &TileGrid, tiles: &[u8], row: usize, col: usize) -> f32 {
    use crate::quant::f16_at;
    let f = grid.format;
    let tile = &tiles[((row / TILE_ROWS) * grid.k_tiles + col / f.tile_cols) * f.tile_bytes..][..f.tile_bytes];
    let (r, kc) = (row % TILE_ROWS, col % f.tile_cols);
    let s = slot(r, kc);
    let shift = 4 * (s.pair % 4) + 16 * s.second;
    let nibble = || (word(tile, nibble_word_at(&f, &s)) >> shift) & 15;
    match f.ty {
        GgmlType::Q5_0 => {
            let hi = (word(tile, 1024 + (s.h * 32 + s.lane) * 4) >> (s.pair + 16 * s.second)) & 1;
            let d = f16_at(tile, 1280 + 8 * r + 2 * (kc / 32));
            ((nibble() | (hi << 4)) as i32 - 16) as f32 * d
        }
        GgmlType::Q8_0 => {
            let at = ((s.h * 2 + s.chunk / 4) * 32 + s.lane) * 16 + 4 * (s.chunk % 4) + s.j;
            let d = f16_at(tile, 2048 + 8 * r + 2 * (kc / 32));
            ((tile[at] ^ 0x80) as i8) as f32 * d
        }
        GgmlType::Q4_K => {
            let rec = &tile[2048 + 16 * r..][..16];
            let (d, dmin) = (f16_at(rec, 0), f16_at(rec, 2));
            let (sc, m) = scale_min_k4(kc / 32, &rec[4..16]);
            let d1 = d * sc as f32;
            let m1 = dmin * m as f32;
            d1 * nibble() as f32 - m1
        }
        GgmlType::Q6_K => {
            let hb = (word(tile, 2048 + (s.h * 32 + s.lane) * 16 + 4 * (s.pair / 8)) >> (2 * (s.pair % 8) + 16 * s.second)) & 3;
            let q = (nibble() | (hb << 4)) as i32 - 32;
            let sc = tile[3072 + 16 * r + kc / 16] as i8;
            let d = f16_at(tile, 3328 + 2 * r);
            d * sc as f32 * q as f32
        }
        _ => unreachable!("{} has no tile format", f.ty),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests::random_bytes;

    /// Random valid blocks: random bytes with finite f16 scales.
    fn random_matrix(ty: GgmlType, n_rows: usize, n_cols: usize, seed: u64) -> Vec<u8> {
        let n_blocks = n_rows * n_cols / ty.block_elems();
        let mut b = random_bytes(n_blocks * ty.block_bytes(), seed);
        let scale_fields: &[usize] = match ty {
            GgmlType::Q4_K => &[0, 2],
            GgmlType::Q6_K => &[208],
            _ => &[0],
        };
        for (i, blk) in b.chunks_exact_mut(ty.block_bytes()).enumerate() {
            for &at in scale_fields {
                // Finite halves of varied magnitude: exponent field 0..=29 (subnormals too),
                // the random mantissa and sign kept.
                let random = u16::from_le_bytes([blk[at], blk[at + 1]]);
                let exponent = ((i * 7 + at) % 30) as u16;
                let bits = (random & 0x83ff) | (exponent << 10);
                blk[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn repacked_values_are_the_cpu_decoders_bit_for_bit() {
        // Odd row counts (a partial last tile) and widths that are not a multiple of the tile.
        for f in TILE_FORMATS {
            let qk = f.ty.block_elems();
            for (n_rows, n_cols) in [(1, qk), (17, 3 * qk), (33, f.tile_cols), (40, 5 * qk.max(64))] {
                let n_cols = n_cols / qk * qk;
                let raw = random_matrix(f.ty, n_rows, n_cols, (n_rows * 1000 + n_cols) as u64);
                let mut cpu = vec![0f32; n_rows * n_cols];
                crate::quant::dequantize(f.ty, &raw, &mut cpu).unwrap();
                let grid = TileGrid::new(f, n_rows, n_cols);
                let tiles = repack(f, &raw, n_rows, n_cols).unwrap();
                assert_eq!(tiles.len(), grid.bytes());
                for row in 0..n_rows {
                    for col in 0..n_cols {
                        let (want, got) = (cpu[row * n_cols + col], value_at(&grid, &tiles, row, col));
                        assert_eq!(want.to_bits(), got.to_bits(), "{} {n_rows}x{n_cols} at ({row}, {col}): cpu {want} repacked {got}", f.ty);
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_hold_exactly_sixteen_rows_of_blocks_and_planes_are_aligned() {
        for f in TILE_FORMATS {
            assert_eq!(f.tile_bytes, TILE_ROWS * f.tile_cols / f.ty.block_elems() * f.ty.block_bytes(), "{}", f.ty);
            assert_eq!(f.tile_bytes % 16, 0, "{}: tiles must keep 16-byte alignment", f.ty);
            assert_eq!(f.tile_cols % 128, 0);
        }
    }

    #[test]
    fn every_slot_is_used_once() {
        // Distinct (row, col) of a tile must land on distinct bits: repack a tile of all-ones
        // codes and count the bits set in the code planes.
        for f in TILE_FORMATS {
            let mut tile = vec![0u8; f.tile_bytes];
            let ones = match f.ty {
                GgmlType::Q8_0 => 0xff,
                GgmlType::Q5_0 => 31,
                GgmlType::Q4_K => 15,
                _ => 63,
            };
            for r in 0..TILE_ROWS {
                for kc in 0..f.tile_cols {
                    put_code(&f, &mut tile, r, kc, ones);
                }
            }
            let bits: u32 = tile.iter().map(|b| b.count_ones()).sum();
            let per_code = ones.count_ones();
            assert_eq!(bits, (TILE_ROWS * f.tile_cols) as u32 * per_code, "{}", f.ty);
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let f = tile_format(GgmlType::Q5_0).unwrap();
        assert!(repack(f, &[0u8; 21], 1, 32).is_err());
        assert!(repack(f, &[0u8; 22], 1, 33).is_err());
        assert!(repack(f, &[0u8; 22], usize::MAX, 32).is_err());
        assert_eq!(repack(f, &[], 0, 32).unwrap().len(), 0);
    }
}
