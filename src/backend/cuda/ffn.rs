//! The feed-forward block of one or two rows as one launch: matvec_mma.cu's `ffn_mma_1` and
//! `ffn_mma_2` (compiled with `-DMMA_FFN=1`), which compute `x += down(silu(gate(n)) * up(n))`,
//! `n = rms_norm(x)`, where a decode step of one or two sequences otherwise takes two launches
//! (gate/up, then ffn_down with its split-K round trip). See the kernel's comment for how the
//! work is dealt out.
//!
//! Which models take it ([`FfnShape::takes`]): gate and up of one tiled type, ffn_down tiled, all
//! on the int8 path, an intermediate size that is a multiple of 256 and a hidden size whose weights
//! a block holds in registers ([`MAX_COLS`]): the 0.5B's shapes, not a 7B's; one or two rows
//! ([`FfnShape::takes_rows`]); GPUs of compute capability 9.0 or later (clusters: [`runs_on`]).
//! `FERRITE_CUDA_FFN` picks the rows that take it (for A/B): `fused` (one and two, the default),
//! `one` (one row only) or `off` (the two launches always).

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig};

use super::context::CudaContext;
use super::error::CudaError;
use super::kernels;
use super::launch::launch;
use super::repack::{self, TILE_ROWS};
use crate::quant::GgmlType;

/// Blocks of a cluster, intermediate columns a cluster, and the most columns of x (matvec_mma.cu's
/// FFN_RANKS, FFN_SLICE, FFN_MAX_COLS: two warps' gate/up tiles, 8 ffn_down tile rows a block, and
/// two rows' staging jobs, one a warp).
pub const RANKS: usize = 8;
pub const SLICE: usize = 256;
pub const MAX_COLS: usize = 1024;

/// Whether a GPU of compute capability `cc` runs the kernel (clusters and distributed shared
/// memory: sm_90 on; the module holds no kernel before it).
pub fn runs_on(cc: (u32, u32)) -> bool {
    cc >= (9, 0)
}

/// Threads a block (matvec_mma.cu's MMA_MAX_WARPS warps).
const BLOCK_THREADS: u32 = 256;

/// Launches of the fused kernel by this process (not counting graph replays), for tests to see
/// that it ran (`_cuda_counters`).
pub static FFN_LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The most rows of x FFN blocks take the fused kernel at, where they can: FERRITE_CUDA_FFN
/// (`fused`, the default: 2; `one`: 1; `off`: 0). Read when a backend is made. H100, 2026-12-07
/// (docs/BENCHMARKS.md, forty-fifth session): the 0.5B shapes' decode step 0.716 / 0.711 -> 0.691 /
/// 0.690 ms at one sequence, 0.781 / 0.778 -> 0.719 / 0.724 at two.
pub fn max_rows() -> Result<usize, CudaError> {
    match std::env::var("FERRITE_CUDA_FFN").as_deref() {
        Err(_) | Ok("") | Ok("fused") => Ok(KERNEL_ROWS),
        Ok("one") => Ok(1),
        Ok("off") => Ok(0),
        Ok(other) => Err(CudaError::Invalid(format!("FERRITE_CUDA_FFN={other:?}: expected \"fused\", \"one\" or \"off\""))),
    }
}

/// Rows of x the kernels hold: `ffn_mma_1` and `ffn_mma_2`.
pub const KERNEL_ROWS: usize = 2;

/// An FFN block's types and sizes: gate and up are `n_inter` x `n_cols` of `gate_up`, ffn_down
/// `n_cols` x `n_inter` of `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FfnShape {
    pub gate_up: GgmlType,
    pub down: GgmlType,
    pub n_cols: usize,
    pub n_inter: usize,
}

impl FfnShape {
    /// Whether the kernels compute this block at one row (see the module docs).
    pub fn takes(&self) -> bool {
        self.takes_rows(1)
    }

    /// Whether the kernel for `rows` rows of x (one or two) takes this block: [`takes`](Self::takes),
    /// with both types on the int8 path at `rows` rows (the kernel has no other).
    pub fn takes_rows(&self, rows: usize) -> bool {
        let (Some(gu), Some(d)) = (repack::tile_format(self.gate_up), repack::tile_format(self.down)) else { return false };
        let int8 = |ty| kernels::int8_max_rows(ty).is_some_and(|most| most >= rows);
        (1..=KERNEL_ROWS).contains(&rows)
            && int8(self.gate_up)
            && int8(self.down)
            && self.n_cols > 0
            && self.n_cols.is_multiple_of(gu.tile_cols)
            && self.n_cols.is_multiple_of(TILE_ROWS)
            && self.n_cols <= MAX_COLS
            && self.n_inter > 0
            && self.n_inter.is_multiple_of(SLICE)
            && SLICE.is_multiple_of(d.tile_cols)
            && u32::try_from(self.n_inter).is_ok()
    }

    /// Clusters of the grid: one a slice of intermediate columns.
    fn slices(&self) -> usize {
        self.n_inter / SLICE
    }
}

/// The fused kernel of one (gate/up type, ffn_down type) and its split sums' scratch, sized at
/// load for the model's shape (a recorded step holds their addresses).
pub struct FfnKernels {
    shape: FfnShape,
    /// `ffn_mma_1`, `ffn_mma_2`.
    functions: [CudaFunction; KERNEL_ROWS],
    partials: CudaSlice<f32>,
    /// One a rank, zero between launches (the last block of a rank's rows resets its own).
    counters: CudaSlice<u32>,
}

