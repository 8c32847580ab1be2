//! A decode step's attention and its output projection as one launch: matvec_mma.cu's
//! `attention_o_rope` (compiled with `-DMMA_ATTN_O=1` and attention's head dim), which computes
//! `x += o · attention(q, K, V)` where a step of one or two sequences otherwise takes two launches
//! (attention, then the o projection with the residual add). The query heads of one token form a
//! cluster of blocks, one head a block; see the kernel's comment for how the projection is dealt
//! out.
//!
//! Which models take it ([`AttnOShape::takes`]): o of a tiled type on the int8 path, at most
//! [`MAX_RANKS`] query heads (the 0.5B's 14, not a 7B's 28) whose outputs fill whole tiles and at
//! most [`MAX_COLS`] columns; GPUs of compute capability 9.0 or later that can hold such a cluster.
//! The step must run attention one head a block without splits (`backend.rs` checks that per step).
//! `FERRITE_CUDA_ATTN_O` picks the rows that take it: `off` (the default until measured), `on` (one
//! and two rows) or `one`.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaFunction, LaunchConfig};

use super::context::CudaContext;
use super::error::CudaError;
use super::kernels;
use super::launch::launch_clustered;
use super::repack::{self, TILE_ROWS};
use crate::backend::KvDtype;
use crate::quant::GgmlType;

/// The most blocks of a cluster (query heads), columns of o and jobs of a block (matvec_mma.cu's
/// AO_MAX_RANKS, AO_MAX_COLS, AO_MAX_JOBS).
pub const MAX_RANKS: usize = 16;
pub const MAX_COLS: usize = 2048;
const MAX_JOBS: usize = 32;
/// The most bytes of o's tiles a block copies into its shared memory (beside attention's scratch, at
/// most 16 KB, and the kernel's 26 KB of static shared memory, within the 227 KB a block may have on
/// sm_90).
pub const MAX_TILE_BYTES: usize = 128 * 1024;

/// Launches of the kernel by this process (not counting graph replays), for tests to see that it
/// ran (`_cuda_counters`).
pub static ATTN_O_LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Whether a GPU of compute capability `cc` runs the kernel (clusters and distributed shared
/// memory: sm_90 on; the module holds no kernel before it).
pub fn runs_on(cc: (u32, u32)) -> bool {
    cc >= (9, 0)
}

/// The most rows (sequences of a decode step) that take the kernel: FERRITE_CUDA_ATTN_O (`off`,
/// the default: 0; `on`: 2; `one`: 1). Read when a backend is made.
pub fn max_rows() -> Result<usize, CudaError> {
    match std::env::var("FERRITE_CUDA_ATTN_O").as_deref() {
        Err(_) | Ok("") | Ok("off") => Ok(0),
        Ok("on") => Ok(2),
        Ok("one") => Ok(1),
        Ok(other) => Err(CudaError::Invalid(format!("FERRITE_CUDA_ATTN_O={other:?}: expected \"off\", \"on\" or \"one\""))),
    }
}

/// A layer's attention and o projection: o is `o_rows` x (`n_heads` x `head_dim`) of `o_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttnOShape {
    pub o_type: GgmlType,
    pub head_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub o_rows: usize,
    pub kv_dtype: KvDtype,
}

impl AttnOShape {
    /// Whether the kernel computes this shape (see the module docs).
    pub fn takes(&self) -> bool {
        let Some(f) = repack::tile_format(self.o_type) else { return false };
        let n_cols = self.n_heads * self.head_dim;
        let m_tiles = self.o_rows / TILE_ROWS;
        let per_rank = m_tiles.div_ceil(self.n_heads.max(1));
        kernels::int8_max_rows(self.o_type).is_some_and(|most| most >= 1)
            && (1..=MAX_RANKS).contains(&self.n_heads)
            && self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && self.head_dim.is_multiple_of(32)
            && n_cols <= MAX_COLS
            && n_cols.is_multiple_of(f.tile_cols)
            && self.o_rows > 0
            && self.o_rows.is_multiple_of(TILE_ROWS)
            && per_rank <= MAX_JOBS
            && per_rank * (n_cols / f.tile_cols) * f.tile_bytes <= MAX_TILE_BYTES
            && u32::try_from(self.o_rows).is_ok()
            && kernels::attn_o_defines(self.o_type, self.head_dim, self.kv_dtype).is_some()
    }

