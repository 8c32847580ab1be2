//! ggml block formats: dequantization of every GGUF tensor type gguf-py can read, and the row
//! dot products the CPU backend uses.
//!
//! One module per block family; each exposes `fn <type>_block(block_bytes, out_elems)`. The
//! scalar block decoders are the reference the fused dot products (matmul.rs) and GPU kernels
//! are checked against.

mod float;
mod fp4;
mod iq_grids;
mod iq_quants;
mod k_quants;
mod legacy;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod matmul_avx2;
mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_avx2;
#[cfg(target_arch = "x86_64")]
mod packed_avx512;
#[cfg(target_arch = "aarch64")]
mod packed_neon;
pub mod pool;
mod ternary;
mod types;

pub use matmul::{matmul, matmul_reference};
pub(crate) use matmul::fdot;
pub use packed::{can_pack, PackedMatrix};
pub use pool::ThreadPool;
pub use types::GgmlType;

use rayon::prelude::*;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantError {
    #[error("tensor type {0} cannot be dequantized by ferrite")]
    Unsupported(GgmlType),
    #[error("{ty}: {n_elems} elements is not a whole number of {block_elems}-element blocks")]
    PartialBlock { ty: GgmlType, n_elems: usize, block_elems: usize },
    #[error("{ty}: {n_elems} elements need {expected_bytes} bytes, got {got_bytes}")]
    SizeMismatch { ty: GgmlType, n_elems: usize, expected_bytes: usize, got_bytes: usize },
    #[error("matmul: {what} has {got_elems} elements, expected {expected_elems}")]
    BadShape { what: &'static str, expected_elems: usize, got_elems: usize },
}

/// Checks that `data` holds exactly `n_elems` elements of `ty`; returns the number of blocks.
pub fn check_len(ty: GgmlType, data_bytes: usize, n_elems: usize) -> Result<usize, QuantError> {
    let block_elems = ty.block_elems();
    if !n_elems.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock { ty, n_elems, block_elems });
    }
    let n_blocks = n_elems / block_elems;
    // Saturates: an impossible size then reads as a mismatch instead of wrapping around.
    let expected_bytes = n_blocks.saturating_mul(ty.block_bytes());
    if expected_bytes != data_bytes {
        return Err(QuantError::SizeMismatch { ty, n_elems, expected_bytes, got_bytes: data_bytes });
    }
    Ok(n_blocks)
}

/// Whether [`widen_to_q8_0`] takes `ty`: Q4_0, Q5_0 and Q8_0, whose values Q8_0 holds exactly.
pub fn widens_to_q8_0(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0)
}

/// `data` (`n_elems` elements of `ty`: Q4_0, Q5_0 or Q8_0) as Q8_0 blocks of the same values,
/// every element dequantizing to the same float ([`legacy::widen_block_to_q8_0`]); other types
/// are an error. A backend that runs projections taking the same input as one launch of one type
/// loads a group of these types so (`Backend::group_type`).
pub fn widen_to_q8_0(ty: GgmlType, data: &[u8], n_elems: usize) -> Result<Vec<u8>, QuantError> {
    if !widens_to_q8_0(ty) {
        return Err(QuantError::Unsupported(ty));
    }
    let n_blocks = check_len(ty, data.len(), n_elems)?;
    let out_bytes = GgmlType::Q8_0.block_bytes();
    let mut out = vec![0u8; n_blocks * out_bytes];
    for (b, o) in data.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(out_bytes)) {
        legacy::widen_block_to_q8_0(ty, b, o);
    }
    Ok(out)
}

/// The decoder of one block of `ty`, or `None` where ferrite has none (Q8_1, Q8_K, Q1_0, the
/// integer types and F64: gguf-py does not dequantize those either).
pub(crate) fn block_decoder(ty: GgmlType) -> Option<fn(&[u8], &mut [f32])> {
    use GgmlType::*;
    Some(match ty {
        F32 => float::f32_block,
        F16 => float::f16_block,
        BF16 => float::bf16_block,
        Q4_0 => legacy::q4_0_block,
        Q4_1 => legacy::q4_1_block,
        Q5_0 => legacy::q5_0_block,
        Q5_1 => legacy::q5_1_block,
        Q8_0 => legacy::q8_0_block,
        Q2_K => k_quants::q2_k_block,
        Q3_K => k_quants::q3_k_block,
        Q4_K => k_quants::q4_k_block,
        Q5_K => k_quants::q5_k_block,
        Q6_K => k_quants::q6_k_block,
        IQ2_XXS => iq_quants::iq2_xxs_block,
        IQ2_XS => iq_quants::iq2_xs_block,
        IQ2_S => iq_quants::iq2_s_block,
        IQ3_XXS => iq_quants::iq3_xxs_block,
        IQ3_S => iq_quants::iq3_s_block,
        IQ1_S => iq_quants::iq1_s_block,
        IQ1_M => iq_quants::iq1_m_block,
        IQ4_NL => iq_quants::iq4_nl_block,
        IQ4_XS => iq_quants::iq4_xs_block,
        TQ1_0 => ternary::tq1_0_block,
        TQ2_0 => ternary::tq2_0_block,
        MXFP4 => fp4::mxfp4_block,
        NVFP4 => fp4::nvfp4_block,
        Q8_1 | Q8_K | Q1_0 | I8 | I16 | I32 | I64 | F64 => return None,
    })
}

