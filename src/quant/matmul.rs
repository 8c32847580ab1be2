//! `matmul`: quantized weight matrix times f32 activations, the CPU backend's projection.

use rayon::prelude::*;

use super::{check_len, dequantize, row_bytes, GgmlType, QuantError};

/// `out[t * n_rows + r] = Σ_c w[r, c] · x[t * n_cols + c]`: a quantized weight of `n_rows` rows
/// by `n_cols` columns (GGUF dims `[n_cols, n_rows]`) times `n_tokens` activation rows.
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_reference(ty, w, n_rows, n_cols, x, n_tokens, out)
}

/// The oracle for `matmul`: dequantize each weight row to f32, dot it with every token in f32.
/// Same contract as `matmul`.
pub fn matmul_reference(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let row_len_bytes = row_bytes(ty, n_cols)?;
    check_len(ty, w.len(), n_rows * n_cols)?;
    assert_eq!(x.len(), n_tokens * n_cols, "activations must be n_tokens x n_cols");
    assert_eq!(out.len(), n_tokens * n_rows, "output must be n_tokens x n_rows");
    let mut by_row = vec![0f32; n_rows * n_tokens];
    by_row.par_chunks_mut(n_tokens.max(1)).enumerate().try_for_each_init(
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