    /// Bytes of o's tiles a block copies into shared memory (the most: a full share of tile rows).
    fn tile_bytes(&self) -> u32 {
        let f = repack::tile_format(self.o_type).expect("a tiled type (takes)");
        let per_rank = (self.o_rows / TILE_ROWS).div_ceil(self.n_heads);
        (per_rank * (self.n_heads * self.head_dim / f.tile_cols) * f.tile_bytes) as u32
    }

    /// The cluster: every query head of a token (the grid is tokens x KV heads x heads a KV head).
    fn cluster(&self) -> (u32, u32, u32) {
        (1, self.n_kv_heads as u32, (self.n_heads / self.n_kv_heads) as u32)
    }
}

/// The kernel of one shape, loaded.
pub struct AttnOKernel {
    shape: AttnOShape,
    function: CudaFunction,
}

impl AttnOKernel {
    /// Compiles (or loads from the disk cache) the kernel for `shape`, allows it the dynamic shared
    /// memory of attention's scratch at its most (`most_attention_bytes`, at its most warps) and the
    /// most tiles of any shape after it (the function is shared by every shape of its defines), and
    /// checks that the GPU can hold one of its clusters at `max_threads` threads a block: `Ok(None)`
    /// where it cannot or refuses the attributes (the two launches then run), an error where the
    /// kernel does not take `shape` or the GPU cannot run it.
    pub fn new(ctx: &CudaContext, shape: AttnOShape, most_attention_bytes: u32, max_threads: u32) -> Result<Option<AttnOKernel>, CudaError> {
        if !shape.takes() || !runs_on(ctx.compute_capability()) {
            return Err(CudaError::Invalid(format!("the attention-with-o kernel does not take {shape:?} on {ctx:?}")));
        }
        let defines = kernels::attn_o_defines(shape.o_type, shape.head_dim, shape.kv_dtype)
            .ok_or_else(|| CudaError::Invalid(format!("no attention-with-o kernel for {shape:?}")))?;
        let function = ctx.function_with(&kernels::MATVEC_MMA, &defines, "attention_o_rope")?;
        let cluster = shape.cluster();
        // A GPU that refuses the shared memory or the cluster's size (sm_90 parts with less shared
        // memory, or no clusters of 16) keeps the two launches.
        let allowed = super::launch::allow_dynamic_shared(&function, "attention_o_rope", tiles_offset(most_attention_bytes) + MAX_TILE_BYTES as u32)
            .and_then(|()| super::launch::allow_cluster(&function, "attention_o_rope", cluster.0 * cluster.1 * cluster.2));
        if allowed.is_err() {
            return Ok(None);
        }
        let shared_mem_bytes = tiles_offset(most_attention_bytes) + shape.tile_bytes();
        let cfg = LaunchConfig { grid_dim: cluster, block_dim: (max_threads, 1, 1), shared_mem_bytes };
        let fits = ctx.max_active_clusters(&function, cfg, cluster).unwrap_or(0);
        Ok((fits > 0).then_some(AttnOKernel { shape, function }))
    }

