//! Projections of many rows of x (batches of 9 or more sequences, prompt chunks) on the repacked
//! tiles: the launch of kernels/matmul_mma.cu, which multiplies the quantized tiles with f16 x on
//! the tensor cores, instead of cuBLAS on an f16 copy of every weight (see `matmul`).
//!
//! Work split ([`MmqPlan`]): a block is `MMQ_WARPS` tile rows (128 weight rows) by `MMQ_X_ROWS`
//! rows of x; when the matrix has too few block rows to give every SM several blocks, the columns are
//! split over `blockIdx.z` (up to `MMQ_TARGET_WAVES` waves) and the last block of each (block row, x block) adds the partial sums
//! in a fixed order, in the split-K scratch the matrix-vector kernels of the type also use
//! (`matvec::SplitScratch`, sized at load for every plan up to [`MMQ_MAX_ROWS`]).

use cudarc::driver::LaunchConfig;

use super::backend::launch;
use super::context::CudaContext;
use super::error::CudaError;
use super::matvec::TiledKernels;
use super::repack::{TileGrid, TILE_ROWS};

/// Tile rows (warps) per block (MMQ_WARPS in matmul_mma.cu).
pub const MMQ_WARPS: usize = 8;
/// Rows of x per block (MMQ_X_ROWS): each warp's decoded tile feeds 4 mma columns of 8 rows.
/// 64 (8 columns, half the decoding per product) took 170-190 registers a thread, one block an
/// SM, and ran slower (H200, 2026-12-03, `benches/bench_cuda_gemm.py`, µs at 64 rows: 7B
/// gate/up Q4_K 103.9 against 79.3, q/o 32.8 against 25.7, down Q6_K 80.5 against 79.1): the
/// kernel is latency-bound, and half the warps an SM hid less of it.
pub const MMQ_X_ROWS: usize = 32;
/// Columns of x staged at once (MMQ_PHASE).
pub const MMQ_PHASE_COLS: usize = 256;
/// Blocks of the kernel an SM holds at once (MMQ_MIN_BLOCKS, its launch bound).
const MMQ_BLOCKS_PER_SM: usize = 2;
/// Waves of blocks a plan aims for: with one or two, a last wave that is barely begun costs
/// as much as a full one (ncu, H200: a 18944 x 3584 Q4_K at 64 rows, 296 blocks for 264 slots,
/// ran 1.12 waves in about the time of two).
const MMQ_TARGET_WAVES: usize = 4;
/// Most column splits of a plan: the last block of each (block row, x block) adds all of them,
/// so each split costs that block a round of loads. Swept on an H200 (2026-12-03,
/// `FERRITE_CUDA_MMQ_MAX_SPLITS=64/8/4/2 benches/bench_cuda_gemm.py`, docs/results/h200-2026-12-03g/splits):
/// at 64 rows of x, a 7B layer's Q4_K projections took 325 us with at most 4 splits, 336 with 8,
/// 368 with 64 (q/o 25.5 against 38.4 us; gate/up unchanged, they need few), and 2 lost 27-84 %
/// on the wide ffn_down.
const MMQ_MAX_SPLITS: usize = 4;

/// `FERRITE_CUDA_MMQ_MAX_SPLITS=N` caps the splits of every plan made after the first read (a
/// benchmark hook, read once a process: benches/bench_cuda_gemm.py beside the same command without
/// it); unset, `MMQ_MAX_SPLITS`.
fn max_splits() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| std::env::var("FERRITE_CUDA_MMQ_MAX_SPLITS").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0).unwrap_or(MMQ_MAX_SPLITS))
}

/// Most rows of x a launch takes: plans (and their split-K scratch) are sized for up to this
/// many. Larger prompt chunks go through cuBLAS (`matmul`), whose f16 GEMM is compute-bound there.
pub const MMQ_MAX_ROWS: usize = 512;

/// The launch shape of one matrix for `n_x` rows of x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmqPlan {
    /// Blocks along x's rows (`gridDim.x`).
    pub x_blocks: u32,
    /// Blocks along the weight's rows (`gridDim.y`).
    pub block_rows: u32,
    /// Column splits (`gridDim.z`); 1 = none.
    pub splits: u32,
    pub k_tiles_per_split: u32,
}

impl MmqPlan {
    /// Splits the columns until the grid has `MMQ_TARGET_WAVES` waves of `MMQ_BLOCKS_PER_SM`
    /// blocks an SM, each split at least one phase of columns long.
    pub fn new(grid: &TileGrid, sms: usize, n_x: usize) -> MmqPlan {
        let block_rows = grid.m_tiles.div_ceil(MMQ_WARPS).max(1);
        let x_blocks = n_x.div_ceil(MMQ_X_ROWS).max(1);
        let blocks = block_rows * x_blocks;
        let k = grid.k_tiles.max(1);
        let phase_tiles = (MMQ_PHASE_COLS / grid.format.tile_cols).max(1);
        let target = MMQ_TARGET_WAVES * MMQ_BLOCKS_PER_SM * sms.max(1);
        let splits = if blocks >= target { 1 } else { target.div_ceil(blocks).min((k / phase_tiles).max(1)).min(max_splits()) };
        let per = k.div_ceil(splits);
        MmqPlan { x_blocks: x_blocks as u32, block_rows: block_rows as u32, splits: k.div_ceil(per) as u32, k_tiles_per_split: per as u32 }
    }

    /// Floats of partial sums the plan needs (0 without a split): `[split][x row][weight row]`,
    /// both row counts padded to whole blocks.
    pub fn partial_floats(&self) -> usize {
        if self.splits > 1 {
            self.splits as usize * self.x_blocks as usize * MMQ_X_ROWS * self.block_rows as usize * MMQ_WARPS * TILE_ROWS
        } else {
            0
        }
    }

