//! Projections on the GPU: `out[t][r] = Σ_c W[r][c] · x[t][c] (+ bias[r])` with W in its GGUF
//! blocks.
//!
//! * Up to 4 rows of x, 2 with `exact_matmul` (decode of a few sequences; up to 8 for a wide
//!   model's weights and a huge LM head: see `takes_matvec`): matrix-vector kernels that read each weight byte once and dequantize in
//!   registers (`matvec.rs`: the tensor-core kernels on repacked Q5_0/Q8_0/Q4_K/Q6_K tiles,
//!   matvec.cu on the file's blocks for the other types).
//!   This is the bandwidth-bound case the speed of generation depends on.
//! * More rows (prefill, large batches): W is dequantized (the bit-exact kernels of `dequant.cu`)
//!   and cuBLAS multiplies it. A copy is made once and kept on the device when there is room
//!   (`resident`), since re-dequantizing every weight at every step of a large batch costs as
//!   much as the multiply: by default f16 (2 bytes a weight, scaled into f16's range) multiplied
//!   with f16 activations and float32 sums; with `exact_matmul`, float32 in float32, the CPU's
//!   `matmul_reference` up to summation order (see `GemmPrecision`). Without room, a chunk of
//!   rows at a time goes through a bounded float32 scratch buffer.

use cudarc::cublas::{sys::cublasOperation_t, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaViewMut};

use super::backend::{addr, grid_stride, launch, CudaAct, CudaBackend, CudaWeight, FixedKernels, GemmPrecision};
use super::context::CudaContext;
use super::dequant::dequantize_into;
use super::error::CudaError;
use super::kernels::MATVEC_MAX_ROWS;
use super::matmul_mma::{launch_matmul_mma, MmqArgs, MMQ_MAX_ROWS};
use super::matvec::{dequant_tile_rows, launch_matvec, launch_matvec_pair, launch_matvecs, Input, Layout, MatvecArgs, MAX_SEGMENTS};
use crate::backend::BackendError;

/// Most float32 elements of dequantized weight rows held at once (128 MiB): bounds the scratch
/// buffer whatever the matrix (the 151936 x 896 LM head goes in 5 chunks).
pub const SCRATCH_MAX_ELEMS: usize = 32 << 20;

/// Rows of x up to which every projection takes the matrix-vector kernels. The kernels take up to
/// `MATVEC_MAX_ROWS` (8), but from 5 rows the f16 GEMM on the resident copies is faster, since q/k/v
/// (and small gate/up pairs) became one stacked GEMM and the batch path's RMSNorm one read of its
/// row. A decode step of 8 sequences, H200, 2026-12-04 (docs/results/h200-2026-12-04b/matvec_rows.txt):
/// the 0.5B shapes 1.401 ms with 5-8 rows on the kernels against 1.076 on cuBLAS (6 sequences: 1.322
/// against 1.079; until then their small weights had stayed on the kernels up to 8 rows: 1.58
/// against 1.77 ms on 2026-12-03); Qwen2.5-7B's shapes had gone to cuBLAS from 5 rows already
/// (5.87-5.96 ms against 6.88 on the kernels, 2026-12-03). At 3-4 rows the kernels stay ahead:
/// 1.047 / 4.384 ms at 4 sequences (0.5B / 7B) against 1.085 / 4.712 on cuBLAS.
const MATVEC_PREFERRED_MAX_ROWS: usize = 4;

/// Weights of at most this many elements (16 MiB as f16) are small: a GEMM of their own is bound
/// by its launch and reduction, not by their bytes, so they stack with the other projections of
/// their x (`stacks`).
const STACK_SMALL_WEIGHT_ELEMS: usize = 8 << 20;

/// `FERRITE_CUDA_MATVEC_MAX_ROWS=N`: every weight takes the matrix-vector kernels up to N rows
/// (0 sends every multiply to cuBLAS, 8 keeps the kernels up to their limit), to compare the two
/// paths on a batch size. Unset: `MATVEC_PREFERRED_MAX_ROWS`.
fn forced_max_rows() -> Option<usize> {
    static ROWS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *ROWS.get_or_init(|| std::env::var("FERRITE_CUDA_MATVEC_MAX_ROWS").ok().and_then(|v| v.parse().ok()).map(|n: usize| n.min(MATVEC_MAX_ROWS)))
}

/// Rows of x up to which the matrix-vector kernels keep x exactly (three bf16 parts) or to
/// about 2^-24 of each tile's largest value (three int8 parts; see matvec_mma.cu); from 3 rows
/// they keep two bf16 parts, 16 significand bits, or two int8 parts, about 2^-16 of the tile's
/// largest value (the types whose `repack::TileFormat::int8_max_rows` say so). With
/// `exact_matmul` (`GemmPrecision::F32`) more rows go to the float32 GEMM instead, so that the
/// same sequence gives the same logits (within float32 rounding) whatever the batch around it:
/// with 5-8 rows on the kernels' two parts, a greedy continuation generated beside nine others
/// (with preemption and prefix reuse) drifted more than 1e-4 in logprob from the same prompt
/// alone (test_gpu_prefix_reuse_and_preemption, H200, 2026-12-03).
const MATVEC_EXACT_MAX_ROWS: usize = 2;

/// Rows of x up to which every projection takes the matrix-vector kernels (more may go to
/// cuBLAS). `exact`: the float32 GEMM precision is asked for (`MATVEC_EXACT_MAX_ROWS`).
pub(super) fn matvec_max_rows(exact: bool) -> usize {
    let rows = forced_max_rows().unwrap_or(MATVEC_PREFERRED_MAX_ROWS);
    if exact {
        rows.min(MATVEC_EXACT_MAX_ROWS)
    } else {
        rows
    }
}

/// The hidden width from which a model is wide: a 7B's 3584 rather than a 0.5B's 896. Its
/// weights are large enough that rows cost the matrix-vector kernels little next to their bytes,
/// which cuBLAS reads twice over as f16 (`MATVEC_WIDE_MAX_ROWS`). A rule by the model, not by the
/// weight: a weight's columns cannot tell (a 0.5B's ffn_down has 4864, a 7B's q 3584), and a
/// group projected together (q/k/v, gate/up) must take one path.
const MATVEC_WIDE_MIN_WIDTH: usize = 2048;

/// Rows of x up to which a wide model's weights (`MATVEC_WIDE_MIN_WIDTH`) take the
/// matrix-vector kernels, where others go to cuBLAS from `MATVEC_PREFERRED_MAX_ROWS`. H100,
/// 2026-12-05 (every weight on the kernels up to 6 rows): Qwen2.5-7B's shapes 6.58 -> 6.15 ms a
/// decode step of 6 sequences, the 0.5B's 1.03 -> 1.25, so the rule goes by the model. With the
/// rule (thirty-first session, two rounds), Qwen2.5-7B's shapes at 5 / 6 / 8 sequences: 6.54 /
/// 6.58 / 6.65 ms off, 6.05 / 6.13 / 6.65 to 6 rows, 6.05 / 6.14 / 6.45 to 8.
const MATVEC_WIDE_MAX_ROWS: usize = 8;

/// Elements from which a tiled weight is huge: a small model's LM head (the 0.5B's 136 M, a 1.5B's
/// 233 M), alone in its group and read as f16 by cuBLAS at twice its quantized bytes (272 MB
/// against 145 MB for the 0.5B's Q8_0). A 7B's MLP weights (68 M) are wide anyway.
const MATVEC_HUGE_MIN_ELEMS: usize = 1 << 25;

/// Rows of x up to which huge weights take the matrix-vector kernels
/// (`FERRITE_CUDA_MATVEC_HUGE_ROWS=N` sets it). H100, 2026-12-05, the 0.5B's shapes, two rounds:
/// a decode step of 6 / 8 sequences 1.011 / 1.033 ms with the LM head on cuBLAS's f16 copy, 0.999
/// / 1.018 with it on the kernels; 5 sequences 0.964-0.990 against 0.981-0.985 (within noise).
const MATVEC_HUGE_MAX_ROWS: usize = 8;

/// Whether `w` times `n_x` rows runs on the matrix-vector kernels ([`matvec_max_rows`] at the
/// backend's GEMM precision, or further as the backend's [`RowRules`] say for a wide model's
/// weights and huge weights; `FERRITE_CUDA_MATVEC_MAX_ROWS` and the float32 GEMM's
/// `MATVEC_EXACT_MAX_ROWS` override those).
pub(super) fn takes_matvec(be: &CudaBackend, w: &CudaWeight, n_x: usize) -> bool {
    let exact = be.gemm == GemmPrecision::F32;
    let tiled = matches!(w.layout, Layout::Tiles(_));
    let max_rows = be.row_rules.max_rows(matvec_max_rows(exact), exact, be.model_width(), w.n_rows.saturating_mul(w.n_cols), tiled);
    n_x > 0 && n_x <= max_rows && w.n_cols.is_multiple_of(32)
}

/// The rules that take some weights to the matrix-vector kernels beyond the rows every weight
/// takes them to ([`takes_matvec`]), apart from the device, so that they can be tested anywhere.
/// A backend reads them once, as it is made ([`RowRules::from_env`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct RowRules {
    /// A wide model's rows (`MATVEC_WIDE_MIN_WIDTH`).
    wide_rows: usize,
    /// A huge tiled weight's rows (`MATVEC_HUGE_MIN_ELEMS`).
    huge_rows: usize,
    /// `FERRITE_CUDA_MATVEC_MAX_ROWS` is set: it alone decides.
    forced: bool,
}

impl RowRules {
    /// `FERRITE_CUDA_MATVEC_WIDE_ROWS=N` and `FERRITE_CUDA_MATVEC_HUGE_ROWS=N`: a wide model's
    /// weights and huge weights take the kernels up to N rows (at most `MATVEC_MAX_ROWS`;
    /// `MATVEC_PREFERRED_MAX_ROWS` or less: no further than the others). Unset:
    /// `MATVEC_WIDE_MAX_ROWS` and `MATVEC_HUGE_MAX_ROWS`.
    pub(super) fn from_env() -> RowRules {
        let rows = |var: &str, default: usize| std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default).min(MATVEC_MAX_ROWS);
        RowRules {
            wide_rows: rows("FERRITE_CUDA_MATVEC_WIDE_ROWS", MATVEC_WIDE_MAX_ROWS),
            huge_rows: rows("FERRITE_CUDA_MATVEC_HUGE_ROWS", MATVEC_HUGE_MAX_ROWS),
            forced: forced_max_rows().is_some(),
        }
    }

    /// Rows up to which a weight of `elems` elements (`tiled` or not) in a model of hidden width
    /// `width` takes the kernels, where every weight takes them up to `rows`. `exact` (the float32
    /// GEMM) keeps `rows`.
    fn max_rows(self, rows: usize, exact: bool, width: usize, elems: usize, tiled: bool) -> usize {
        if exact || self.forced {
            return rows;
        }
        let mut max_rows = rows;
        if width >= MATVEC_WIDE_MIN_WIDTH {
            max_rows = max_rows.max(self.wide_rows);
        }
        // Tiled only: measured on a Q8_0 head, and an F16 head gains no bytes over cuBLAS's copy.
        if tiled && elems >= MATVEC_HUGE_MIN_ELEMS {
            max_rows = max_rows.max(self.huge_rows);
        }
        max_rows
    }
}