    /// Queues the kernel: `cfg` is attention's launch of one head a block without splits (grid:
    /// tokens x KV heads x heads a KV head), `attention` the `attention_heads_rope_1` arguments it
    /// takes (q, caches, batch description, head counts, scale, new k/v, slots, capacity, RoPE,
    /// strides, biases), then o's tiles and the residual rows x (`o_rows` floats a token), which
    /// the caller has checked.
    pub fn launch(&self, ctx: &CudaContext, mut cfg: LaunchConfig, attention: &AttentionArgs, o_tiles: u64, x: u64) -> Result<(), CudaError> {
        let s = self.shape;
        let a = attention;
        let o_rows = s.o_rows as u32;
        // o's tiles after attention's scratch.
        let tiles_offset = tiles_offset(cfg.shared_mem_bytes);
        cfg.shared_mem_bytes = tiles_offset + s.tile_bytes();
        launch_clustered!(
            ctx, &self.function, "attention_o_rope", cfg, s.cluster(),
            &a.q, &a.k_cache, &a.v_cache, &a.positions, &a.table_offset, &a.block_tables, &a.block_tokens, &a.n_heads,
            &a.n_kv_heads, &a.scale, &a.k_new, &a.v_new, &a.slots, &a.capacity, &a.freq_base, &a.rope_scale, &a.neox,
            &a.q_stride, &a.kv_stride, &a.bq, &a.bk, &a.bv, &o_tiles, &o_rows, &x, &tiles_offset
        )?;
        ATTN_O_LAUNCHES.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Where o's tiles start in a launch's dynamic shared memory: past attention's `attention_bytes`,
/// at a 16-byte boundary (the copies' unit).
fn tiles_offset(attention_bytes: u32) -> u32 {
    attention_bytes.next_multiple_of(16)
}

/// The attention arguments of [`AttnOKernel::launch`], as device addresses and scalars.
pub struct AttentionArgs {
    pub q: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    pub positions: u64,
    pub table_offset: u64,
    pub block_tables: u64,
    pub block_tokens: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub scale: f32,
    pub k_new: u64,
    pub v_new: u64,
    pub slots: u64,
    pub capacity: u32,
    pub freq_base: f32,
    pub rope_scale: f32,
    pub neox: u32,
    pub q_stride: u32,
    pub kv_stride: u32,
    pub bq: u64,
    pub bk: u64,
    pub bv: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(o_type: GgmlType, head_dim: usize, n_heads: usize, n_kv_heads: usize, o_rows: usize) -> AttnOShape {
        AttnOShape { o_type, head_dim, n_heads, n_kv_heads, o_rows, kv_dtype: KvDtype::F32 }
    }

    #[test]
    fn takes_the_half_b_model_and_not_a_7b() {
        // Qwen2.5-0.5B: 14 heads of 64 (2 KV heads), o 896 x 896 of Q5_0.
        assert!(shape(GgmlType::Q5_0, 64, 14, 2, 896).takes());
        assert!(shape(GgmlType::Q8_0, 64, 14, 2, 896).takes());
        // 896 columns are 3.5 tiles of Q4_K's 256.
        assert!(!shape(GgmlType::Q4_K, 64, 14, 2, 896).takes());
        assert!(shape(GgmlType::Q4_K, 64, 16, 2, 1024).takes());
        // A 7B's 28 heads: more than a cluster's 16 blocks.
        assert!(!shape(GgmlType::Q4_K, 128, 28, 4, 3584).takes());
        // Qwen2.5-3B: 16 heads of 128 (2048 columns, the most), but a block's share of o (8 tile
        // rows of 8 Q4_K tiles, 144 KB) is more than MAX_TILE_BYTES.
        assert!(!shape(GgmlType::Q4_K, 128, 16, 2, 2048).takes());
        assert!(shape(GgmlType::Q4_K, 128, 16, 2, 1024).takes());
        assert!(!shape(GgmlType::Q4_K, 256, 16, 2, 2048).takes());
        // Heads off a multiple of 32 dims; a type without tiles; KV heads that do not divide.
        assert!(!shape(GgmlType::Q5_0, 80, 16, 2, 1280).takes());
        assert!(!shape(GgmlType::F32, 64, 14, 2, 896).takes());
        assert!(!shape(GgmlType::Q5_0, 64, 14, 3, 896).takes());
        assert!(!shape(GgmlType::Q5_0, 64, 14, 2, 900).takes());
        assert!(runs_on((9, 0)) && !runs_on((8, 9)));
    }

    /// The host's constants are the kernel's.
    #[test]
    fn constants_match_the_kernel() {
        let src = kernels::MATVEC_MMA.src;
        assert!(src.contains(&format!("constexpr int AO_MAX_RANKS = {MAX_RANKS}, AO_MAX_COLS = {MAX_COLS}, AO_MAX_JOBS = {MAX_JOBS};")));
        assert!(src.contains("attention_o_rope("));
    }
}