/// Whether `dequantize` accepts `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    block_decoder(ty).is_some()
}

/// Elements per parallel task: big enough that rayon's per-task cost is noise, small enough
/// that a 896-wide row or a few K-blocks still split across cores.
const CHUNK_ELEMS: usize = 16 * 1024;

/// Dequantizes `data` (whole blocks of `ty`) into `out`, one float per element.
/// `out.len()` is the element count. Parallel over chunks of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType::*;
    if block_decoder(ty).is_none() {
        return Err(QuantError::Unsupported(ty));
    }
    check_len(ty, data.len(), out.len())?;
    // Each arm instantiates the chunk loop for one concrete decoder, so the decoder inlines
    // into it (and into its AVX2 build); a function pointer would block both.
    macro_rules! run {
        ($decode:path) => {
            decode_all(ty, data, out, $decode)
        };
    }
    match ty {
        F32 => run!(float::f32_block),
        F16 => run!(float::f16_block),
        BF16 => run!(float::bf16_block),
        Q4_0 => run!(legacy::q4_0_block),
        Q4_1 => run!(legacy::q4_1_block),
        Q5_0 => run!(legacy::q5_0_block),
        Q5_1 => run!(legacy::q5_1_block),
        Q8_0 => run!(legacy::q8_0_block),
        Q2_K => run!(k_quants::q2_k_block),
        Q3_K => run!(k_quants::q3_k_block),
        Q4_K => run!(k_quants::q4_k_block),
        Q5_K => run!(k_quants::q5_k_block),
        Q6_K => run!(k_quants::q6_k_block),
        IQ2_XXS => run!(iq_quants::iq2_xxs_block),
        IQ2_XS => run!(iq_quants::iq2_xs_block),
        IQ2_S => run!(iq_quants::iq2_s_block),
        IQ3_XXS => run!(iq_quants::iq3_xxs_block),
        IQ3_S => run!(iq_quants::iq3_s_block),
        IQ1_S => run!(iq_quants::iq1_s_block),
        IQ1_M => run!(iq_quants::iq1_m_block),
        IQ4_NL => run!(iq_quants::iq4_nl_block),
        IQ4_XS => run!(iq_quants::iq4_xs_block),
        TQ1_0 => run!(ternary::tq1_0_block),
        TQ2_0 => run!(ternary::tq2_0_block),
        MXFP4 => run!(fp4::mxfp4_block),
        NVFP4 => run!(fp4::nvfp4_block),
        Q8_1 | Q8_K | Q1_0 | I8 | I16 | I32 | I64 | F64 => return Err(QuantError::Unsupported(ty)),
    }
    Ok(())
}

/// Decodes consecutive blocks. Single-element "blocks" (F32/F16/BF16): the decoder loops over
/// the whole chunk itself.
#[inline(always)]
fn decode_chunk<F: Fn(&[u8], &mut [f32])>(decode: F, block_bytes: usize, block_elems: usize, bytes: &[u8], vals: &mut [f32]) {
    if block_elems == 1 {
        return decode(bytes, vals);
    }
    for (b, o) in bytes.chunks_exact(block_bytes).zip(vals.chunks_exact_mut(block_elems)) {
        decode(b, o);
    }
}

/// The same loop compiled with AVX2 enabled: the scalar block decoders inline into it and
/// vectorize 256 bits wide. Identical arithmetic (no FMA contraction in Rust), identical bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_chunk_avx2<F: Fn(&[u8], &mut [f32])>(
    decode: F,
    block_bytes: usize,
    block_elems: usize,
    bytes: &[u8],
    vals: &mut [f32],
) {
    decode_chunk(decode, block_bytes, block_elems, bytes, vals)
}

fn decode_all<F: Fn(&[u8], &mut [f32]) + Sync + Copy>(ty: GgmlType, data: &[u8], out: &mut [f32], decode: F) {
    let (block_bytes, block_elems) = (ty.block_bytes(), ty.block_elems());
    #[cfg(target_arch = "x86_64")]
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    let run = |bytes: &[u8], vals: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU features were detected just above.
            return unsafe { decode_chunk_avx2(decode, block_bytes, block_elems, bytes, vals) };
        }
        decode_chunk(decode, block_bytes, block_elems, bytes, vals)
    };
    let chunk_blocks = (CHUNK_ELEMS / block_elems).max(1);
    if out.len() <= CHUNK_ELEMS {
        run(data, out);
    } else {
        data.par_chunks(chunk_blocks * block_bytes)
            .zip(out.par_chunks_mut(chunk_blocks * block_elems))
            .for_each(|(bytes, vals)| run(bytes, vals));
    }
}