/// How a projection's result lands in its output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Overwrite,
    /// Added to what the buffer holds: the residual connection, without a launch of its own.
    Accumulate,
}

/// `x_f16`: the device address of `x` already converted to f16 for an earlier projection of the
/// same input, or `None` (set here when this call converts it).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    be: &mut CudaBackend,
    w: &CudaWeight,
    bias: Option<&CudaSlice<f32>>,
    x: &CudaAct,
    n_x: usize,
    out: &mut CudaAct,
    write: Write,
    x_f16: &mut Option<u64>,
) -> Result<(), BackendError> {
    if takes_matvec(be, w, n_x) {
        matvec(be, w, bias, x, n_x, out, write)
    } else if takes_gemm_mma(be, w, n_x)? {
        gemm_mma(be, w, bias, x, n_x, out, write, x_f16)
    } else {
        dequant_gemm(be, w, bias, x, n_x, out, write, x_f16)
    }
}

/// `FERRITE_CUDA_MMQ_MAX_ROWS=N`: every tiled weight multiplies up to N rows (beyond the
/// matrix-vector kernels) on the quantized GEMM (0: never); read when a backend is made. Unset:
/// only weights without an f16 copy take it (see [`takes_gemm_mma`]).
pub(super) fn forced_gemm_mma_rows() -> Option<usize> {
    std::env::var("FERRITE_CUDA_MMQ_MAX_ROWS").ok().and_then(|v| v.parse().ok()).map(|n: usize| n.min(MMQ_MAX_ROWS))
}

/// Whether `w` times `n_x` rows (more than a matrix-vector kernel takes) runs on the quantized
/// GEMM (matmul_mma.rs): a tiled weight at f16 precision (`exact_matmul` keeps the float32
/// GEMM), at most `MMQ_MAX_ROWS` rows, and by default only when the device had no room for the
/// weight's f16 copy (made here otherwise, as the cuBLAS path needs it). The copy is the faster
/// path where it fits (H200, 2026-12-03: a decode step of 64 sequences of Qwen2.5-7B's shapes
/// took 7.28 ms on cuBLAS's f16 GEMMs against 15.2 on this kernel); without it, the alternative
/// is dequantizing every weight to float32 at every step. `FERRITE_CUDA_MMQ_MAX_ROWS` overrides
/// the rule (`forced_gemm_mma_rows`).
pub(super) fn takes_gemm_mma(be: &mut CudaBackend, w: &CudaWeight, n_x: usize) -> Result<bool, BackendError> {
    if !gemm_mma_capable(be, w, n_x) {
        return Ok(false);
    }
    match be.gemm_mma_rows {
        Some(max) => Ok(n_x <= max),
        None => {
            bind_context(be)?;
            Ok(resident(be, w)?.is_none())
        }
    }
}

/// Whether the quantized GEMM can multiply `w` by `n_x` rows: a tiled weight at f16 precision, at
/// most `MMQ_MAX_ROWS` rows.
fn gemm_mma_capable(be: &CudaBackend, w: &CudaWeight, n_x: usize) -> bool {
    be.gemm == GemmPrecision::F16 && n_x <= MMQ_MAX_ROWS && matches!(w.layout, Layout::Tiles(_)) && w.kernels.as_ref().is_some_and(|k| k.tiled.is_some())
}

/// `out = w x (+ bias)` (or `+=`) on the quantized GEMM, x read as f16 (converted now unless
/// `x_f16` holds it already).
#[allow(clippy::too_many_arguments)]
fn gemm_mma(
    be: &mut CudaBackend,
    w: &CudaWeight,
    bias: Option<&CudaSlice<f32>>,
    x: &CudaAct,
    n_x: usize,
    out: &mut CudaAct,
    write: Write,
    x_f16: &mut Option<u64>,
) -> Result<(), BackendError> {
    let (Layout::Tiles(grid), Some(tiled)) = (w.layout, w.kernels.as_ref().and_then(|k| k.tiled.as_ref())) else {
        return Err(BackendError::Invalid(format!("{}: the quantized GEMM needs repacked tiles", w.name)));
    };
    let converted = x_f16_of(be, x, n_x * w.n_cols, x_f16)?;
    let args = MmqArgs {
        name: &w.name,
        grid,
        tiles: addr(&w.blocks, &be.ctx),
        x_f16: converted,
        n_x,
        bias: bias.map_or(0, |b| addr(b, &be.ctx)),
        out: addr(&out.buf, &be.ctx),
        out_scale: 1.0 / X_F16_SCALE,
        accumulate: write == Write::Accumulate,
    };
    launch_matmul_mma(&be.ctx, tiled, &args)?;
    Ok(())
}

/// Whether every one of `weights` multiplies `n_x` rows on the tiled matrix-vector kernels,
/// which can also normalize x or apply SwiGLU to it while loading it (`Input`).
pub(super) fn tiled_matvec(be: &CudaBackend, weights: &[&CudaWeight], n_x: usize) -> bool {
    weights.iter().all(|w| takes_matvec(be, w, n_x) && matches!(w.layout, Layout::Tiles(_)))
}

/// `out_i = w_i x (+ bias_i)` (or `+=`) for projections that all pass [`tiled_matvec`], `x`
/// taken as `input` says: the weights of one type in one launch (q and k, say, when v has
/// another type), at most `MAX_SEGMENTS` a launch.
pub(super) fn tiled_matvecs(
    be: &CudaBackend,
    projections: Vec<(&CudaWeight, Option<&CudaSlice<f32>>, &mut CudaAct)>,
    x: &CudaAct,
    n_x: usize,
    write: Write,
    input: Input,
) -> Result<(), BackendError> {
    if let Some(pair) = pair_kernels_for(be, projections.iter().map(|p| p.0), n_x) {
        let weights: Vec<&CudaWeight> = projections.iter().map(|(w, _, _)| *w).collect();
        let ahead = window_ahead(be, &weights);
        let args = projections.into_iter().map(|(w, bias, out)| matvec_args(be, w, bias, x, n_x, out, write)).collect();
        launch_matvec_pair(&be.ctx, &pair, args, input, ahead)?;
        return Ok(());
    }
    let mut rest = projections;
    while let Some((w0, _, _)) = rest.first() {
        let ty = w0.ty;
        let (mut group, others): (Vec<_>, Vec<_>) = rest.into_iter().partition(|(w, _, _)| w.ty == ty);
        rest = others;
        while !group.is_empty() {
            let take: Vec<_> = group.drain(..group.len().min(MAX_SEGMENTS)).collect();
            let kernels = take[0].0.kernels.clone().ok_or_else(|| BackendError::Invalid(format!("{}: a vector cannot be multiplied", take[0].0.name)))?;
            let weights: Vec<&CudaWeight> = take.iter().map(|(w, _, _)| *w).collect();
            let ahead = window_ahead(be, &weights);
            let parts = take.into_iter().map(|(w, bias, out)| matvec_args(be, w, bias, x, n_x, out, write)).collect();
            launch_matvecs(&be.ctx, &kernels, parts, input, ahead)?;
        }
    }
    Ok(())
}

/// The pair kernels that take `weights` (tiled, of two types that may share a launch: a 7B's Q4_K q
/// and k with a Q6_K v) as one launch at `n_x` rows, if any (`PairKernels::takes`).
fn pair_kernels_for<'w>(be: &CudaBackend, weights: impl ExactSizeIterator<Item = &'w CudaWeight>, n_x: usize) -> Option<std::sync::Arc<super::matvec::PairKernels>> {
    if be.pair_kernels.is_empty() {
        return None;
    }
    let n = weights.len();
    let parts: Vec<_> = weights.filter_map(|w| if let Layout::Tiles(g) = w.layout { Some((w.ty, g)) } else { None }).collect();
    (parts.len() == n).then(|| be.pair_kernels.values().find(|p| p.takes(&parts, n_x, be.pair_rows)).cloned()).flatten()
}

/// The window of the step's weights a matrix-vector launch of `weights` asks L2 for ahead
/// (`prefetch::PrefetchPlan::ahead_of`); none without a plan or for weights outside it.
fn window_ahead(be: &CudaBackend, weights: &[&CudaWeight]) -> super::prefetch::WindowArgs {
    let Some(plan) = be.prefetch.as_ref() else { return Default::default() };
    let addresses: Vec<u64> = weights.iter().map(|w| super::backend::addr(&w.blocks, &be.ctx)).collect();
    plan.ahead_of(&be.ctx, &addresses)
}

/// One projection as the matrix-vector launch code takes it.
fn matvec_args<'a>(
    be: &CudaBackend,
    w: &'a CudaWeight,
    bias: Option<&CudaSlice<f32>>,
    x: &'a CudaAct,
    n_x: usize,
    out: &'a mut CudaAct,
    write: Write,
) -> MatvecArgs<'a> {
    MatvecArgs {
        name: &w.name,
        ty: w.ty,
        n_rows: w.n_rows,
        n_cols: w.n_cols,
        layout: w.layout,
        weights: w.blocks.slice(..),
        x: &x.buf,
        n_x,
        bias: bias.map_or(0, |b| addr(b, &be.ctx)),
        out: &mut out.buf,
        accumulate: write == Write::Accumulate,
    }
}

fn matvec(be: &mut CudaBackend, w: &CudaWeight, bias: Option<&CudaSlice<f32>>, x: &CudaAct, n_x: usize, out: &mut CudaAct, write: Write) -> Result<(), BackendError> {
    let kernels = w.kernels.as_ref().ok_or_else(|| BackendError::Invalid(format!("{}: a vector cannot be multiplied", w.name)))?;
    let ahead = window_ahead(be, &[w]);
    launch_matvec(&be.ctx, kernels, matvec_args(be, w, bias, x, n_x, out, write), ahead)?;
    Ok(())
}

/// Device memory that must stay free after a resident weight copy is made (auto policy): a
/// quarter of the device, for the KV cache, activations and other models.
const RESIDENT_KEEP_FREE_FRACTION: usize = 4;