impl FfnKernels {
    /// Compiles (or loads from the disk cache) the kernels for `shape`'s types and makes their scratch;
    /// an error if the kernel does not take `shape` or the GPU cannot run it.
    pub fn new(ctx: &CudaContext, shape: FfnShape) -> Result<FfnKernels, CudaError> {
        if !shape.takes() || !runs_on(ctx.compute_capability()) {
            return Err(CudaError::Invalid(format!("the fused FFN kernel does not take {shape:?} on {ctx:?}")));
        }
        let defines = kernels::ffn_defines(shape.gate_up, shape.down)
            .ok_or_else(|| CudaError::Invalid(format!("no fused FFN kernel for {} and {}", shape.gate_up, shape.down)))?;
        let functions = [ctx.function_with(&kernels::MATVEC_MMA, &defines, "ffn_mma_1")?, ctx.function_with(&kernels::MATVEC_MMA, &defines, "ffn_mma_2")?];
        let partials = ctx.alloc::<f32>(shape.slices() * KERNEL_ROWS * shape.n_cols, "the fused FFN's split sums")?;
        let counters = ctx.alloc_zeros::<u32>(RANKS, "the fused FFN's counters")?;
        Ok(FfnKernels { shape, functions, partials, counters })
    }

    /// Queues `x += down(silu(gate(n)) * up(n))` with `n = rms_norm(x) * norm_w` for `rows` rows
    /// of `shape.n_cols` floats at device address `x`. The weights are device addresses of repacked
    /// tiles of the shape's grids and `norm_w` of `n_cols` floats; the caller checks their sizes.
    pub fn launch(&self, ctx: &CudaContext, rows: usize, [gate, up, down]: [u64; 3], x: u64, norm_w: u64, eps: f32) -> Result<(), CudaError> {
        let s = self.shape;
        if !s.takes_rows(rows) {
            return Err(CudaError::Invalid(format!("the fused FFN kernel does not take {rows} rows of {s:?}")));
        }
        let cfg = LaunchConfig { grid_dim: ((s.slices() * RANKS) as u32, 1, 1), block_dim: (BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        let (n_cols, n_inter) = (s.n_cols as u32, s.n_inter as u32);
        launch!(ctx, &self.functions[rows - 1], "ffn_mma", cfg, &gate, &up, &down, &n_cols, &n_inter, &x, &norm_w, &eps, &self.partials, &self.counters)?;
        FFN_LAUNCHES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(gate_up: GgmlType, down: GgmlType, n_cols: usize, n_inter: usize) -> FfnShape {
        FfnShape { gate_up, down, n_cols, n_inter }
    }

    #[test]
    fn takes_the_half_b_model_and_not_a_7b() {
        // Qwen2.5-0.5B's Q4_K_M: Q5_0 gate/up, Q4_K or Q6_K ffn_down, 896 x 4864.
        assert!(shape(GgmlType::Q5_0, GgmlType::Q4_K, 896, 4864).takes());
        assert!(shape(GgmlType::Q5_0, GgmlType::Q6_K, 896, 4864).takes());
        assert!(shape(GgmlType::Q8_0, GgmlType::Q8_0, 896, 4864).takes());
        // A 7B's 3584 columns: more than a block's registers hold.
        assert!(!shape(GgmlType::Q4_K, GgmlType::Q6_K, 3584, 18944).takes());
        // 1024 columns are the most (8 tiles of 128 columns, 64 ffn_down tile rows).
        assert!(shape(GgmlType::Q5_0, GgmlType::Q5_0, 1024, 2816).takes());
        assert!(!shape(GgmlType::Q5_0, GgmlType::Q4_K, 1152, 4864).takes());
        // An intermediate size off the 256-column slices, or a type without tiles.
        assert!(!shape(GgmlType::Q5_0, GgmlType::Q4_K, 896, 4800).takes());
        assert!(!shape(GgmlType::F32, GgmlType::Q4_K, 896, 4864).takes());
        assert!(!shape(GgmlType::Q5_0, GgmlType::IQ4_XS, 896, 4864).takes());
        assert!(shape(GgmlType::Q4_K, GgmlType::Q4_K, 1024, 4864).takes());
        assert!(!shape(GgmlType::Q4_K, GgmlType::Q4_K, 2048, 4864).takes());
        // One or two rows of x.
        assert!(shape(GgmlType::Q5_0, GgmlType::Q4_K, 896, 4864).takes_rows(2));
        assert!(!shape(GgmlType::Q5_0, GgmlType::Q4_K, 896, 4864).takes_rows(3));
        assert!(!shape(GgmlType::Q5_0, GgmlType::Q4_K, 896, 4864).takes_rows(0));
        // Clusters: sm_90 on.
        assert!(runs_on((9, 0)) && runs_on((10, 0)) && !runs_on((8, 9)) && !runs_on((8, 0)));
    }

    /// The host's constants are the kernel's.
    #[test]
    fn constants_match_the_kernel() {
        let src = kernels::MATVEC_MMA.src;
        assert!(src.contains(&format!("constexpr int FFN_RANKS = {RANKS}, FFN_SLICE = {SLICE}, FFN_H_PER_RANK = FFN_SLICE / FFN_RANKS, FFN_MAX_COLS = {MAX_COLS};")));
        assert!(src.contains(&format!("#define MMA_MAX_WARPS {}", BLOCK_THREADS / 32)));
        for rows in 1..=KERNEL_ROWS {
            assert!(src.contains(&format!("FFN_MMA_KERNEL({rows})")), "ffn_mma_{rows}");
        }
    }
}