/// The little-endian f16 at byte `at` of a block, widened.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Bytes of one row of `n_cols` elements of `ty`.
pub fn row_bytes(ty: GgmlType, n_cols: usize) -> Result<usize, QuantError> {
    let block_elems = ty.block_elems();
    if !n_cols.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock { ty, n_elems: n_cols, block_elems });
    }
    Ok(n_cols / block_elems * ty.block_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG dependency.
    pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn q4_0_and_q5_0_widen_to_q8_0_blocks_of_the_same_values() {
        for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0] {
            let n_elems = 64 * ty.block_elems();
            let data = random_bytes(64 * ty.block_bytes(), 7 + ty as u64);
            let wide = widen_to_q8_0(ty, &data, n_elems).unwrap();
            let (mut a, mut b) = (vec![0f32; n_elems], vec![0f32; n_elems]);
            dequantize(ty, &data, &mut a).unwrap();
            dequantize(GgmlType::Q8_0, &wide, &mut b).unwrap();
            // Bit for bit, NaN scales included (random bytes make some).
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{ty}");
        }
        assert!(matches!(widen_to_q8_0(GgmlType::Q4_1, &[0; 20], 32), Err(QuantError::Unsupported(GgmlType::Q4_1))));
        assert!(matches!(widen_to_q8_0(GgmlType::Q5_0, &[0; 21], 32), Err(QuantError::SizeMismatch { .. })));
    }

    #[test]
    fn unsupported_types_error_instead_of_zeros() {
        for ty in GgmlType::ALL {
            let bytes = vec![1u8; ty.block_bytes() * 2];
            let mut out = vec![0f32; ty.block_elems() * 2];
            match dequantize(ty, &bytes, &mut out) {
                Ok(()) => assert!(can_dequantize(ty)),
                Err(QuantError::Unsupported(t)) => {
                    assert_eq!(t, ty);
                    assert!(!can_dequantize(ty));
                    assert!(QuantError::Unsupported(t).to_string().contains(ty.name()));
                }
                Err(e) => panic!("{ty}: unexpected {e}"),
            }
        }
        let unsupported: Vec<_> = GgmlType::ALL.into_iter().filter(|t| !can_dequantize(*t)).collect();
        use GgmlType::*;
        assert_eq!(unsupported, vec![Q8_1, Q8_K, I8, I16, I32, I64, F64, Q1_0]);
    }

    #[test]
    fn partial_blocks_and_wrong_sizes_are_errors() {
        let mut out = vec![0f32; 300];
        let err = dequantize(GgmlType::Q4_K, &[0u8; 144], &mut out).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { block_elems: 256, .. }), "{err}");
        let mut out = vec![0f32; 256];
        let err = dequantize(GgmlType::Q4_K, &[0u8; 143], &mut out).unwrap_err();
        assert!(matches!(err, QuantError::SizeMismatch { expected_bytes: 144, got_bytes: 143, .. }), "{err}");
        assert!(row_bytes(GgmlType::Q5_0, 33).is_err());
        assert_eq!(row_bytes(GgmlType::Q5_0, 896).unwrap(), 28 * 22);
    }

    #[test]
    fn parallel_chunks_match_block_by_block_decoding() {
        // More elements than one chunk, and a count that leaves a short last chunk.
        for ty in [GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::F16, GgmlType::IQ2_XS] {
            let n_blocks = CHUNK_ELEMS / ty.block_elems() * 3 + 5;
            let mut bytes = random_bytes(n_blocks * ty.block_bytes(), 7);
            // Keep f16 scales finite so NaN != NaN cannot confuse the comparison.
            if ty == GgmlType::F16 {
                for c in bytes.chunks_exact_mut(2) {
                    c[1] &= 0x3B;
                }
            } else {
                for c in bytes.chunks_exact_mut(ty.block_bytes()) {
                    c[0..4].copy_from_slice(&[0x00, 0x2C, 0x00, 0x2C]);
                }
            }
            let mut whole = vec![0f32; n_blocks * ty.block_elems()];
            dequantize(ty, &bytes, &mut whole).unwrap();
            let decode = block_decoder(ty).unwrap();
            let mut one = vec![0f32; ty.block_elems()];
            for (i, b) in bytes.chunks_exact(ty.block_bytes()).enumerate() {
                decode(b, &mut one);
                assert_eq!(&whole[i * one.len()..(i + 1) * one.len()], &one[..], "{ty} block {i}");
            }
            assert!(whole.iter().any(|v| *v != 0.0));
        }
    }
}