/// Activations are multiplied by this before their f16 conversion (and the product divided by
/// it through cuBLAS's alpha): f16 ends at 65504, and the inputs of ffn_down and attn_output are
/// not normalized (models with "massive activations" reach 1e4-1e5 there); scaled, values up to
/// 2^24 fit, while those under 2^-6 lose only absolute precision (f16 subnormals: steps of 2^-16
/// after unscaling), negligible in a sum of products next to the 2^-11 relative rounding of the
/// large terms.
pub(super) const X_F16_SCALE: f32 = 1.0 / 256.0;
/// A weight's f16 copy is scaled so that its largest |w| lands near this power of two: trained
/// weights (|w| ~ 0.02) would otherwise sit near the f16 subnormals, where precision is lost.
const W_F16_TARGET_MAX: f32 = 16384.0;
/// The scale of x where the o and ffn_down GEMMs write it as the next norm's source
/// ([`NormSource`]): x is not normalized there, and at 1/256 the small values of early layers fall
/// into f16's subnormals (the real model's chat logits 2.62e-2 from float64 against 1.46e-2
/// today; at 1/16, 1.33e-2: scripts/norm_fold_accuracy.py, docs/BENCHMARKS.md). Its largest |x|,
/// 2,183, is far from 16 * 65504.
pub(super) const NORM_SOURCE_F16_SCALE: f32 = 1.0 / 16.0;
/// The scale of rms_norm(x) without its weight (a stacked copy that holds the weight, multiplying
/// more rows than the rows kernel takes: prompts): |value| <= sqrt(width), so 1 keeps the small
/// ones out of the subnormals.
const UNIT_NORMED_F16_SCALE: f32 = 1.0;

/// A weight kept on the device in a form cuBLAS multiplies directly.
pub enum Resident {
    F32(CudaSlice<f32>),
    /// f16 bits of `w * scale` (scale a power of two).
    F16 { bits: CudaSlice<u16>, scale: f32 },
}

/// Whether to keep copies of the weights on the device: FERRITE_CUDA_F32_WEIGHTS=0 never, =1
/// whenever the allocation succeeds, unset while a quarter of the device stays free. (The name
/// is older than the f16 copies; it governs both.)
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

/// Rows of `w` per chunk of the float32 scratch, and the scratch grown to hold one chunk.
fn scratch_chunk_rows(be: &mut CudaBackend, w: &CudaWeight) -> Result<usize, BackendError> {
    let chunk_rows = (SCRATCH_MAX_ELEMS / w.n_cols.max(1)).clamp(1, w.n_rows.max(1));
    let elems = chunk_rows * w.n_cols;
    if be.scratch.as_ref().is_none_or(|s| s.len() < elems) {
        be.scratch = None;
        be.scratch = Some(be.ctx.alloc::<f32>(elems, "dequantized weight rows for cuBLAS")?);
        // A step recorded while some weight had no copy holds the old scratch's address.
        be.batch_generation += 1;
    }
    Ok(chunk_rows)
}

/// `w`'s rows dequantized to float32 one chunk at a time into the scratch, each chunk handed to
/// `each(ctx, kernels, scratch, first row, rows)`.
fn for_each_f32_chunk(
    be: &mut CudaBackend,
    w: &CudaWeight,
    mut each: impl FnMut(&CudaContext, &FixedKernels, &CudaSlice<f32>, usize, usize) -> Result<(), BackendError>,
) -> Result<(), BackendError> {
    let chunk_rows = scratch_chunk_rows(be, w)?;
    let Some(scratch) = be.scratch.as_mut() else { unreachable!("allocated by scratch_chunk_rows") };
    let mut r0 = 0;
    while r0 < w.n_rows {
        let rows = chunk_rows.min(w.n_rows - r0);
        dequant_rows(&be.ctx, w, r0, rows, &mut scratch.slice_mut(..rows * w.n_cols))?;
        each(&be.ctx, &be.fixed, scratch, r0, rows)?;
        r0 += rows;
    }
    Ok(())
}

/// The largest |w| of `w`'s float32 rows (times `fold` column by column), folded into
/// `max_bits` (float bits; atomic max).
fn abs_max_into(be: &mut CudaBackend, w: &CudaWeight, fold: Option<&CudaSlice<f32>>, max_bits: &mut CudaSlice<u32>) -> Result<(), BackendError> {
    for_each_f32_chunk(be, w, |ctx, fixed, scratch, _, rows| {
        fold_columns(ctx, fixed, w, scratch, rows, fold)?;
        let n = (rows * w.n_cols) as u64;
        launch!(ctx, &fixed.abs_max, "abs_max", grid_stride(n), scratch, &n, &mut *max_bits)?;
        Ok(())
    })
}

/// The columns of a chunk of `w`'s float32 rows times the norm weight `fold` (of `w`'s width),
/// when the copy folds it in (`make_f16_stack`).
fn fold_columns(ctx: &CudaContext, fixed: &FixedKernels, w: &CudaWeight, scratch: &CudaSlice<f32>, rows: usize, fold: Option<&CudaSlice<f32>>) -> Result<(), BackendError> {
    let Some(g) = fold else { return Ok(()) };
    let (n, width) = ((rows * w.n_cols) as u64, w.n_cols as u32);
    launch!(ctx, &fixed.scale_columns, "scale_columns", grid_stride(n), scratch, g, &width, &n)?;
    Ok(())
}

/// `w` (times `fold` column by column) times `scale` as f16 bits into `bits` (its rows from
/// element `offset` on).
fn write_f16(be: &mut CudaBackend, w: &CudaWeight, fold: Option<&CudaSlice<f32>>, scale: f32, bits: &mut CudaSlice<u16>, offset: usize) -> Result<(), BackendError> {
    for_each_f32_chunk(be, w, |ctx, fixed, scratch, r0, rows| {
        fold_columns(ctx, fixed, w, scratch, rows, fold)?;
        let n = (rows * w.n_cols) as u64;
        let mut dst = bits.slice_mut(offset + r0 * w.n_cols..offset + (r0 + rows) * w.n_cols);
        launch!(ctx, &fixed.to_f16_scaled, "to_f16_scaled", grid_stride(n), scratch, &mut dst, &n, &scale)?;
        Ok(())
    })
}

/// The f16 copy of `weights` stacked in `bits` (the rows of the first, then of the next...)
/// under one scale, set by their largest |w|: the float32 rows pass through the scratch twice,
/// once for that maximum, once to convert. With `fold` (the RMSNorm weight of their input),
/// every row is first multiplied by it column by column. Returns the scale.
fn make_f16_stack(be: &mut CudaBackend, weights: &[&CudaWeight], fold: Option<&CudaSlice<f32>>, bits: &mut CudaSlice<u16>) -> Result<f32, BackendError> {
    let mut max_bits = be.ctx.upload(&[0u32], "the largest |w| of a weight")?;
    for w in weights {
        abs_max_into(be, w, fold, &mut max_bits)?;
    }
    let names: Vec<&str> = weights.iter().map(|w| w.name.as_str()).collect();
    let got = be.ctx.download(&max_bits, &format!("the largest |w| of {}", names.join(", ")))?;
    let scale = f16_scale(f32::from_bits(got[0]));
    let mut offset = 0;
    for w in weights {
        write_f16(be, w, fold, scale, bits, offset)?;
        offset += w.n_rows * w.n_cols;
    }
    Ok(scale)
}

/// The f16 copy of `w` (see `make_f16_stack`).
fn make_f16(be: &mut CudaBackend, w: &CudaWeight, mut bits: CudaSlice<u16>) -> Result<Resident, BackendError> {
    let scale = make_f16_stack(be, &[w], None, &mut bits)?;
    Ok(Resident::F16 { bits, scale })
}

/// The power of two that brings `max_abs` near `W_F16_TARGET_MAX` (1 for a zero or non-finite
/// maximum: nothing to gain, and a NaN must stay visible).
fn f16_scale(max_abs: f32) -> f32 {
    if !(max_abs.is_finite() && max_abs > 0.0) {
        return 1.0;
    }
    let exp = (W_F16_TARGET_MAX / max_abs).log2().floor().clamp(-60.0, 60.0);
    2f32.powi(exp as i32)
}

/// Makes the device's context current on this thread: cuBLAS is bound to the context's stream
/// (and a resident copy's kernels run on it), and Python may call from any thread.
fn bind_context(be: &CudaBackend) -> Result<(), BackendError> {
    be.ctx.raw().bind_to_thread().map_err(|e| CudaError::Driver { op: "binding the CUDA context".into(), msg: super::error::describe(&e) })?;
    Ok(())
}

