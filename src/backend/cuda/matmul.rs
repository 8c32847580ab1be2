//! Projections on the GPU: `out[t][r] = Σ_c W[r][c] · x[t][c] (+ bias[r])` with W in its GGUF
//! blocks.
//!
//! * Up to `MATVEC_MAX_ROWS` rows of x (decode: one row per sequence): matrix-vector kernels that
//!   read each weight byte once and dequantize in registers (`matvec.rs`: the tensor-core kernels
//!   on repacked Q5_0/Q8_0/Q4_K/Q6_K tiles, matvec.cu on the file's blocks for the other types).
//!   This is the bandwidth-bound case the speed of generation depends on.
//! * More rows (prefill, large batches): W is dequantized to float32 (the bit-exact kernels of
//!   `dequant.cu`) a chunk of rows at a time into a scratch buffer, and cuBLAS multiplies in
//!   float32 (no TF32), so the result is the CPU's `matmul_reference` up to summation order.
//!   Prefill is compute-bound, so the extra pass over the weight is a small part of it.

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, PushKernelArg};

use super::backend::{addr, grid_stride, launch, CudaAct, CudaBackend, CudaWeight};
use super::dequant::dequantize_into;
use super::error::CudaError;
use super::kernels::MATVEC_MAX_ROWS;
use super::matvec::{dequant_tile_rows, launch_matvec, Layout, MatvecArgs};
use crate::backend::BackendError;

/// Most float32 elements of dequantized weight rows held at once (128 MiB): bounds the scratch
/// buffer whatever the matrix (the 151936 x 896 LM head goes in 5 chunks).
pub const SCRATCH_MAX_ELEMS: usize = 32 << 20;

pub(super) fn matmul(
    be: &mut CudaBackend,
    w: &CudaWeight,
    bias: Option<&CudaSlice<f32>>,
    x: &CudaAct,
    n_x: usize,
    out: &mut CudaAct,
) -> Result<(), BackendError> {
    let direct = n_x <= MATVEC_MAX_ROWS && w.n_cols % 32 == 0;
    if direct {
        matvec(be, w, bias, x, n_x, out)
    } else {
        dequant_gemm(be, w, bias, x, n_x, out)
    }
}

fn matvec(be: &mut CudaBackend, w: &CudaWeight, bias: Option<&CudaSlice<f32>>, x: &CudaAct, n_x: usize, out: &mut CudaAct) -> Result<(), BackendError> {
    let kernels = w.kernels.as_ref().ok_or_else(|| BackendError::Invalid(format!("{}: a vector cannot be multiplied", w.name)))?;
    let bias = bias.map_or(0, |b| addr(b, &be.ctx));
    let args = MatvecArgs {
        name: &w.name,
        ty: w.ty,
        n_rows: w.n_rows,
        n_cols: w.n_cols,
        layout: w.layout,
        weights: w.blocks.slice(..),
        x: &x.buf,
        n_x,
        bias,
        out: &mut out.buf,
    };
    launch_matvec(&be.ctx, kernels, args)?;
    Ok(())
}

fn dequant_gemm(be: &mut CudaBackend, w: &CudaWeight, bias: Option<&CudaSlice<f32>>, x: &CudaAct, n_x: usize, out: &mut CudaAct) -> Result<(), BackendError> {
    let (n_cols, n_rows) = (w.n_cols, w.n_rows);
    if n_rows == 0 || n_cols == 0 {
        return Ok(());
    }
    let too_big = |what: &str, v: usize| BackendError::Invalid(format!("{}: {what} {v} exceeds cuBLAS's 32-bit sizes", w.name));
    let as_i32 = |what: &str, v: usize| i32::try_from(v).map_err(|_| too_big(what, v));
    let chunk_rows = (SCRATCH_MAX_ELEMS / n_cols.max(1)).clamp(1, n_rows);
    let scratch_elems = chunk_rows * n_cols;
    if be.scratch.as_ref().map_or(true, |s| s.len() < scratch_elems) {
        be.scratch = None;
        be.scratch = Some(be.ctx.alloc::<f32>(scratch_elems, "dequantized weight rows for cuBLAS")?);
    }
    // cuBLAS is bound to the context's stream; the context must be current on this thread
    // (Python may call from any thread).
    be.ctx.raw().bind_to_thread().map_err(|e| CudaError::Driver { op: "binding the CUDA context".into(), msg: super::error::describe(&e) })?;
    let Some(scratch) = be.scratch.as_mut() else { unreachable!("allocated above") };
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = chunk_rows.min(n_rows - r0);
        let elems = rows * n_cols;
        match (w.layout, w.kernels.as_ref()) {
            (Layout::Tiles(grid), Some(kernels)) => dequant_tile_rows(&be.ctx, kernels, &grid, &w.blocks.slice(..), r0, rows, &mut scratch.slice_mut(..elems))?,
            _ => {
                let src = w.blocks.slice(r0 * w.row_bytes..(r0 + rows) * w.row_bytes);
                dequantize_into(&be.ctx, w.ty, &src, elems, &mut scratch.slice_mut(..elems))?;
            }
        }
        // Column-major view: scratch is W_chunk^T (k x m, ld k), x is X^T (k x n, ld k) and
        // out + r0 is the m x n block of OUT^T (ld n_rows): OUT^T[r][t] = Σ_c W[r][c] X[t][c].
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: as_i32("rows", rows)?,
            n: as_i32("tokens", n_x)?,
            k: as_i32("columns", n_cols)?,
            alpha: 1.0f32,
            lda: as_i32("columns", n_cols)?,
            ldb: as_i32("columns", n_cols)?,
            beta: 0.0f32,
            ldc: as_i32("rows", n_rows)?,
        };
        let a = scratch.slice(..elems);
        let b = x.buf.slice(..n_x * n_cols);
        let mut c = out.buf.slice_mut(r0..n_x * n_rows);
        // SAFETY: a holds rows x n_cols, b n_x x n_cols, and c from r0 spans
        // (n_x - 1) * n_rows + rows elements, all within the views (sizes checked by the caller).
        unsafe { be.blas.gemm(cfg, &a, &b, &mut c) }
            .map_err(|e| CudaError::Driver { op: format!("cublasSgemm for {} ({rows} x {n_cols} by {n_x} rows)", w.name), msg: format!("{e:?}") })?;
        r0 += rows;
    }
    if let Some(b) = bias {
        let n = (n_x * n_rows) as u64;
        let width = n_rows as u32;
        launch!(be.ctx, &be.fixed.add_bias, "add_bias", grid_stride(n), &mut out.buf, b, &width, &n)?;
    }
    Ok(())
}
