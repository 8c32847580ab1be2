//! ggml block formats: dequantization of every GGUF tensor type, and the row dot products the
//! CPU backend uses.
//!
//! One module per block family; the scalar code here is the reference that SIMD and GPU versions
//! are checked against.

mod types;

pub use types::GgmlType;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QuantError {
    #[error("tensor type {0} cannot be dequantized by ferrite")]
    Unsupported(GgmlType),
    #[error("{ty}: {n_elems} elements is not a whole number of {block_elems}-element blocks")]
    PartialBlock { ty: GgmlType, n_elems: usize, block_elems: usize },
    #[error("{ty}: {n_elems} elements need {expected_bytes} bytes, got {got_bytes}")]
    SizeMismatch { ty: GgmlType, n_elems: usize, expected_bytes: usize, got_bytes: usize },
}

/// Checks that `data` holds exactly `n_elems` elements of `ty`; returns the number of blocks.
pub fn check_len(ty: GgmlType, data_bytes: usize, n_elems: usize) -> Result<usize, QuantError> {
    let block_elems = ty.block_elems();
    if n_elems % block_elems != 0 {
        return Err(QuantError::PartialBlock { ty, n_elems, block_elems });
    }
    let n_blocks = n_elems / block_elems;
    let expected_bytes = n_blocks * ty.block_bytes();
    if expected_bytes != data_bytes {
        return Err(QuantError::SizeMismatch { ty, n_elems, expected_bytes, got_bytes: data_bytes });
    }
    Ok(n_blocks)
}

/// Dequantizes `data` (whole blocks of `ty`) into `out`, one float per element.
/// `out.len()` is the element count. Parallel over chunks of blocks.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, data.len(), out.len())?;
    match ty {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
        // Filled in by the block-format modules.
        other => Err(QuantError::Unsupported(other)),
    }
}

/// Bytes of one row of `n_cols` elements of `ty`.
pub fn row_bytes(ty: GgmlType, n_cols: usize) -> Result<usize, QuantError> {
    let block_elems = ty.block_elems();
    if n_cols % block_elems != 0 {
        return Err(QuantError::PartialBlock { ty, n_elems: n_cols, block_elems });
    }
    Ok(n_cols / block_elems * ty.block_bytes())
}

/// `out[t * n_rows + r] = Σ_c w[r, c] · x[t * n_cols + c]`: a quantized weight of `n_rows` rows
/// by `n_cols` columns (GGUF dims `[n_cols, n_rows]`) times `n_tokens` activation rows.
/// Parallel over weight rows.
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    use rayon::prelude::*;
    let row_len_bytes = row_bytes(ty, n_cols)?;
    check_len(ty, w.len(), n_rows * n_cols)?;
    assert_eq!(x.len(), n_tokens * n_cols, "activations must be n_tokens x n_cols");
    assert_eq!(out.len(), n_tokens * n_rows, "output must be n_tokens x n_rows");
    // Reference path: dequantize each row once, dot it with every token.
    let mut by_row = vec![0f32; n_rows * n_tokens];
    by_row.par_chunks_mut(n_tokens).enumerate().try_for_each_init(
        || vec![0f32; n_cols],
        |row, (r, out_r)| {
            dequantize(ty, &w[r * row_len_bytes..(r + 1) * row_len_bytes], row)?;
            for (t, o) in out_r.iter_mut().enumerate() {
                *o = row.iter().zip(&x[t * n_cols..(t + 1) * n_cols]).map(|(a, b)| a * b).sum();
            }
            Ok::<(), QuantError>(())
        },
    )?;
    for r in 0..n_rows {
        for t in 0..n_tokens {
            out[t * n_rows + r] = by_row[r * n_tokens + t];
        }
    }
    Ok(())
}