/// The weight's resident copy, made now if this is its first large multiply and the device has
/// room; `None` when it stays quantized only.
fn resident<'w>(be: &mut CudaBackend, w: &'w CudaWeight) -> Result<Option<&'w Resident>, BackendError> {
    if let Some(made) = w.resident.get() {
        return Ok(made.as_ref());
    }
    let elems = w.n_rows * w.n_cols;
    let f16 = be.gemm == GemmPrecision::F16;
    let bytes = elems * if f16 { 2 } else { 4 };
    let made = if !resident_allowed(be, bytes) {
        None
    } else if f16 {
        match be.ctx.alloc::<u16>(elems, &format!("the f16 copy of {}", w.name)) {
            Ok(bits) => Some(make_f16(be, w, bits)?),
            // No room after all (another model, fragmentation): the scratch path still works.
            Err(CudaError::OutOfMemory { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        match be.ctx.alloc::<f32>(elems, &format!("the float32 copy of {}", w.name)) {
            Ok(mut full) => {
                dequant_rows(&be.ctx, w, 0, w.n_rows, &mut full.slice_mut(..))?;
                Some(Resident::F32(full))
            }
            Err(CudaError::OutOfMemory { .. }) => None,
            Err(e) => return Err(e.into()),
        }
    };
    // Only this thread reaches the weight (the backend is behind `&mut`), so the set succeeds.
    let _ = w.resident.set(made);
    Ok(w.resident.get().and_then(Option::as_ref))
}

/// Several weights of one width in one f16 copy, stacked (the rows of the first, then of the
/// next...) under one scale, so that their projections of one x are one cuBLAS GEMM
/// ([`stacked_gemm`]). Held by the group's first weight.
pub struct StackedCopy {
    /// The members' names and row counts, in order: a group uses the copy only if it is the same.
    members: Vec<(String, usize)>,
    bits: CudaSlice<u16>,
    scale: f32,
    /// Some when the copy holds the rows times their input's RMSNorm weight (the backend's
    /// `norm_fold`): its x is then rms_norm(x) times these ones (of the width), or a
    /// [`NormSource`] with 1 / rms applied after the sum.
    ones: Option<CudaSlice<f32>>,
}

/// Stacked GEMMs launched by this process (directly, not counting graph replays), for tests to
/// see which path ran (`_cuda_counters`).
pub static STACKED_GEMMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `FERRITE_CUDA_STACK=0`: no stacked GEMMs (see `stacks`), read when a backend is made.
pub(super) fn stacking_enabled() -> bool {
    std::env::var("FERRITE_CUDA_STACK").map_or(true, |v| v != "0")
}

/// Whether SwiGLU and decode attention read a stacked GEMM's output in place (see
/// `CudaBackend::mlp_add`, `attention_add`); `FERRITE_CUDA_STACK=split` splits it into rows of
/// their own first, as before they did (for comparison). Read when a backend is made.
pub(super) fn stacked_in_place() -> bool {
    std::env::var("FERRITE_CUDA_STACK").map_or(true, |v| v != "split")
}

/// Most weights a stacked GEMM takes: its outputs go out through `split_rows3`.
const STACK_MAX_MEMBERS: usize = 3;

/// Whether the projections of one x by `weights` (more rows than a matrix-vector kernel takes)
/// run as one GEMM on a stacked copy: f16 precision, two or three weights of one width, one of
/// them small (at most `STACK_SMALL_WEIGHT_ELEMS`), none sent to the quantized GEMM by
/// `FERRITE_CUDA_MMQ_MAX_ROWS`. The small weights are what a GEMM of their own wastes: a 7B's k
/// and v (512 x 3584) took a split-K GEMM and its reduction each, about 7.7 us, at 64 rows
/// (H200, 2026-12-04), for 3.7 MB; stacked under q they add their bytes to one GEMM.
/// `FERRITE_CUDA_STACK=0` turns stacking off (`stacking_enabled`).
fn stacks(be: &CudaBackend, weights: &[&CudaWeight], n_x: usize) -> bool {
    let shapes: Vec<(usize, usize)> = weights.iter().map(|w| (w.n_rows, w.n_cols)).collect();
    be.stacking && be.gemm == GemmPrecision::F16
        && stack_shapes_qualify(&shapes)
        && !weights.iter().any(|w| takes_matvec(be, w, n_x))
        && !weights.iter().any(|w| be.gemm_mma_rows.is_some_and(|max| n_x <= max) && gemm_mma_capable(be, w, n_x))
}

/// Whether weights of these shapes `(rows, cols)` stack: two or three of one width, none empty,
/// one of them small (`STACK_SMALL_WEIGHT_ELEMS`).
fn stack_shapes_qualify(shapes: &[(usize, usize)]) -> bool {
    let Some(&(_, cols)) = shapes.first() else { return false };
    (2..=STACK_MAX_MEMBERS).contains(&shapes.len())
        && shapes.iter().all(|&(r, c)| c == cols && r > 0 && c > 0)
        && shapes.iter().any(|&(r, c)| r.saturating_mul(c) <= STACK_SMALL_WEIGHT_ELEMS)
}

/// The stacked copy of `weights`, made now (held by the first) if this is the group's first large
/// multiply and the device has room; `None` when it was decided against or the first weight
/// holds a copy of another group. `norm_w`: the RMSNorm weight of their input, folded into a new
/// copy when the backend's `norm_fold` is on.
fn stacked_copy<'w>(be: &mut CudaBackend, weights: &[&'w CudaWeight], norm_w: &CudaSlice<f32>) -> Result<Option<&'w StackedCopy>, BackendError> {
    let first = weights[0];
    if first.stacked.get().is_none() {
        let elems: usize = weights.iter().map(|w| w.n_rows * w.n_cols).sum();
        let made = if resident_allowed(be, elems * 2) {
            let names: Vec<&str> = weights.iter().map(|w| w.name.as_str()).collect();
            match be.ctx.alloc::<u16>(elems, &format!("the stacked f16 copy of {}", names.join(", "))) {
                Ok(mut bits) => {
                    let width = first.n_cols;
                    let ones = if be.norm_fold {
                        if norm_w.len() != width {
                            return Err(BackendError::Invalid(format!("the norm before {}: {} values for a width of {width}", names.join(", "), norm_w.len())));
                        }
                        match be.ctx.upload(&vec![1.0f32; width], "a norm weight of ones") {
                            Ok(ones) => Some(ones),
                            // No room for the ones: no copy, as for its bits.
                            Err(CudaError::OutOfMemory { .. }) => {
                                let _ = first.stacked.set(None);
                                return Ok(None);
                            }
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        None
                    };
                    let fold = ones.as_ref().map(|_| norm_w);
                    let scale = make_f16_stack(be, weights, fold, &mut bits)?;
                    Some(StackedCopy { members: weights.iter().map(|w| (w.name.clone(), w.n_rows)).collect(), bits, scale, ones })
                }
                Err(CudaError::OutOfMemory { .. }) => None,
                Err(e) => return Err(e.into()),
            }
        } else {
            None
        };
        // Only this thread reaches the weight (the backend is behind `&mut`), so the set succeeds.
        let _ = first.stacked.set(made);
    }
    let same_group = |c: &&StackedCopy| c.members.len() == weights.len() && c.members.iter().zip(weights).all(|((name, rows), w)| *name == w.name && *rows == w.n_rows);
    Ok(first.stacked.get().and_then(Option::as_ref).filter(same_group))
}

/// The device address of the backend's float32 buffer for a stacked GEMM's output, grown to hold
/// at least `n` values (growing bumps `batch_generation`, since recorded steps hold its address);
/// `None` when the device has no room for it (the projections then run apart).
fn stacked_out(be: &mut CudaBackend, n: usize) -> Result<Option<u64>, BackendError> {
    grown(&be.ctx, &mut be.stacked_out, &mut be.batch_generation, n, "stacked projections' output")
}

/// The device address of `buf`, grown first to hold at least `n` values (a power of two, at
/// least 64 Ki) if it holds fewer; growing bumps `generation` (the backend's `batch_generation`:
/// recorded steps hold the address). `None` when the device has no room for it.
fn grown<T: cudarc::driver::DeviceRepr>(
    ctx: &CudaContext,
    buf: &mut Option<CudaSlice<T>>,
    generation: &mut u64,
    n: usize,
    what: &str,
) -> Result<Option<u64>, BackendError> {
    if buf.as_ref().is_none_or(|b| b.len() < n) {
        *buf = None;
        *generation += 1;
        match ctx.alloc::<T>(n.next_power_of_two().max(1 << 16), what) {
            Ok(b) => *buf = Some(b),
            Err(CudaError::OutOfMemory { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.as_ref().map(|b| addr(b, ctx)))
}

/// Where the o or ffn_down GEMM of 5-16 rows, adding into x, also wrote what the next RMSNorm's
/// consumers read instead of a normalized x (gemm_f16_rows.cu's norm arguments): x's rows as
/// f16 (times `NORM_SOURCE_F16_SCALE`) and the sums of squares of each 16 of a row's values
/// (ceil(width / 16) doubles a row). Valid until x is next written (the backend keeps it for the
/// next `attention_add` or `mlp_add` only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct NormSource {
    /// The device address of x (the residual rows it describes).
    pub x: u64,
    pub n_rows: usize,
    pub width: usize,
    h16: u64,
    parts: u64,
}

/// The input of a stacked GEMM: rms_norm(x) times `weight`, or (with the weight folded into the
/// copy) what `source` holds of x when it describes these rows.
pub(super) struct NormedInput<'a> {
    pub x: &'a CudaAct,
    pub weight: &'a CudaSlice<f32>,
    pub eps: f32,
    pub source: Option<NormSource>,
}

/// Stacked GEMMs that took their x from a [`NormSource`], and the sources made by a launch of
/// their own (`norm_source`: no GEMM wrote that x) rather than by the GEMM that wrote x (directly,
/// not counting graph replays), for the tests (`_cuda_counters`).
pub static NORM_SOURCE_GEMMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub static NORM_SOURCE_LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Stacked copies with the norm weight folded in, and no norm launch before the stacked GEMMs of
/// 5-[`norm_fold_max_rows`] rows whose x a GEMM wrote ([`NormSource`]); `FERRITE_CUDA_NORM_FOLD=0`:
/// the copies without it, x normalized in a launch of its own before every stacked GEMM. On since
/// the thirty-sixth session: decode steps of 5 and 8 sequences 3.5 and 1.5 % faster on an H100,
/// and the real model's logits 2.61e-2 from float64 at worst, against 4.34e-2 off (its chat
/// prompt of 15 rows takes a norm source; docs/BENCHMARKS.md). Read when a backend is made.
pub(super) fn norm_fold_enabled() -> bool {
    std::env::var("FERRITE_CUDA_NORM_FOLD").map_or(true, |v| v != "0")
}

/// With the fold on, the most rows a step may have for its GEMMs to take and make norm sources
/// (`FERRITE_CUDA_NORM_FOLD_ROWS`, 5-16; default 16, the rows kernel's limit: at 8 the real
/// model's chat logits were 4.52e-2 from float64 against 1.34e-2, and 16-row steps no faster).
/// Steps of more rows normalize x in a launch of its own, as prompts do. Read when a backend is made.
pub(super) fn norm_fold_max_rows() -> usize {
    std::env::var("FERRITE_CUDA_NORM_FOLD_ROWS").ok().and_then(|v| v.parse::<usize>().ok()).map_or(16, |n| n.min(16))
}

/// x as the stacked GEMM on `copy` of `n_x` rows takes it: the device address of its f16 rows,
/// their scale, and the sums of squares the rows kernel turns into 1 / rms (0: none, x is
/// normalized). A source goes only to the rows kernel (`rows_kernel`): the one a GEMM wrote, or
/// one made now (the first layer's x, from the embedding), so that every layer's rows take the
/// same rounding. Otherwise x is normalized now, in the backend's f16 buffer.
fn stacked_input(be: &mut CudaBackend, copy: &StackedCopy, input: &NormedInput<'_>, n_x: usize, rows_kernel: bool) -> Result<(u64, f32, u64), BackendError> {
    let Some(ones) = &copy.ones else {
        return Ok((rms_norm_as_f16(be, input.x, input.weight, input.eps, n_x, X_F16_SCALE)?, X_F16_SCALE, 0));
    };
    let x_addr = addr(&input.x.buf, &be.ctx);
    let source = match input.source.filter(|s| s.x == x_addr && s.n_rows == n_x && s.width == input.x.width) {
        Some(given) if rows_kernel => Some(given),
        _ if rows_kernel && n_x <= be.norm_fold_rows => norm_source(be, input.x, n_x)?,
        _ => None,
    };
    match source {
        Some(s) => Ok((s.h16, NORM_SOURCE_F16_SCALE, s.parts)),
        None => Ok((rms_norm_as_f16(be, input.x, ones, input.eps, n_x, UNIT_NORMED_F16_SCALE)?, UNIT_NORMED_F16_SCALE, 0)),
    }
}

/// The norm source of `n_x` rows of x made by a launch of its own (norm.cu's `norm_source`,
/// the sums as a producer GEMM adds them), in the backend's source buffers; None when the
/// width is not a multiple of 16 or the device has no room.
fn norm_source(be: &mut CudaBackend, x: &CudaAct, n_x: usize) -> Result<Option<NormSource>, BackendError> {
    let width = x.width;
    if width == 0 || !width.is_multiple_of(16) || n_x == 0 {
        return Ok(None);
    }
    let (rows, width_u) = (u32::try_from(n_x), u32::try_from(width));
    let (Ok(rows), Ok(width_u)) = (rows, width_u) else { return Ok(None) };
    let ctx = be.ctx.clone();
    let Some((h16, parts)) = norm_source_buffers(be, n_x, width)? else { return Ok(None) };
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (super::kernels::NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    launch!(ctx, &be.fixed.norm_source, "norm_source", cfg, &x.buf, &width_u, &NORM_SOURCE_F16_SCALE, &h16, &parts)?;
    NORM_SOURCE_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(NormSource { x: addr(&x.buf, &ctx), n_rows: n_x, width, h16, parts }))
}

/// The device addresses of the backend's norm source buffers (f16 rows, sums of squares), grown
/// to hold `n_x` rows of `width` ([`grown`]); None when the device has no room.
fn norm_source_buffers(be: &mut CudaBackend, n_x: usize, width: usize) -> Result<Option<(u64, u64)>, BackendError> {
    let ctx = be.ctx.clone();
    let Some(h16) = grown(&ctx, &mut be.norm_src_f16, &mut be.batch_generation, n_x * width, "x as the next norm's source")? else { return Ok(None) };
    let Some(parts) = grown(&ctx, &mut be.norm_parts, &mut be.batch_generation, n_x * width.div_ceil(16), "x's sums of squares for the next norm")? else { return Ok(None) };
    Ok(Some((h16, parts)))
}

/// One stacked projection's output: where it goes, the device addresses of its output rows and
/// bias (0: none).
pub(super) struct StackedOut<'w> {
    pub weight: &'w CudaWeight,
    pub out: u64,
    pub bias: u64,
}

