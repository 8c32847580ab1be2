//! Projections on the GPU: `out[t][r] = Σ_c W[r][c] · x[t][c] (+ bias[r])` with W in its GGUF
//! blocks.
//!
//! * Up to `MATVEC_MAX_ROWS` rows of x (decode: one row per sequence): matrix-vector kernels that
//!   read each weight byte once and dequantize in registers (`matvec.rs`: the tensor-core kernels
//!   on repacked Q5_0/Q8_0/Q4_K/Q6_K tiles, matvec.cu on the file's blocks for the other types).
//!   This is the bandwidth-bound case the speed of generation depends on.
//! * More rows (prefill, large batches): W is dequantized to float32 (the bit-exact kernels of
//!   `dequant.cu`) and cuBLAS multiplies in float32 (no TF32), so the result is the CPU's
//!   `matmul_reference` up to summation order. The float32 copy is made once and kept on the
//!   device when there is room (`resident_f32`: 4 bytes a weight, 2 GB for a 0.5B model), since
//!   re-dequantizing every weight at every step of a large batch costs as much as the multiply;
//!   otherwise a chunk of rows at a time goes through a bounded scratch buffer.

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaViewMut, PushKernelArg};

use super::backend::{addr, grid_stride, launch, CudaAct, CudaBackend, CudaWeight};
use super::context::CudaContext;
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

/// Device memory that must stay free after a resident float32 weight is made (auto policy): a
/// quarter of the device, for the KV cache, activations and other models.
const RESIDENT_KEEP_FREE_FRACTION: usize = 4;

/// Whether to keep float32 copies of the weights on the device: FERRITE_CUDA_F32_WEIGHTS=0
/// never, =1 whenever the allocation succeeds, unset while a quarter of the device stays free.
fn resident_allowed(be: &CudaBackend, bytes: usize) -> bool {
    match std::env::var("FERRITE_CUDA_F32_WEIGHTS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => be.ctx.mem_info().is_ok_and(|(free, total)| free >= bytes.saturating_add(total / RESIDENT_KEEP_FREE_FRACTION)),
    }
}

/// Rows `r0..r0 + rows` of `w` dequantized to float32 into `out`, from its tiles or its blocks.
fn dequant_rows(ctx: &CudaContext, w: &CudaWeight, r0: usize, rows: usize, out: &mut CudaViewMut<'_, f32>) -> Result<(), BackendError> {
    match (w.layout, w.kernels.as_ref()) {
        (Layout::Tiles(grid), Some(kernels)) => dequant_tile_rows(ctx, kernels, &grid, &w.blocks.slice(..), r0, rows, out)?,
        _ => {
            let src = w.blocks.slice(r0 * w.row_bytes..(r0 + rows) * w.row_bytes);
            dequantize_into(ctx, w.ty, &src, rows * w.n_cols, out)?;
        }
    }
    Ok(())
}

/// The weight's resident float32 copy, made now if this is its first large multiply and the
/// device has room; `None` when it stays quantized only.
fn resident_f32<'w>(be: &CudaBackend, w: &'w CudaWeight) -> Result<Option<&'w CudaSlice<f32>>, BackendError> {
    if let Some(made) = w.resident_f32.get() {
        return Ok(made.as_ref());
    }
    let elems = w.n_rows * w.n_cols;
    let made = if resident_allowed(be, elems * std::mem::size_of::<f32>()) {
        match be.ctx.alloc::<f32>(elems, &format!("the float32 copy of {}", w.name)) {
            Ok(mut full) => {
                dequant_rows(&be.ctx, w, 0, w.n_rows, &mut full.slice_mut(..))?;
                Some(full)
            }
            // No room after all (another model, fragmentation): the scratch path still works.
            Err(CudaError::OutOfMemory { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    // Only this thread reaches the weight (the backend is behind `&mut`), so the set succeeds.
    let _ = w.resident_f32.set(made);
    Ok(w.resident_f32.get().and_then(Option::as_ref))
}

fn dequant_gemm(be: &mut CudaBackend, w: &CudaWeight, bias: Option<&CudaSlice<f32>>, x: &CudaAct, n_x: usize, out: &mut CudaAct) -> Result<(), BackendError> {
    let (n_cols, n_rows) = (w.n_cols, w.n_rows);
    if n_rows == 0 || n_cols == 0 {
        return Ok(());
    }
    let too_big = |what: &str, v: usize| BackendError::Invalid(format!("{}: {what} {v} exceeds cuBLAS's 32-bit sizes", w.name));
    let as_i32 = |what: &str, v: usize| i32::try_from(v).map_err(|_| too_big(what, v));
    let resident = resident_f32(be, w)?;
    let chunk_rows = if resident.is_some() { n_rows } else { (SCRATCH_MAX_ELEMS / n_cols.max(1)).clamp(1, n_rows) };
    let scratch_elems = chunk_rows * n_cols;
    if resident.is_none() && be.scratch.as_ref().map_or(true, |s| s.len() < scratch_elems) {
        be.scratch = None;
        be.scratch = Some(be.ctx.alloc::<f32>(scratch_elems, "dequantized weight rows for cuBLAS")?);
    }
    // cuBLAS is bound to the context's stream; the context must be current on this thread
    // (Python may call from any thread).
    be.ctx.raw().bind_to_thread().map_err(|e| CudaError::Driver { op: "binding the CUDA context".into(), msg: super::error::describe(&e) })?;
    let mut r0 = 0;
    while r0 < n_rows {
        let rows = chunk_rows.min(n_rows - r0);
        let elems = rows * n_cols;
        let a = match resident {
            Some(full) => full.slice(..elems),
            None => {
                let Some(scratch) = be.scratch.as_mut() else { unreachable!("allocated above") };
                dequant_rows(&be.ctx, w, r0, rows, &mut scratch.slice_mut(..elems))?;
                scratch.slice(..elems)
            }
        };
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