    /// Split-K counters the plan needs: one per (block row, x block).
    pub fn counters(&self) -> usize {
        if self.splits > 1 {
            self.block_rows as usize * self.x_blocks as usize
        } else {
            0
        }
    }

    /// The largest (partial floats, counters) of the plans of `grid` for 1 to `MMQ_MAX_ROWS` rows.
    pub fn scratch_bound(grid: &TileGrid, sms: usize) -> (usize, usize) {
        (1..=MMQ_MAX_ROWS.div_ceil(MMQ_X_ROWS))
            .map(|b| MmqPlan::new(grid, sms, b * MMQ_X_ROWS))
            .fold((0, 0), |(f, c), p| (f.max(p.partial_floats()), c.max(p.counters())))
    }
}

/// One projection as the kernel takes it. Device addresses; sizes are the caller's to check
/// (`x_f16` holds `n_x * grid.n_cols` f16 values, `out` `n_x * grid.n_rows` floats).
pub struct MmqArgs<'a> {
    pub name: &'a str,
    pub grid: TileGrid,
    pub tiles: u64,
    pub x_f16: u64,
    pub n_x: usize,
    /// `n_rows` floats, or 0.
    pub bias: u64,
    pub out: u64,
    /// The products are multiplied by this (x's f16 scale undone).
    pub out_scale: f32,
    /// Add to what `out` holds (the residual connection) instead of overwriting.
    pub accumulate: bool,
}

/// Queues `out[n][r] = out_scale * Σ_c W[r][c] x_f16[n][c] (+ bias[r])` (or `+=`) for `n < n_x`.
pub fn launch_matmul_mma(ctx: &CudaContext, tiled: &TiledKernels, a: &MmqArgs<'_>) -> Result<(), CudaError> {
    let g = &a.grid;
    if a.n_x == 0 || a.n_x > MMQ_MAX_ROWS {
        return Err(CudaError::Invalid(format!("{}: {} rows of x (the quantized GEMM takes 1..={MMQ_MAX_ROWS})", a.name, a.n_x)));
    }
    if !g.n_cols.is_multiple_of(32) || u32::try_from(g.n_rows).is_err() || u32::try_from(g.n_cols).is_err() {
        return Err(CudaError::Invalid(format!("{}: a {} x {} matrix does not fit the quantized GEMM", a.name, g.n_rows, g.n_cols)));
    }
    let plan = MmqPlan::new(g, tiled.sms, a.n_x);
    let (partials, counters) = tiled
        .scratch
        .lock()
        .map_err(|_| CudaError::Invalid("split-K scratch lock poisoned".into()))?
        .pointers_for(ctx, plan.partial_floats(), plan.counters())
        .map_err(|e| CudaError::Invalid(format!("{}: {e}", a.name)))?;
    let cfg = LaunchConfig { grid_dim: (plan.x_blocks, plan.block_rows, plan.splits), block_dim: (32 * MMQ_WARPS as u32, 1, 1), shared_mem_bytes: 0 };
    let (m_tiles, n_rows, k_tiles, n_cols, n_x) = (g.m_tiles as u32, g.n_rows as u32, g.k_tiles as u32, g.n_cols as u32, a.n_x as u32);
    let accumulate = a.accumulate as u32;
    launch!(
        ctx, &tiled.matmul, "matmul_mma", cfg,
        &a.tiles, &m_tiles, &n_rows, &k_tiles, &n_cols, &a.x_f16, &n_x, &a.bias, &a.out, &a.out_scale, &accumulate,
        &partials, &counters, &plan.k_tiles_per_split
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::repack::tile_format;
    use crate::quant::GgmlType;

    fn grid(ty: GgmlType, rows: usize, cols: usize) -> TileGrid {
        TileGrid::new(tile_format(ty).expect("tiled type"), rows, cols)
    }

    /// Every plan covers the rows and columns once, fills the H200 where the matrix allows, and
    /// keeps a phase per split; the scratch bound covers every row count.
    #[test]
    fn plans_cover_the_matrix_and_fill_the_gpu() {
        let shapes = [
            (GgmlType::Q4_K, 3584, 3584),
            (GgmlType::Q4_K, 512, 3584),
            (GgmlType::Q6_K, 3584, 18944),
            (GgmlType::Q4_K, 18944, 3584),
            (GgmlType::Q5_0, 896, 896),
            (GgmlType::Q8_0, 151936, 896),
            (GgmlType::Q5_0, 16, 64),
        ];
        for (ty, rows, cols) in shapes {
            let g = grid(ty, rows, cols);
            let (floats, counters) = MmqPlan::scratch_bound(&g, 132);
            for n_x in [1, 9, 31, 32, 33, 64, 100, 128, 256, 511, 512] {
                let p = MmqPlan::new(&g, 132, n_x);
                let label = format!("{ty} {rows}x{cols} n_x={n_x}: {p:?}");
                assert!(p.x_blocks as usize * MMQ_X_ROWS >= n_x && (p.x_blocks as usize - 1) * MMQ_X_ROWS < n_x, "{label}");
                assert!(p.block_rows as usize * MMQ_WARPS >= g.m_tiles, "{label}");
                assert!(p.splits as usize * p.k_tiles_per_split as usize >= g.k_tiles, "{label}");
                assert!((p.splits as usize - 1) * (p.k_tiles_per_split as usize) < g.k_tiles, "{label}: an empty split");
                let phase_tiles = MMQ_PHASE_COLS / g.format.tile_cols;
                assert!(p.splits == 1 || p.k_tiles_per_split as usize >= phase_tiles, "{label}: splits too short");
                assert!(p.partial_floats() <= floats && p.counters() <= counters, "{label}: beyond the scratch bound");
            }
        }
    }
}