/// The projections of one x (`weights`) as one f16 GEMM on their stacked copy ([`stacks`],
/// [`stacked_copy`]), into the backend's stacked output: `n_x` rows of all the weights' rows, the
/// first weight's outputs first. `input`: x and its norm, normalized once the GEMM is known to
/// run (or read from its source: [`stacked_input`]). Returns that output's device address, or
/// None, having launched nothing, when the group does not stack.
pub(super) fn stacked_gemm_unsplit(be: &mut CudaBackend, weights: &[&CudaWeight], n_x: usize, input: &NormedInput<'_>) -> Result<Option<u64>, BackendError> {
    let Some((copy, mut cfg)) = stacked_gemm_config(be, weights, n_x, input.weight)? else { return Ok(None) };
    let (total_rows, n_cols) = (cfg.m as usize, cfg.k as usize);
    let n_out = n_x.checked_mul(total_rows).ok_or_else(|| BackendError::Invalid("stacked projections' output overflows".into()))?;
    u32::try_from(n_out).map_err(|_| BackendError::Invalid(format!("stacked projections: outputs {n_out} exceed 32 bits")))?;
    // Before x's producer runs, so that without room nothing has been launched.
    let Some(stacked) = stacked_out(be, n_out)? else { return Ok(None) };
    let ctx = be.ctx.clone();
    let a = addr(&copy.bits, &ctx);
    let gemm_err = |e: String| CudaError::Driver { op: format!("f16 GEMM for {} ({total_rows} x {n_cols} by {n_x} rows)", member_names(weights)), msg: e };
    // The backend's f16 buffers are 16-byte aligned: x's address does not change the fit.
    let rows_kernel = gemm_rows_fits(be, &cfg, a, 0);
    let (converted, x_scale, parts) = stacked_input(be, copy, input, n_x, rows_kernel)?;
    cfg.alpha = 1.0 / (copy.scale * x_scale);
    if parts == 0 {
        gemm_f16_raw(be, cfg, a, converted, stacked).map_err(gemm_err)?;
    } else {
        // The source is made for the rows kernel only (its fit checked above).
        if !gemm_rows(be, &cfg, a, converted, stacked, &RowsNorm::consumer(parts, input.eps)).map_err(gemm_err)? {
            return Err(BackendError::Invalid(format!("stacked GEMM of {}: the rows kernel refused the normalized input it was given", member_names(weights))));
        }
        NORM_SOURCE_GEMMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    STACKED_GEMMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(stacked))
}

/// The stacked copy of `weights` and cuBLAS's configuration of its GEMM by `n_x` rows of x (all
/// the members' rows at once, alpha 1 until x's scale is known), when the group stacks
/// ([`stacks`]) and its copy is there or made now ([`stacked_copy`], `norm_w` the RMSNorm weight
/// of x); `None` otherwise.
fn stacked_gemm_config<'w>(be: &mut CudaBackend, weights: &[&'w CudaWeight], n_x: usize, norm_w: &CudaSlice<f32>) -> Result<Option<(&'w StackedCopy, GemmConfig<f32>)>, BackendError> {
    if n_x == 0 || !stacks(be, weights, n_x) {
        return Ok(None);
    }
    bind_context(be)?;
    let Some(copy) = stacked_copy(be, weights, norm_w)? else { return Ok(None) };
    let total_rows: usize = weights.iter().map(|w| w.n_rows).sum();
    let cfg = gemm_config(&member_names(weights), total_rows, n_x, weights[0].n_cols, total_rows, Write::Overwrite)?;
    Ok(Some((copy, cfg)))
}

/// The names of a stacked group's weights, for messages.
fn member_names(weights: &[&CudaWeight]) -> String {
    weights.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// `out_i = w_i x (+ bias_i)` for the projections of one x as one f16 GEMM on their stacked copy
/// ([`stacked_gemm_unsplit`]), then one launch that splits the stacked rows into the outputs and
/// adds the biases (`split_rows3`, in place of `add_biases3`). Returns false, having launched
/// nothing, when the group does not stack.
pub(super) fn stacked_gemm(be: &mut CudaBackend, outs: &[StackedOut<'_>], n_x: usize, input: &NormedInput<'_>) -> Result<bool, BackendError> {
    let weights: Vec<&CudaWeight> = outs.iter().map(|o| o.weight).collect();
    let Some(stacked) = stacked_gemm_unsplit(be, &weights, n_x, input)? else { return Ok(false) };
    let as_u32 = |what: &str, v: usize| u32::try_from(v).map_err(|_| BackendError::Invalid(format!("stacked projections: {what} {v} exceeds 32 bits")));
    let seg = |i: usize| -> Result<(u64, u64, u32), BackendError> {
        Ok(match outs.get(i) {
            Some(o) => (o.out, o.bias, as_u32("rows", o.weight.n_rows)?),
            None => (0, 0, 0),
        })
    };
    let ((y0, b0, w0), (y1, b1, w1), (y2, b2, w2)) = (seg(0)?, seg(1)?, seg(2)?);
    let rows = as_u32("tokens", n_x)?;
    let n_out = n_x * weights.iter().map(|w| w.n_rows).sum::<usize>();
    let ctx = be.ctx.clone();
    launch!(ctx, &be.fixed.split_rows3, "split_rows3", grid_stride(n_out as u64), &stacked, &y0, &b0, &w0, &y1, &b1, &w1, &y2, &b2, &w2, &rows)?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn dequant_gemm(
    be: &mut CudaBackend,
    w: &CudaWeight,
    bias: Option<&CudaSlice<f32>>,
    x: &CudaAct,
    n_x: usize,
    out: &mut CudaAct,
    write: Write,
    x_f16: &mut Option<u64>,
) -> Result<(), BackendError> {
    let (n_cols, n_rows) = (w.n_cols, w.n_rows);
    if n_rows == 0 || n_cols == 0 {
        return Ok(());
    }
    bind_context(be)?;
    let resident = resident(be, w)?;
    let cfg = |rows: usize| gemm_config(&w.name, rows, n_x, n_cols, n_rows, write);
    // gemm_f16 names the kernel that failed (gemm_f16_rows.cu or cuBLAS) in its message.
    let gemm_err = |path: &str, e: String| CudaError::Driver { op: format!("{path} for {} ({n_rows} x {n_cols} by {n_x} rows)", w.name), msg: e };
    match resident {
        Some(Resident::F16 { bits, scale }) => {
            let converted = x_f16_of(be, x, n_x * n_cols, x_f16)?;
            let mut c = cfg(n_rows)?;
            c.alpha = 1.0 / (scale * X_F16_SCALE);
            gemm_f16(be, c, bits, converted, &mut out.buf).map_err(|e| gemm_err("f16 GEMM", e))?;
        }
        Some(Resident::F32(full)) => {
            let b = x.buf.slice(..n_x * n_cols);
            let mut c = out.buf.slice_mut(..n_x * n_rows);
            // SAFETY: full holds n_rows x n_cols, b n_x x n_cols, c n_x x n_rows.
            unsafe { be.blas.gemm(cfg(n_rows)?, &full.slice(..), &b, &mut c) }.map_err(|e| gemm_err("cuBLAS GEMM", format!("{e:?}")))?;
        }
        None => {
            let chunk_rows = scratch_chunk_rows(be, w)?;
            let mut r0 = 0;
            while r0 < n_rows {
                let rows = chunk_rows.min(n_rows - r0);
                let elems = rows * n_cols;
                let Some(scratch) = be.scratch.as_mut() else { unreachable!("allocated above") };
                dequant_rows(&be.ctx, w, r0, rows, &mut scratch.slice_mut(..elems))?;
                let a = scratch.slice(..elems);
                let b = x.buf.slice(..n_x * n_cols);
                let mut c = out.buf.slice_mut(r0..n_x * n_rows);
                // SAFETY: a holds rows x n_cols, b n_x x n_cols, and c from r0 spans
                // (n_x - 1) * n_rows + rows elements, all within the views (sizes checked by the caller).
                unsafe { be.blas.gemm(cfg(rows)?, &a, &b, &mut c) }.map_err(|e| gemm_err("cuBLAS GEMM", format!("{e:?}")))?;
                r0 += rows;
            }
        }
    }
    if let Some(b) = bias {
        let n = (n_x * n_rows) as u64;
        let width = n_rows as u32;
        launch!(be.ctx, &be.fixed.add_bias, "add_bias", grid_stride(n), &mut out.buf, b, &width, &n)?;
    }
    Ok(())
}

/// `y[t][r] += bias[r]` for each `(y, bias, width)` (device addresses) over `n_rows` rows, three
/// outputs a launch: q, k and v after their GEMMs, one launch instead of three.
pub(super) fn add_biases(be: &CudaBackend, outputs: &[(u64, u64, usize)], n_rows: usize) -> Result<(), BackendError> {
    let rows = u32::try_from(n_rows).map_err(|_| BackendError::Invalid(format!("bias rows {n_rows} do not fit 32 bits")))?;
    for chunk in outputs.chunks(3) {
        let seg = |i: usize| -> Result<(u64, u64, u32), BackendError> {
            Ok(match chunk.get(i) {
                Some(&(y, b, w)) => (y, b, u32::try_from(w).map_err(|_| BackendError::Invalid(format!("bias width {w} does not fit 32 bits")))?),
                None => (0, 0, 0),
            })
        };
        let ((y0, b0, w0), (y1, b1, w1), (y2, b2, w2)) = (seg(0)?, seg(1)?, seg(2)?);
        let n = n_rows as u64 * (w0 as u64 + w1 as u64 + w2 as u64);
        if n == 0 {
            continue;
        }
        launch!(be.ctx, &be.fixed.add_biases3, "add_biases3", grid_stride(n), &y0, &b0, &w0, &y1, &b1, &w1, &y2, &b2, &w2, &rows)?;
    }
    Ok(())
}

/// The backend's buffer of f16 activations, holding at least `n` values; growing it bumps
/// `batch_generation`, since recorded steps hold its address.
fn x_f16_buffer(be: &mut CudaBackend, n: usize) -> Result<&mut CudaSlice<u16>, BackendError> {
    if be.x_f16.as_ref().is_none_or(|b| b.len() < n) {
        be.x_f16 = None;
        be.x_f16 = Some(be.ctx.alloc::<u16>(n.next_power_of_two().max(1 << 16), "f16 activations for cuBLAS")?);
        be.batch_generation += 1;
    }
    let Some(buf) = be.x_f16.as_mut() else { unreachable!("allocated above") };
    Ok(buf)
}

/// The device address of the backend's f16 activation buffer, grown to hold `n` values, for a
/// producer that writes the f16 GEMM's input itself (the attention into attn_output).
pub(super) fn f16_input(be: &mut CudaBackend, n: usize) -> Result<u64, BackendError> {
    let ctx = be.ctx.clone();
    let buf = x_f16_buffer(be, n)?;
    Ok(addr(&*buf, &ctx))
}

/// The device address of x's first `n` values as f16: `x_f16`'s when an earlier projection of
/// the same input (or its producer) wrote them, else converted now and remembered there.
fn x_f16_of(be: &mut CudaBackend, x: &CudaAct, n: usize, x_f16: &mut Option<u64>) -> Result<u64, BackendError> {
    match *x_f16 {
        Some(addr) => Ok(addr),
        None => Ok(*x_f16.insert(x_as_f16(be, x, n)?)),
    }
}

/// The first `n` activations converted to f16 (times `X_F16_SCALE`) in the backend's buffer;
/// its device address.
fn x_as_f16(be: &mut CudaBackend, x: &CudaAct, n: usize) -> Result<u64, BackendError> {
    let n64 = n as u64;
    let ctx = be.ctx.clone();
    let f = be.fixed.to_f16_scaled.clone();
    let buf = x_f16_buffer(be, n)?;
    launch!(ctx, &f, "to_f16_scaled", grid_stride(n64), &x.buf, &mut *buf, &n64, &X_F16_SCALE)?;
    Ok(addr(&*buf, &ctx))
}

/// Whether every one of `weights` (projections of one x) multiplies `n_x` rows through cuBLAS's
/// f16 GEMM on its resident f16 copy (made now if this is its first large multiply) or the
/// quantized GEMM (`takes_gemm_mma`): then x is read only as f16, and its producer can write it
/// so (`rms_norm_as_f16`, `swiglu_as_f16`).
pub(super) fn f16_gemm_inputs(be: &mut CudaBackend, weights: &[&CudaWeight], n_x: usize) -> Result<bool, BackendError> {
    if be.gemm != GemmPrecision::F16 {
        return Ok(false);
    }
    if weights.iter().any(|w| takes_matvec(be, w, n_x) || w.n_rows == 0 || w.n_cols == 0) {
        return Ok(false);
    }
    bind_context(be)?;
    for w in weights {
        if takes_gemm_mma(be, w, n_x)? {
            continue;
        }
        if !matches!(resident(be, w)?, Some(Resident::F16 { .. })) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// rms_norm(x) * weight of `n_rows` rows, as f16 (times `scale`: `X_F16_SCALE` where the weight
/// is the norm's) in the backend's f16 buffer, the bits `rms_norm` then `x_as_f16` would give;
/// its device address.
pub(super) fn rms_norm_as_f16(be: &mut CudaBackend, x: &CudaAct, weight: &CudaSlice<f32>, eps: f32, n_rows: usize, scale: f32) -> Result<u64, BackendError> {
    let width = u32::try_from(x.width).map_err(|_| BackendError::Invalid(format!("rms_norm width {} does not fit 32 bits", x.width)))?;
    let rows = u32::try_from(n_rows).map_err(|_| BackendError::Invalid(format!("rms_norm rows {n_rows} do not fit 32 bits")))?;
    let cfg = cudarc::driver::LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (super::kernels::NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
    let ctx = be.ctx.clone();
    let f = be.fixed.rms_norm_f16.clone();
    let buf = x_f16_buffer(be, n_rows * x.width)?;
    launch!(ctx, &f, "rms_norm_f16", cfg, &x.buf, weight, &width, &eps, &scale, &mut *buf)?;
    Ok(addr(&*buf, &ctx))
}

/// silu(gate) * up of `n_rows` rows of `width`, as f16 (times `X_F16_SCALE`) in the backend's
/// f16 buffer, the bits `swiglu` then `x_as_f16` would give; its device address. `gate` and `up`
/// are device addresses whose rows are `stride` floats apart: `width` for rows of their own,
/// `2 * width` for the two halves of a stacked gate/up GEMM's output ([`stacked_gemm_unsplit`]).
pub(super) fn swiglu_as_f16(be: &mut CudaBackend, gate: u64, up: u64, width: usize, stride: usize, n_rows: usize) -> Result<u64, BackendError> {
    let as_u32 = |what: &str, v: usize| u32::try_from(v).map_err(|_| BackendError::Invalid(format!("swiglu {what} {v} does not fit 32 bits")));
    let (width_u, stride_u, rows_u) = (as_u32("width", width)?, as_u32("row stride", stride)?, as_u32("rows", n_rows)?);
    let n = n_rows * width;
    let ctx = be.ctx.clone();
    let f = be.fixed.swiglu_f16.clone();
    let buf = x_f16_buffer(be, n)?;
    launch!(ctx, &f, "swiglu_f16", super::backend::grid_stride_float4s(n as u64), &gate, &up, &width_u, &stride_u, &rows_u, &X_F16_SCALE, &mut *buf)?;
    Ok(addr(&*buf, &ctx))
}

/// The cuBLAS configuration of `rows` weight rows (of `n_cols`) times `n_x` rows of x, into an
/// output of `ldc` values a row of x, alpha 1. Column-major view: the weight rows are W^T (k x m,
/// ld k), x is X^T (k x n, ld k) and the output the m x n block of OUT^T (ld ldc):
/// OUT^T[r][t] = Σ_c W[r][c] X[t][c].
fn gemm_config(name: &str, rows: usize, n_x: usize, n_cols: usize, ldc: usize, write: Write) -> Result<GemmConfig<f32>, BackendError> {
    let as_i32 = |what: &str, v: usize| i32::try_from(v).map_err(|_| BackendError::Invalid(format!("{name}: {what} {v} exceeds cuBLAS's 32-bit sizes")));
    Ok(GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: as_i32("rows", rows)?,
        n: as_i32("tokens", n_x)?,
        k: as_i32("columns", n_cols)?,
        alpha: 1.0f32,
        lda: as_i32("columns", n_cols)?,
        ldb: as_i32("columns", n_cols)?,
        beta: if write == Write::Accumulate { 1.0f32 } else { 0.0f32 },
        ldc: as_i32("rows", ldc)?,
    })
}

/// Below this many bytes an f16 copy times 1-16 rows runs on gemm_f16_rows.cu, not cuBLAS
/// (`FERRITE_CUDA_GEMM_ROWS` overrides it: [`gemm_rows_max_bytes`]). H200, 2026-12-04
/// (bench_decode_step.py, the same lease): every projection of the 0.5B's shapes (2-17 MB) at 8
/// sequences took the step 1.118 -> 1.021 ms; the 7B's q/k/v (33 MB) and o (26 MB) were slower
/// on the kernel (4.831 -> 4.997 ms), its 136 MB gate/up/down and the LM heads much slower.
const GEMM_ROWS_MAX_BYTES: usize = 24 << 20;
/// The kernel's most rows of x (two groups of the mma's 8).
const GEMM_ROWS_MAX_X_ROWS: i32 = 16;

/// `FERRITE_CUDA_GEMM_ROWS=0`: every f16 GEMM on cuBLAS; `=all`: every f16 copy of any size
/// that fits gemm_f16_rows.cu's shapes on it; `=N`: copies up to N MiB. Unset:
/// `GEMM_ROWS_MAX_BYTES`. Read when a backend is made.
pub(super) fn gemm_rows_max_bytes() -> usize {
    match std::env::var("FERRITE_CUDA_GEMM_ROWS").ok().as_deref() {
        Some("all") => usize::MAX,
        Some(v) => v.parse::<usize>().map_or(GEMM_ROWS_MAX_BYTES, |mib| mib.saturating_mul(1 << 20)),
        None => GEMM_ROWS_MAX_BYTES,
    }
}

/// `FERRITE_CUDA_GEMM_ROWS_PLAN=CHUNKS,WARPS`: about CHUNKS 32-column chunks a warp, at most
/// WARPS warps a block (1-16); unset: 4 and 16. Read when a backend is made.
pub(super) fn gemm_rows_plan() -> (u32, u32) {
    let parsed = std::env::var("FERRITE_CUDA_GEMM_ROWS_PLAN").ok().and_then(|v| {
        let (c, w) = v.split_once(',')?;
        Some((c.trim().parse::<u32>().ok()?.max(1), w.trim().parse::<u32>().ok()?.clamp(1, 16)))
    });
    parsed.unwrap_or((4, 16))
}

/// gemm_f16_rows.cu's norm arguments (device addresses, 0: none): the sums of squares a
/// consumer turns into 1 / rms (`in_parts`, with `eps`), and where a producer writes x's norm
/// source (`src_f16` at `src_scale`, `out_parts`). See [`NormSource`].
#[derive(Clone, Copy, Default)]
pub(super) struct RowsNorm {
    in_parts: u64,
    eps: f32,
    src_f16: u64,
    src_scale: f32,
    out_parts: u64,
}

impl RowsNorm {
    fn consumer(in_parts: u64, eps: f32) -> RowsNorm {
        RowsNorm { in_parts, eps, ..RowsNorm::default() }
    }
}

/// `cfg`'s GEMM on gemm_f16_rows.cu when it takes it ([`gemm_rows_fits`]): whether it launched.
/// Same problem as cublasGemmEx's (A the weight's rows, OUT^T[r][t] at `c_ptr + (t * ldc + r) *
/// 4`), summed in float32 in another order; with `norm`'s arguments, the sums times 1 / rms, or
/// x's norm source written beside it.
fn gemm_rows(be: &CudaBackend, cfg: &GemmConfig<f32>, a: u64, x_f16: u64, c_ptr: u64, norm: &RowsNorm) -> Result<bool, String> {
    if !gemm_rows_fits(be, cfg, a, x_f16) {
        return Ok(false);
    }
    let (lc, chunks_per_warp) = gemm_rows_grid(be, cfg);
    let f = &be.fixed.gemm_f16_rows[usize::from(cfg.n > 8)];
    let (m, k, n, ldc) = (cfg.m as u32, cfg.k as u32, cfg.n as u32, cfg.ldc as u32);
    let accumulate = u32::from(cfg.beta == 1.0);
    let RowsNorm { in_parts, eps, src_f16, src_scale, out_parts } = *norm;
    launch!(be.ctx, f, "gemm_f16_rows", lc, &a, &x_f16, &c_ptr, &m, &k, &n, &ldc, &cfg.alpha, &accumulate, &chunks_per_warp, &in_parts, &eps, &src_f16, &src_scale, &out_parts)
        .map_err(|e| format!("gemm_f16_rows.cu: {e}"))?;
    Ok(true)
}

/// `acc += w x` for `n_x` rows (x as f16 at `x_f16`, times `X_F16_SCALE`) on gemm_f16_rows.cu,
/// which also writes x's [`NormSource`] for the next norm's stacked GEMMs; None, having launched
/// nothing, when the GEMM does not run there (the backend's `norm_fold` off, more rows than its
/// `norm_fold_rows`, w without an f16 copy, more than 16 rows, a copy over
/// `gemm_rows_max_bytes`) or the device has no room for the source. The caller has checked the
/// shapes (w's rows are acc's width).
pub(super) fn gemm_rows_add_norm_source(be: &mut CudaBackend, w: &CudaWeight, x_f16: u64, n_x: usize, acc: &CudaAct) -> Result<Option<NormSource>, BackendError> {
    if !be.norm_fold || n_x == 0 || n_x > be.norm_fold_rows || w.n_rows == 0 || takes_matvec(be, w, n_x) || takes_gemm_mma(be, w, n_x)? {
        return Ok(None);
    }
    bind_context(be)?;
    let Some(Resident::F16 { bits, scale }) = resident(be, w)? else { return Ok(None) };
    let mut cfg = gemm_config(&w.name, w.n_rows, n_x, w.n_cols, w.n_rows, Write::Accumulate)?;
    cfg.alpha = 1.0 / (scale * X_F16_SCALE);
    let ctx = be.ctx.clone();
    let a = addr(bits, &ctx);
    if !gemm_rows_fits(be, &cfg, a, x_f16) {
        return Ok(None);
    }
    let Some((h16, parts)) = norm_source_buffers(be, n_x, w.n_rows)? else { return Ok(None) };
    let out = addr(&acc.buf, &ctx);
    let norm = RowsNorm { src_f16: h16, src_scale: NORM_SOURCE_F16_SCALE, out_parts: parts, ..RowsNorm::default() };
    gemm_rows(be, &cfg, a, x_f16, out, &norm).map_err(|e| CudaError::Driver { op: format!("f16 GEMM for {} ({} x {} by {n_x} rows)", w.name, w.n_rows, w.n_cols), msg: e })?;
    Ok(Some(NormSource { x: out, n_rows: n_x, width: w.n_rows, h16, parts }))
}

/// Whether gemm_f16_rows.cu takes `cfg`'s GEMM of the weight rows at `a` by the f16 x at
/// `x_f16`: 1-16 rows of x, k a multiple of 32, W and x contiguous and 16-byte aligned, beta 0
/// or 1, a copy of at most `gemm_rows_max_bytes`.
fn gemm_rows_fits(be: &CudaBackend, cfg: &GemmConfig<f32>, a: u64, x_f16: u64) -> bool {
    let weight_bytes = cfg.m as usize * cfg.k as usize * 2;
    cfg.transa == cublasOperation_t::CUBLAS_OP_T
        && cfg.transb == cublasOperation_t::CUBLAS_OP_N
        && (1..=GEMM_ROWS_MAX_X_ROWS).contains(&cfg.n)
        && cfg.m > 0
        && cfg.k > 0
        && cfg.k % 32 == 0
        && cfg.lda == cfg.k
        && cfg.ldb == cfg.k
        && cfg.ldc >= cfg.m
        && (cfg.beta == 0.0 || cfg.beta == 1.0)
        && (a | x_f16).is_multiple_of(16)
        && weight_bytes <= be.gemm_rows_max_bytes
}

/// gemm_f16_rows.cu's grid for `cfg` (a block of 16 weight rows) and its chunks a warp: about
/// four 32-column chunks a warp (`gemm_rows_plan`), the first ones loaded before the dependent
/// wait.
fn gemm_rows_grid(be: &CudaBackend, cfg: &GemmConfig<f32>) -> (cudarc::driver::LaunchConfig, u32) {
    let (chunks_target, max_warps) = be.gemm_rows_plan;
    let n_chunks = cfg.k as u32 / 32;
    let n_warps = n_chunks.div_ceil(chunks_target).clamp(1, max_warps);
    let lc = cudarc::driver::LaunchConfig { grid_dim: ((cfg.m as u32).div_ceil(16), 1, 1), block_dim: (32 * n_warps, 1, 1), shared_mem_bytes: 0 };
    (lc, n_chunks.div_ceil(n_warps))
}

/// gate and up of `n_x` rows as one GEMM on their stacked f16 copy ([`stacks`]) on
/// gemm_f16_rows.cu, which writes silu(gate) * up as f16 (times `X_F16_SCALE`): the bits that
/// [`stacked_gemm_unsplit`] then [`swiglu_as_f16`] give, in one launch instead of two. Returns
/// the device address of that f16 output (the backend's `swiglu_f16` buffer, `n_x` rows of
/// gate's width), or None, having launched nothing, when the pair does not stack, the kernel
/// does not take the GEMM (more than 16 rows, a copy over `gemm_rows_max_bytes`) or
/// `FERRITE_CUDA_SWIGLU_GEMM=0` (read when a backend is made). `input` as for
/// [`stacked_gemm_unsplit`].
pub(super) fn stacked_swiglu_rows(be: &mut CudaBackend, gate: &CudaWeight, up: &CudaWeight, n_x: usize, input: &NormedInput<'_>) -> Result<Option<u64>, BackendError> {
    let weights = [gate, up];
    if !be.swiglu_gemm || gate.n_rows != up.n_rows {
        return Ok(None);
    }
    // The stacked GEMM as gemm_f16_rows poses it: all 2 * width rows (the fit's size and shape).
    let Some((copy, mut cfg)) = stacked_gemm_config(be, &weights, n_x, input.weight)? else { return Ok(None) };
    let (width, n_cols) = (gate.n_rows, gate.n_cols);
    let ctx = be.ctx.clone();
    let a = addr(&copy.bits, &ctx);
    // x's address is known only once its producer runs; the buffer is 16-byte aligned.
    if !gemm_rows_fits(be, &cfg, a, 0) {
        return Ok(None);
    }
    // Without room the two launches run instead (nothing launched yet).
    let Some(out) = grown(&ctx, &mut be.swiglu_f16, &mut be.batch_generation, n_x * width, "SwiGLU's f16 output")? else { return Ok(None) };
    let (converted, x_scale, parts) = stacked_input(be, copy, input, n_x, true)?;
    cfg.alpha = 1.0 / (copy.scale * x_scale);
    // One block a tile of gate's rows and the same tile of up's: the grid of gate's rows.
    let (lc, chunks_per_warp) = gemm_rows_grid(be, &GemmConfig { m: cfg.m / 2, ..cfg });
    let f = &be.fixed.gemm_f16_rows_swiglu[usize::from(n_x > 8)];
    let (m, k, n) = (width as u32, n_cols as u32, n_x as u32);
    if parts != 0 {
        NORM_SOURCE_GEMMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    launch!(ctx, f, "gemm_f16_rows_swiglu", lc, &a, &converted, &out, &m, &k, &n, &cfg.alpha, &X_F16_SCALE, &chunks_per_warp, &parts, &input.eps)
        .map_err(|e| CudaError::Driver { op: format!("the stacked GEMM with SwiGLU for {} ({} x {n_cols} by {n_x} rows)", member_names(&weights), 2 * width), msg: e.to_string() })?;
    STACKED_GEMMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    SWIGLU_GEMMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Some(out))
}

/// Stacked gate/up GEMMs with SwiGLU in them ([`stacked_swiglu_rows`]) launched by this process
/// (directly, not counting graph replays), for the tests (`_cuda_counters`).
pub static SWIGLU_GEMMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `FERRITE_CUDA_SWIGLU_GEMM=0`: the stacked gate/up GEMM of 1-16 rows writes float32 and
/// SwiGLU keeps a launch of its own ([`stacked_swiglu_rows`]). Read when a backend is made.
pub(super) fn swiglu_gemm_enabled() -> bool {
    std::env::var("FERRITE_CUDA_SWIGLU_GEMM").map_or(true, |v| v != "0")
}

/// Test hook: `out[t][r] = alpha * Σ_c w[r][c] x[t][c]` (`+ start[t][r]` with `start`) for f16
/// bits `w` (m x k) and `x` (n x k), on gemm_f16_rows.cu (`rows_kernel`; an error if it does
/// not take the shape) or cuBLAS, as the f16 GEMM path poses them; returns `out` (n x m).
#[allow(clippy::too_many_arguments)]
pub fn test_gemm_f16(device: &str, w: &[u16], m: usize, k: usize, x: &[u16], n: usize, start: Option<&[f32]>, alpha: f32, rows_kernel: bool) -> Result<Vec<f32>, BackendError> {
    let invalid = |msg: String| BackendError::Invalid(msg);
    let (w_len, x_len, out_len) = (m.checked_mul(k), n.checked_mul(k), n.checked_mul(m));
    if w_len != Some(w.len()) || x_len != Some(x.len()) || start.is_some_and(|s| Some(s.len()) != out_len) || w.is_empty() || x.is_empty() {
        return Err(invalid(format!("gemm of {m} x {k} by {n} rows: got {} weights, {} x values, {:?} start values", w.len(), x.len(), start.map(<[f32]>::len))));
    }
    let mut be = CudaBackend::new(device, false)?;
    be.gemm_rows_max_bytes = if rows_kernel { usize::MAX } else { 0 };
    let ctx = be.ctx.clone();
    let (w_dev, x_dev) = (ctx.upload(w, "test f16 weights")?, ctx.upload(x, "test f16 x")?);
    let out = match start {
        Some(s) => ctx.upload(s, "test output")?,
        None => ctx.alloc_zeros::<f32>(n * m, "test output")?,
    };
    let write = if start.is_some() { Write::Accumulate } else { Write::Overwrite };
    let mut cfg = gemm_config("test", m, n, k, m, write)?;
    cfg.alpha = alpha;
    let (a, b, c) = (addr(&w_dev, &ctx), addr(&x_dev, &ctx), addr(&out, &ctx));
    if rows_kernel && !gemm_rows(&be, &cfg, a, b, c, &RowsNorm::default()).map_err(invalid)? {
        return Err(invalid(format!("gemm_f16_rows does not take {m} x {k} by {n} rows (1-16 rows, k a multiple of 32)")));
    }
    if !rows_kernel {
        gemm_f16_raw(&be, cfg, a, b, c).map_err(invalid)?;
    }
    Ok(ctx.download(&out, "test output")?)
}

/// Test hook: the norm moved around gemm_f16_rows.cu ([`NormSource`]) on f16 bits. The
/// producer adds `alpha * w x` onto `start` (n x m) and writes x's source; the consumer then
/// multiplies `w_next` (m_next x m) by that source, times `alpha_next` and the rows' 1 / rms
/// (`eps`). Returns the new x (n x m), the source's f16 bits (times `NORM_SOURCE_F16_SCALE`, n x
/// m) and the consumer's output (n x m_next).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn test_gemm_f16_norm(
    device: &str,
    w: &[u16],
    (m, k): (usize, usize),
    x: &[u16],
    n: usize,
    start: &[f32],
    alpha: f32,
    w_next: &[u16],
    m_next: usize,
    alpha_next: f32,
    eps: f32,
) -> Result<(Vec<f32>, Vec<u16>, Vec<f32>), BackendError> {
    let invalid = |msg: String| BackendError::Invalid(msg);
    let sizes = [(w.len(), m.checked_mul(k)), (x.len(), n.checked_mul(k)), (start.len(), n.checked_mul(m)), (w_next.len(), m_next.checked_mul(m))];
    if sizes.iter().any(|&(got, want)| Some(got) != want) || w.is_empty() || x.is_empty() || w_next.is_empty() {
        return Err(invalid(format!("norm source test of {m} x {k} by {n} rows, then {m_next} rows: the arrays' sizes do not match")));
    }
    let mut be = CudaBackend::new(device, false)?;
    be.gemm_rows_max_bytes = usize::MAX;
    let ctx = be.ctx.clone();
    let (w_dev, x_dev, next_dev) = (ctx.upload(w, "test f16 weights")?, ctx.upload(x, "test f16 x")?, ctx.upload(w_next, "test next f16 weights")?);
    let acc = ctx.upload(start, "test residual rows")?;
    let out = ctx.alloc_zeros::<f32>(n * m_next, "test consumer output")?;
    let n_parts = m.div_ceil(16);
    let src = ctx.alloc_zeros::<u16>(n * m, "test norm source rows")?;
    let parts = ctx.alloc_zeros::<f64>(n * n_parts, "test norm source sums")?;
    let mut cfg = gemm_config("test producer", m, n, k, m, Write::Accumulate)?;
    cfg.alpha = alpha;
    let producer = RowsNorm { src_f16: addr(&src, &ctx), src_scale: NORM_SOURCE_F16_SCALE, out_parts: addr(&parts, &ctx), ..RowsNorm::default() };
    let taken = gemm_rows(&be, &cfg, addr(&w_dev, &ctx), addr(&x_dev, &ctx), addr(&acc, &ctx), &producer).map_err(invalid)?;
    let mut next = gemm_config("test consumer", m_next, n, m, m_next, Write::Overwrite)?;
    next.alpha = alpha_next;
    let consumer = RowsNorm::consumer(addr(&parts, &ctx), eps);
    let taken_next = taken && gemm_rows(&be, &next, addr(&next_dev, &ctx), addr(&src, &ctx), addr(&out, &ctx), &consumer).map_err(invalid)?;
    if !taken_next {
        return Err(invalid(format!("gemm_f16_rows does not take {m} x {k} then {m_next} x {m} by {n} rows (1-16 rows, k a multiple of 32)")));
    }
    Ok((ctx.download(&acc, "test residual rows")?, ctx.download(&src, "test norm source rows")?, ctx.download(&out, "test consumer output")?))
}

/// C = alpha * op(A) op(B) + beta * C with A and B f16 (A: the weight's bits, B: at device
/// address `x_f16`), float32 sums and float32 C (cublasGemmEx, CUBLAS_COMPUTE_32F).
fn gemm_f16(be: &CudaBackend, cfg: GemmConfig<f32>, a_bits: &CudaSlice<u16>, x_f16: u64, c: &mut CudaSlice<f32>) -> Result<(), String> {
    gemm_f16_raw(be, cfg, addr(a_bits, &be.ctx), x_f16, addr(c, &be.ctx))
}

/// [`gemm_f16`] on device addresses: `a` of m x k f16 values, `x_f16` of n x k, `c_ptr` of n x
/// ldc floats (the callers size them).
fn gemm_f16_raw(be: &CudaBackend, cfg: GemmConfig<f32>, a: u64, x_f16: u64, c_ptr: u64) -> Result<(), String> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasGemmEx, cublasStatus_t, cudaDataType};
    if gemm_rows(be, &cfg, a, x_f16, c_ptr, &RowsNorm::default())? {
        return Ok(());
    }
    // SAFETY: a holds m x k f16 values (a whole weight or a stack of them), x_f16 at least n x k
    // (converted for this input), c n x ldc floats (the caller's output buffer, sized by the forward
    // pass or `stacked_out`); alpha and beta are read during the call (host pointer mode; a
    // recorded graph keeps the values).
    let status = unsafe {
        cublasGemmEx(
            *be.blas.handle(),
            cfg.transa,
            cfg.transb,
            cfg.m,
            cfg.n,
            cfg.k,
            (&cfg.alpha as *const f32).cast(),
            a as *const std::ffi::c_void,
            cudaDataType::CUDA_R_16F,
            cfg.lda,
            x_f16 as *const std::ffi::c_void,
            cudaDataType::CUDA_R_16F,
            cfg.ldb,
            (&cfg.beta as *const f32).cast(),
            c_ptr as *mut std::ffi::c_void,
            cudaDataType::CUDA_R_32F,
            cfg.ldc,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    };
    match status {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        other => Err(format!("cublasGemmEx: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::f16_scale;

    /// The rows rules on the real models' shapes: the 0.5B (width 896) keeps every weight at 4
    /// rows but its Q8_0 LM head (151,936 x 896) at 8; a 7B (width 3584) takes every weight to 8;
    /// an untiled head, the float32 GEMM and `FERRITE_CUDA_MATVEC_MAX_ROWS` keep the plain rows.
    #[test]
    fn wide_models_and_huge_tiled_heads_take_the_kernels_further() {
        let rules = super::RowRules { wide_rows: 8, huge_rows: 8, forced: false };
        let head_05 = 151_936 * 896;
        assert_eq!(rules.max_rows(4, false, 896, 4864 * 896, true), 4, "0.5B gate");
        assert_eq!(rules.max_rows(4, false, 896, 896 * 4864, true), 4, "0.5B down");
        assert_eq!(rules.max_rows(4, false, 896, head_05, true), 8, "0.5B Q8_0 head");
        assert_eq!(rules.max_rows(4, false, 896, head_05, false), 4, "an untiled (F16) head");
        assert_eq!(rules.max_rows(4, false, 3584, 512 * 3584, true), 8, "7B k");
        assert_eq!(rules.max_rows(4, false, 3584, 18_944 * 3584, true), 8, "7B gate");
        assert_eq!(rules.max_rows(2, true, 3584, head_05, true), 2, "float32 GEMM");
        let forced = super::RowRules { forced: true, ..rules };
        assert_eq!(forced.max_rows(6, false, 3584, head_05, true), 6, "forced rows decide alone");
        let off = super::RowRules { wide_rows: 4, huge_rows: 0, forced: false };
        assert_eq!(off.max_rows(4, false, 3584, head_05, true), 4, "rules at 4 or less change nothing");
        assert_eq!(rules.max_rows(4, false, 0, 0, true), 4, "before the KV cache the width is unknown (0)");
    }

    #[test]
    fn the_f16_scale_is_a_power_of_two_that_keeps_the_largest_weight_in_range() {
        for max in [1e-6f32, 0.02, 0.5, 1.0, 3.0, 1000.0, 60000.0, 1e9] {
            let s = f16_scale(max);
            assert_eq!(s.log2().fract(), 0.0, "{max}: {s}");
            let scaled = max * s;
            assert!(scaled <= super::W_F16_TARGET_MAX && scaled > super::W_F16_TARGET_MAX / 2.0, "{max} -> {scaled}");
        }
        for bad in [0.0f32, f32::INFINITY, f32::NAN] {
            assert_eq!(f16_scale(bad), 1.0);
        }
    }

    /// Which groups stack, on the shapes the H200 measurements behind the rule were taken with:
    /// q/k/v of both models and the 0.5B's gate/up (small weights next to them), not the 7B's
    /// gate/up (stacked, cuBLAS took 72.4 us against 72.9 apart at 64 rows) nor single weights.
    #[test]
    fn groups_with_a_small_weight_stack() {
        use super::stack_shapes_qualify;
        let stack: [&[(usize, usize)]; 3] = [&[(896, 896), (128, 896), (128, 896)], &[(3584, 3584), (512, 3584), (512, 3584)], &[(4864, 896), (4864, 896)]];
        for group in stack {
            assert!(stack_shapes_qualify(group), "{group:?}");
        }
        let apart: [&[(usize, usize)]; 6] = [
            &[(18944, 3584), (18944, 3584)],
            &[(896, 896)],
            &[(151936, 896)],
            &[],
            &[(128, 896), (128, 896), (128, 896), (128, 896)],
            &[(896, 896), (128, 448)],
        ];
        for group in apart {
            assert!(!stack_shapes_qualify(group), "{group:?}");
        }
    }
}
