//! `CudaBackend`: the ops of the forward pass on one NVIDIA GPU, behind the same [`Backend`]
//! trait as the CPU. Weights stay as the GGUF's quantized blocks in device memory; activations
//! and the KV cache are float32; every op is queued on the context's one stream, and the only
//! synchronization of a forward is the copy of the logits in [`Backend::read_rows`].
//!
//! Projections (`matmul`) take one of two paths (see `matmul.rs`): up to 4 rows of activations
//! (2 with `exact_matmul`; decode of a few sequences) go through
//! matrix-vector kernels that read the quantized blocks directly; larger batches (prefill, many
//! sequences) multiply a copy of the weight made once (f16 by default) with cuBLAS.
//!
//! Nothing here allocates per token: activation buffers come from the model (once per batch
//! size), the batch description is copied into a buffer that only grows, and the kernels and
//! cuBLAS handle are resolved when the backend is created — so a decode step is a fixed sequence
//! of launches on fixed buffers, ready to be captured as a CUDA graph.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{sys, CudaFunction, CudaGraph, CudaSlice, DevicePtr, LaunchConfig};

use super::context::{cublas_library_present, CudaContext};
use super::error::CudaError;
use super::kernels::{self, ATTENTION_MAX_WARPS, NORM_THREADS, ROPE_MAX_PAIRS};
use super::matmul::Write;
use super::matvec::{Input, MatvecPath};
use crate::backend::{check_width, AttnBuffers, AttnParams, AttnWeights, Backend, BatchPlan, KernelNeeds, KvDtype, KvLayout, MlpBuffers, OwnedRows, ReplayKey, RopeParams, RopeStyle, TensorSource};
use crate::backend::BackendError;
use crate::quant::{self, GgmlType, QuantError};
use crate::sampling::{SampleSpec, Sampled, SamplingError};

/// Kernels compiled once per weight type, resolved when the first weight of that type loads:
/// the matvec variants and embedding gather of the type's layout (file blocks or repacked tiles,
/// see `matvec::MatvecPath`), and for tiles the row reader and split-K scratch.
pub(super) type TypeKernels = super::matvec::MatvecKernels;

/// One GGUF tensor in device memory.
pub struct CudaWeight {
    pub(super) name: String,
    pub(super) ty: GgmlType,
    pub(super) n_cols: usize,
    pub(super) n_rows: usize,
    pub(super) row_bytes: usize,
    /// The blocks exactly as in the file (`Layout::Blocks`), or repacked into tiles for the
    /// tensor-core kernels (`Layout::Tiles`, matrices of Q5_0, Q8_0, Q4_K, Q6_K).
    pub(super) blocks: CudaSlice<u8>,
    pub(super) layout: super::matvec::Layout,
    /// Vectors (norm weights, biases: one row) dequantized to float32 at load.
    pub(super) dense: Option<CudaSlice<f32>>,
    /// The matvec kernels of its type (matrices only).
    pub(super) kernels: Option<Arc<TypeKernels>>,
    /// The whole matrix dequantized for cuBLAS (float32, or f16 with a scale), made the first
    /// time more rows than a matvec takes go through it, when the device has room
    /// (`matmul::resident`); `None` inside once it was decided against.
    pub(super) resident: std::sync::OnceLock<Option<super::matmul::Resident>>,
    /// As the first weight of a group projected together (q of q/k/v), the group's stacked f16
    /// copy (`matmul::stacked_copy`), made and decided as `resident` is.
    pub(super) stacked: std::sync::OnceLock<Option<super::matmul::StackedCopy>>,
}

impl CudaWeight {
    fn dense(&self) -> Result<&CudaSlice<f32>, BackendError> {
        self.dense.as_ref().ok_or_else(|| BackendError::BadTensor {
            tensor: self.name.clone(),
            problem: "used as a vector but it is a matrix".into(),
        })
    }
}

/// `[capacity_rows][width]` float32 in device memory.
pub struct CudaAct {
    pub(super) buf: CudaSlice<f32>,
    pub(super) width: usize,
    pub(super) capacity_rows: usize,
}

/// K and V of every layer: `[layer][slot][n_kv_heads * head_dim]` elements of the layout's
/// dtype, slots grouped in blocks (see [`KvLayout`]).
pub struct CudaKvCache {
    layout: KvLayout,
    k: KvBuf,
    v: KvBuf,
}

/// One of K and V: float32, or f16 bits (kv_t in kernels/common.cuh).
enum KvBuf {
    F32(CudaSlice<f32>),
    F16(CudaSlice<u16>),
}

impl KvBuf {
    fn alloc(ctx: &CudaContext, dtype: KvDtype, n_elems: usize, what: &str) -> Result<KvBuf, CudaError> {
        Ok(match dtype {
            KvDtype::F32 => KvBuf::F32(ctx.alloc_zeros::<f32>(n_elems, what)?),
            KvDtype::F16 => KvBuf::F16(ctx.alloc_zeros::<u16>(n_elems, what)?),
        })
    }

    /// The device address of element `elem`.
    fn addr_of(&self, elem: usize, ctx: &CudaContext) -> u64 {
        match self {
            KvBuf::F32(b) => addr(b, ctx) + (elem * std::mem::size_of::<f32>()) as u64,
            KvBuf::F16(b) => addr(b, ctx) + (elem * std::mem::size_of::<u16>()) as u64,
        }
    }
}

impl CudaKvCache {
    /// The device addresses of layer `layer`'s K and V (the kernels take the cache of one layer).
    fn layer_addrs(&self, layer: usize, ctx: &CudaContext) -> (u64, u64) {
        let first = layer * self.layout.capacity_tokens() * self.layout.n_kv_heads * self.layout.head_dim;
        (self.k.addr_of(first, ctx), self.v.addr_of(first, ctx))
    }
}

/// Launch shape of the RoPE kernels: one block per token, a thread per rotated pair up to 8 warps.
fn rope_launch(n_tokens: usize, pairs: usize) -> Result<LaunchConfig, BackendError> {
    let threads = (pairs as u32).div_ceil(32).clamp(1, 8) * 32;
    Ok(LaunchConfig { grid_dim: (to_u32("tokens", n_tokens)?, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
}

/// A [`BatchPlan`] in the backend's device buffer: device addresses of its arrays (u32 each).
/// Valid until the next `upload_batch`.
pub struct CudaBatch {
    n_tokens: usize,
    n_logit_rows: usize,
    tokens: u64,
    positions: u64,
    slots: u64,
    /// Per token: where its sequence's block table starts in `block_tables`.
    table_offset: u64,
    logit_rows: u64,
    block_tables: u64,
    block_tokens: u32,
    /// Warps per attention block and flash-decoding splits for this batch (see `attention_shape`).
    attn_warps: u32,
    attn_splits: u32,
    /// The splits' softmax states and counters (device addresses; 0 without splits).
    attn_partials: u64,
    attn_counters: u64,
    /// Every token is the only one of its sequence (a decode step): no query reads another new
    /// token's KV slot, so RoPE and the KV write can run inside the attention kernel.
    one_token_per_seq: bool,
    /// The query tiles of `attention_prefill` (`prefill_tiles`), or 0 when attention.cu's kernel
    /// takes the batch.
    tiles: u64,
    n_tiles: u32,
}

/// A batch goes to `attention_prefill` when some sequence has at least this many consecutive
/// query rows in it (a prompt chunk: one full tile); decode steps and short appends keep
/// attention.cu's kernel.
const PREFILL_MIN_RUN: usize = kernels::PREFILL_TILE_ROWS;

/// The query tiles of `attention_prefill` for a batch whose token t belongs to sequence
/// `token_seq[t]` at `positions[t]`: runs of tokens of one sequence at consecutive positions, cut
/// into pieces of at most `PREFILL_TILE_ROWS`, as (first token, rows), the tiles with the longest
/// contexts first (so that the last wave of blocks is the shortest). `None` when no run reaches
/// `PREFILL_MIN_RUN`.
fn prefill_tiles(token_seq: &[u32], positions: &[u32]) -> Option<Vec<(u32, u32)>> {
    let mut tiles: Vec<(u32, u32)> = Vec::new();
    let (mut longest, mut run) = (0usize, 0usize);
    for t in 0..token_seq.len() {
        let continues = t > 0 && token_seq[t] == token_seq[t - 1] && positions[t] == positions[t - 1].wrapping_add(1);
        run = if continues { run + 1 } else { 1 };
        longest = longest.max(run);
        match tiles.last_mut() {
            Some((_, rows)) if continues && (*rows as usize) < kernels::PREFILL_TILE_ROWS => *rows += 1,
            _ => tiles.push((t as u32, 1)),
        }
    }
    if longest < PREFILL_MIN_RUN {
        return None;
    }
    // The last row of a tile has the longest context of its tile.
    tiles.sort_by_key(|&(first, rows)| std::cmp::Reverse(positions[first as usize] as u64 + rows as u64));
    Some(tiles)
}

/// The launch of `attention_prefill` for `n_tiles` tiles: one block per tile, KV head and chunk of
/// at most `PREFILL_MAX_WARPS` of its query heads (one warp each); with the heads per block.
fn prefill_launch(n_tiles: u32, p: &AttnParams) -> Result<(LaunchConfig, u32), BackendError> {
    let group = (p.n_heads / p.n_kv_heads.max(1)).max(1);
    let chunks = group.div_ceil(kernels::PREFILL_MAX_WARPS);
    let per_block = to_u32("heads per block", group.div_ceil(chunks))?;
    let grid = (n_tiles, to_u32("KV heads", p.n_kv_heads * chunks)?, 1);
    Ok((LaunchConfig { grid_dim: grid, block_dim: (32 * per_block, 1, 1), shared_mem_bytes: 0 }, per_block))
}

/// `attention_prefill` for prompt chunks (see `PREFILL_MIN_RUN`); FERRITE_CUDA_FLASH_PREFILL=0
/// keeps attention.cu's kernel for them, to compare the two. Read when a backend is made.
fn flash_prefill_enabled() -> bool {
    std::env::var("FERRITE_CUDA_FLASH_PREFILL").map_or(true, |v| v != "0")
}

/// Batches of up to this many rows spread each row's keys over more warps (decode steps: few
/// rows, long contexts); larger ones (prefill) fill the GPU with 4-warp blocks.
const ATTENTION_SPREAD_MAX_ROWS: usize = 256;

/// Fewest warps per attention block: warps without keys still share loading the queries and
/// merging the outputs, which bound a short context's attention (one sequence, 20 keys: 15.7 us a
/// layer with one warp, H200, 2026-12-03).
const ATTENTION_MIN_WARPS: u64 = 4;

/// Keys per flash-decoding split, about (see `attention_shape`).
const ATTENTION_SPLIT_KEYS: u64 = 512;
/// Most splits of a row's keys.
const ATTENTION_MAX_SPLITS: u64 = 16;
/// Splits stop where the batch's blocks would pass this many.
const ATTENTION_SPLIT_MAX_BLOCKS: u64 = 256;
/// Batches that take more blocks than this unsplit are not split. Measured on an H200
/// (2026-12-03, synthetic models, decode step at 4,096 keys, split / unsplit): the 0.5B shapes'
/// one sequence (14 blocks unsplit, 8 splits) 1.02-1.03 / 2.33-2.36 ms, two (28 blocks, 8
/// splits) 1.67 / 2.62; the 7B shapes' one (28 blocks, 8 splits) 3.86 / 6.12; but eight 0.5B
/// sequences (112 blocks) were slower split, 3.64 ms in 8 splits and 3.37 in 2 against 2.98-2.99
/// unsplit: at that size the blocks already cover the SMs, and 7 one-head blocks a KV head read
/// the same keys. Four sequences (56 blocks) were not measured.
const ATTENTION_SPLIT_MAX_UNSPLIT_BLOCKS: u64 = 64;

/// Warps per attention block and splits of each row's keys (flash-decoding: attention.cu's
/// `Splits`), for rows that take `blocks_per_row` blocks unsplit. Batches of up to
/// ATTENTION_SPREAD_MAX_ROWS rows split the longest context into ranges of about
/// ATTENTION_SPLIT_KEYS keys (at most ATTENTION_MAX_SPLITS, and no more than keep the batch
/// within ATTENTION_SPLIT_MAX_BLOCKS blocks; none when it takes more than
/// ATTENTION_SPLIT_MAX_UNSPLIT_BLOCKS blocks unsplit; `forced_splits` overrides the count), each its own block, so that one sequence at 4,096 keys runs 8 times the
/// blocks (2 KV heads x 7 query heads: 14 blocks would leave 118 of an H200's 132 SMs idle); a
/// block gets one warp per 32 keys of its range, rounded up to a power of two, from
/// ATTENTION_MIN_WARPS up to ATTENTION_MAX_WARPS. Larger batches: 4 warps, no split. Both counts
/// are part of a recorded step's key (`replayable`), so a decode step is recorded again when its
/// contexts cross a power of two of 32 keys or a multiple of ATTENTION_SPLIT_KEYS instead of
/// replaying counts made for shorter contexts.
fn attention_shape(positions: &[u32], blocks_per_row: usize, forced_splits: Option<u32>) -> (u32, u32) {
    if positions.len() > ATTENTION_SPREAD_MAX_ROWS {
        return (4, 1);
    }
    let longest = positions.iter().copied().max().map_or(1, |p| p as u64 + 1);
    let unsplit_blocks = (positions.len() as u64 * blocks_per_row as u64).max(1);
    let by_rule = || {
        if unsplit_blocks > ATTENTION_SPLIT_MAX_UNSPLIT_BLOCKS {
            1
        } else {
            longest.div_ceil(ATTENTION_SPLIT_KEYS).min(ATTENTION_SPLIT_MAX_BLOCKS / unsplit_blocks)
        }
    };
    let splits = forced_splits.map_or_else(by_rule, u64::from).clamp(1, ATTENTION_MAX_SPLITS);
    let warps = longest.div_ceil(splits).div_ceil(attention_warp_keys()).next_power_of_two().clamp(ATTENTION_MIN_WARPS, ATTENTION_MAX_WARPS as u64);
    (warps as u32, splits as u32)
}

/// Keys a warp of a decode attention block takes (`attention_shape`): 32, one chunk (the first,
/// which attention.cu loads before its wait); `FERRITE_CUDA_ATTN_WARP_KEYS=N` (a power of two
/// from 32 to 512), fewer warps of several chunks each: an experiment, to weigh the warps' merge
/// against the later chunks' round trips at short contexts.
fn attention_warp_keys() -> u64 {
    static KEYS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| {
        let Ok(value) = std::env::var("FERRITE_CUDA_ATTN_WARP_KEYS") else { return 32 };
        let keys = value.trim().parse().ok().filter(|k: &u64| k.is_power_of_two() && (32..=512).contains(k));
        if keys.is_none() {
            eprintln!("ferrite: FERRITE_CUDA_ATTN_WARP_KEYS: {value:?} is not a power of two from 32 to 512; 32 taken");
        }
        keys.unwrap_or(32)
    })
}

/// `FERRITE_CUDA_ATTN_SPLITS=N`: N flash-decoding splits for every batch `attention_shape` may
/// split (1: none), read when a backend is made; unset: its rule.
fn forced_attention_splits() -> Option<u32> {
    std::env::var("FERRITE_CUDA_ATTN_SPLITS").ok().and_then(|v| v.parse().ok()).filter(|&n: &u32| n > 0)
}

/// Batches of up to this many rows give each attention block one query head.
const ATTENTION_ONE_HEAD_MAX_ROWS: usize = 16;

/// `FERRITE_CUDA_ATTN_SLICE=N`: N query heads per attention block whatever the batch (capped by
/// the kernel's group and the model's), to compare against `attention_slice`'s rule on one
/// build. Unset: the rule.
fn forced_attention_slice() -> Option<usize> {
    static SLICE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *SLICE.get_or_init(|| std::env::var("FERRITE_CUDA_ATTN_SLICE").ok().and_then(|v| v.parse().ok()).filter(|&n: &usize| n > 0))
}

/// Query heads per attention block, for `n_rows` rows of a model with `group_heads` query heads
/// per KV head. A block's heads share its K and V loads, which is what a batch of many rows
/// needs; for a few rows a decode step's attention is a chain of latencies (loads, then a max and
/// a sum across the warp per head and chunk of keys), and one head a block shortens the chain and
/// puts more blocks on the GPU (the other heads' blocks read the same K and V rows, from L2).
/// Nothing between the two: splitting the 7 heads of a KV head into slices so that 64 or 128
/// decode rows fill the SMs twice over was slower (synthetic 0.5B step at 64 / 128 sequences:
/// 2.03 / 2.70 ms with all 7 heads a block, 2.04 / 2.91 with 4, 2.15 / 3.08 with 2, 2.54 / 3.73
/// with 1; synthetic 7B at 64: 7.25 ms with 4 heads, 7.96 with 2; H200, 2026-12-03,
/// FERRITE_CUDA_ATTN_SLICE). Once the kernel held 8 heads of 128 dims, all 7 in one block made
/// that 7.24 ms step 6.82. One head a block takes the `_1` kernels, compiled for one head.
fn attention_slice(n_rows: usize, group_heads: usize, head_dim: usize) -> usize {
    // At most ATTN_GROUP (the kernel's shared memory holds that many heads).
    let most = kernels::attention_group(head_dim).min(group_heads).max(1);
    if let Some(n) = forced_attention_slice() {
        return n.min(most);
    }
    if n_rows <= ATTENTION_ONE_HEAD_MAX_ROWS {
        1
    } else {
        most
    }
}

/// The attention kernels' launch for `batch`: one block per token, KV head and slice of its query
/// heads (`attention_slice`), `batch.attn_warps` warps; with the slice, the head counts and the
/// score scale 1/sqrt(head_dim) they take.
fn attention_launch(batch: &CudaBatch, p: &AttnParams) -> Result<(LaunchConfig, u32, u32, u32, f32), BackendError> {
    let slice = attention_slice(batch.n_tokens, p.n_heads / p.n_kv_heads.max(1), p.head_dim);
    let slices = to_u32("query heads per KV head", (p.n_heads / p.n_kv_heads.max(1)).div_ceil(slice))?;
    let blocks_x = batch.n_tokens.checked_mul(batch.attn_splits as usize).ok_or_else(|| BackendError::Invalid("attention grid overflows".into()))?;
    let grid = (to_u32("tokens x splits", blocks_x)?, to_u32("KV heads", p.n_kv_heads)?, slices);
    let group = if one_head_kernel(slice) { 1 } else { kernels::attention_group(p.head_dim) };
    let shared_mem_bytes = kernels::attention_shared_bytes(batch.attn_warps, p.head_dim, group);
    let cfg = LaunchConfig { grid_dim: grid, block_dim: (32 * batch.attn_warps, 1, 1), shared_mem_bytes };
    Ok((cfg, to_u32("query heads per block", slice)?, to_u32("heads", p.n_heads)?, to_u32("KV heads", p.n_kv_heads)?, attention_scale(p)))
}

/// The scores' scale, 1/sqrt(head_dim), which every attention kernel takes.
fn attention_scale(p: &AttnParams) -> f32 {
    1.0 / (p.head_dim as f32).sqrt()
}

/// Whether `attention_heads_rope` can rotate q and k itself (`rope_attention_to`): q and k
/// differ only in their head counts, at the attention's head width, within the kernel's pairs.
fn rope_in_one_launch(qp: &RopeParams, kp: &RopeParams, p: &AttnParams) -> bool {
    RopeParams { n_heads: qp.n_heads, ..*kp } == *qp && qp.head_dim == p.head_dim && qp.head_dim <= 2 * ROPE_MAX_PAIRS
}

/// RoPE and the KV write inside the attention kernel for decode steps (`attention_heads_rope`);
/// FERRITE_CUDA_ROPE_IN_ATTENTION=0 keeps them in `rope_store`, to compare the two. Read when a
/// backend is made.
fn rope_in_attention_enabled() -> bool {
    std::env::var("FERRITE_CUDA_ROPE_IN_ATTENTION").map_or(true, |v| v != "0")
}

/// The type a group of projections taking one input is loaded as on the tiled path (`tiled`):
/// Q8_0 for a group that mixes Q5_0 and Q8_0, whose Q5_0 blocks widen to Q8_0 exactly
/// (`quant::widen_to_q8_0`), so that the group runs as one launch (the tiled kernels are
/// compiled one type a module). Widening costs the Q5_0 matrices 1.5 times their bytes, a
/// fraction of a microsecond for the real model's q and k, and saves a launch of about 4 us in
/// its 12 layers whose v is Q8_0 (H200, 2026-12-04). Q4_0 would widen exactly too, but it has no
/// tile format: its groups keep the generic kernels, whose cost was not measured against it.
fn widened_group_type(types: &[GgmlType], tiled: bool) -> Option<GgmlType> {
    let mixed = types.windows(2).any(|w| w[0] != w[1]);
    let widens = types.iter().all(|t| matches!(t, GgmlType::Q5_0 | GgmlType::Q8_0));
    (tiled && mixed && widens).then_some(GgmlType::Q8_0)
}

/// A recorded step's key: the model's [`ReplayKey`], then what of the batch (beyond its sizes)
/// shapes the launches: `batch_generation`, the attention warps and splits, whether RoPE runs inside the
/// decode attention, the prefill attention's tiles.
type StepKey = (ReplayKey, u64, (u32, u32), bool, u32);

/// A recorded decode step.
struct Recorded(CudaGraph);

// SAFETY: CUDA graph objects are not internally synchronized but may be used from any thread as
// long as calls on them are serialized; a `Recorded` is only reached through `&mut CudaBackend`.
unsafe impl Send for Recorded {}

/// Whether a launch of `slice` heads a block takes the one-head kernels (`_1`, compiled for one
/// head, whose scratch `attention_launch` sizes for one).
fn one_head_kernel(slice: usize) -> bool {
    slice == 1
}

/// The attention kernels of one head dim and KV cache element type.
struct AttentionKernels {
    head_dim: usize,
    kv_dtype: KvDtype,
    /// `attention_heads` and `attention_heads_rope` (attention.cu), and their one-head kernels
    /// (`_1`) for launches of one head a block.
    heads: CudaFunction,
    heads_rope: CudaFunction,
    heads_1: CudaFunction,
    heads_rope_1: CudaFunction,
    /// `attention_heads_rope_1w8`: `heads_rope_1` for launches of at most ATTENTION_W8_WARPS warps,
    /// with a whole register file (its chunk's values loaded with its keys before its wait).
    heads_rope_1w8: CudaFunction,
    /// The most blocks of `heads_rope_1w8` all SMs hold at once, for 1, 2, 4 and 8 warps a block
    /// (0: none, or `FERRITE_CUDA_ATTN_W8=0`). Its registers let an SM hold half the blocks the
    /// 16-warp kernel's do, so a launch past one wave of them (10 or more sequences of the 0.5B
    /// with 129-256 keys) keeps that kernel, where it measured before.
    w8_wave_blocks: [u64; 4],
    /// `attention_prefill` (attention_prefill.cu), for the head dims it takes and unless
    /// FERRITE_CUDA_FLASH_PREFILL=0.
    prefill: Option<CudaFunction>,
}

impl AttentionKernels {
    /// The kernel for a launch `cfg` of `slice` heads a block, with RoPE and the KV write or without.
    fn for_slice(&self, slice: u32, cfg: &LaunchConfig, rope: bool) -> &CudaFunction {
        let (warps, blocks) = (cfg.block_dim.0 / 32, cfg.grid_dim.0 as u64 * cfg.grid_dim.1 as u64 * cfg.grid_dim.2 as u64);
        let w8_fits = warps.is_power_of_two() && warps <= kernels::ATTENTION_W8_WARPS && blocks <= self.w8_wave_blocks[warps.trailing_zeros() as usize];
        match (one_head_kernel(slice as usize), rope) {
            (true, false) => &self.heads_1,
            (true, true) if w8_fits => &self.heads_rope_1w8,
            (true, true) => &self.heads_rope_1,
            (false, false) => &self.heads,
            (false, true) => &self.heads_rope,
        }
    }
}

/// `FERRITE_CUDA_ATTN_W8=0`: a decode step's one-head attention blocks of up to 8 warps take the
/// 16-warp kernel (`attention_heads_rope_1`) instead of `attention_heads_rope_1w8` (the same
/// results; for A/B runs and the tests that compare the two). Read when a model's attention kernels
/// are made.
fn w8_attention_enabled() -> bool {
    std::env::var("FERRITE_CUDA_ATTN_W8").map_or(true, |v| v != "0")
}

/// A kernel that writes the KV cache, in its variant for each element type.
struct PerKvDtype {
    f32: CudaFunction,
    f16: CudaFunction,
}

impl PerKvDtype {
    fn for_cache(&self, dtype: KvDtype) -> &CudaFunction {
        match dtype {
            KvDtype::F32 => &self.f32,
            KvDtype::F16 => &self.f16,
        }
    }
}

/// Kernels every model uses, resolved once.
pub(super) struct FixedKernels {
    rms_norm: CudaFunction,
    pub(super) rms_norm_f16: CudaFunction,
    rope: CudaFunction,
    /// rope.cu's `rope_store` and attention.cu's `kv_append`, for each cache element type.
    rope_store: PerKvDtype,
    kv_append: PerKvDtype,
    /// The attention kernels of the model's head dim, compiled when the KV cache is allocated.
    attention: Option<AttentionKernels>,
    swiglu: CudaFunction,
    pub(super) swiglu_f16: CudaFunction,
    add_assign: CudaFunction,
    pub(super) add_bias: CudaFunction,
    pub(super) add_biases3: CudaFunction,
    pub(super) split_rows3: CudaFunction,
    gather_rows: CudaFunction,
    pub(super) to_f16_scaled: CudaFunction,
    pub(super) abs_max: CudaFunction,
    pub(super) scale_columns: CudaFunction,
    pub(super) norm_source: CudaFunction,
    /// gemm_f16_rows.cu's kernels for up to 8 and up to 16 rows of x, writing float32 rows, and
    /// on a stacked gate/up copy writing SwiGLU's f16 output (`matmul::stacked_swiglu_rows`).
    pub(super) gemm_f16_rows: [CudaFunction; 2],
    pub(super) gemm_f16_rows_swiglu: [CudaFunction; 2],
}

pub struct CudaBackend {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) blas: CudaBlas,
    pub(super) fixed: FixedKernels,
    type_kernels: HashMap<GgmlType, Arc<TypeKernels>>,
    /// The pair kernels of the type pairs the model's groups mix (`prepare_group`).
    pub(super) pair_kernels: HashMap<(GgmlType, GgmlType), Arc<super::matvec::PairKernels>>,
    /// Rows of x up to which groups take them (`matvec::pair_max_rows`).
    pub(super) pair_rows: usize,
    /// The fused FFN kernels of the model's FFN shapes (`prepare_mlp`; ffn.rs), none with
    /// FERRITE_CUDA_FFN=off; `ffn_rows`: the most rows that take them (`ffn::max_rows`).
    ffn_kernels: HashMap<super::ffn::FfnShape, super::ffn::FfnKernels>,
    ffn_rows: usize,
    /// Where `upload_batch` puts the plan; grows, never shrinks.
    batch_buf: Option<CudaSlice<u32>>,
    /// Bumped when `batch_buf`, `x_f16` or `scratch` is reallocated: recorded graphs hold their
    /// addresses.
    pub(super) batch_generation: u64,
    /// Recorded decode steps by key (see `Backend::replayable`). Off with FERRITE_CUDA_GRAPHS=0.
    graphs: HashMap<StepKey, Recorded>,
    /// `attn_warps` and `attn_splits` of the batch uploaded last (part of a recorded step's key).
    attn_warps: u32,
    attn_splits: u32,
    /// FERRITE_CUDA_ATTN_SPLITS (see `attention_shape`).
    forced_splits: Option<u32>,
    /// FERRITE_CUDA_MMQ_MAX_ROWS (see `matmul::takes_gemm_mma`).
    pub(super) gemm_mma_rows: Option<usize>,
    /// How far beyond the usual rows a wide model's weights and huge weights take the
    /// matrix-vector kernels (`matmul::takes_matvec`).
    pub(super) row_rules: super::matmul::RowRules,
    /// Whether the stacked gate/up GEMM of 1-16 rows applies SwiGLU as it writes
    /// (`matmul::stacked_swiglu_rows`).
    pub(super) swiglu_gemm: bool,
    /// Whether projections of one x may run as one GEMM on a stacked copy (`matmul::stacks`).
    pub(super) stacking: bool,
    /// Whether SwiGLU and decode attention read stacked outputs in place (`matmul::stacked_in_place`).
    stack_in_place: bool,
    /// The largest f16 copy (bytes) that multiplies 1-16 rows on gemm_f16_rows.cu instead of
    /// cuBLAS (`matmul::gemm_rows_max_bytes`; 0: never).
    pub(super) gemm_rows_max_bytes: usize,
    /// gemm_f16_rows.cu's work split: chunks a warp, most warps a block (`matmul::gemm_rows_plan`).
    pub(super) gemm_rows_plan: (u32, u32),
    /// Query heads a layer and head dim of the KV cache's model (sizes the splits' scratch).
    attn_heads: usize,
    attn_kv_heads: usize,
    attn_head_dim: usize,
    /// Flash-decoding scratch: each split's softmax state, and a counter per (token, KV head,
    /// slice) (zero between launches); grow in `upload_batch` (bumping `batch_generation`).
    attn_partials: Option<CudaSlice<f32>>,
    attn_counters: Option<CudaSlice<u32>>,
    /// `one_token_per_seq` of the batch uploaded last (part of a recorded step's key: it picks
    /// the attention kernel).
    one_token_per_seq: bool,
    /// FERRITE_CUDA_ROPE_IN_ATTENTION (see `rope_in_attention_enabled`).
    rope_in_attention: bool,
    /// `n_tiles` of the batch uploaded last (part of a recorded step's key: it picks the
    /// attention kernel and sizes its grid).
    prefill_tiles: u32,
    graphs_enabled: bool,
    /// Steps of more rows than this are never recorded (FERRITE_CUDA_GRAPH_MAX_ROWS).
    graph_max_rows: usize,
    /// How often each large-batch key has run unrecorded (see `replayable`).
    sightings: HashMap<StepKey, u32>,
    /// cuBLAS's workspace, given to it explicitly so that no GEMM allocates while a step is
    /// being recorded. Declared after `blas`, so it is freed after the handle.
    _blas_workspace: CudaSlice<u8>,
    /// Float32 dequantized weight rows for the cuBLAS path; grows up to `matmul::SCRATCH_MAX_ELEMS`.
    pub(super) scratch: Option<CudaSlice<f32>>,
    /// How multiplies past the matrix-vector kernels' rows run (see `GemmPrecision`).
    pub(super) gemm: GemmPrecision,
    /// The activations of an f16 GEMM, as f16 bits; grows (bumping `batch_generation`).
    pub(super) x_f16: Option<CudaSlice<u16>>,
    /// A stacked GEMM's float32 output (`matmul::stacked_gemm`); grows (bumping `batch_generation`).
    pub(super) stacked_out: Option<CudaSlice<f32>>,
    /// SwiGLU's f16 output where the stacked gate/up GEMM writes it (`matmul::stacked_swiglu_rows`),
    /// beside `x_f16`, which that GEMM reads; grows (bumping `batch_generation`).
    pub(super) swiglu_f16: Option<CudaSlice<u16>>,
    /// Whether stacked copies hold their input's norm weight and the o and ffn_down GEMMs of
    /// 5-16 rows write x's norm source for them (`matmul::NormSource`; FERRITE_CUDA_NORM_FOLD).
    pub(super) norm_fold: bool,
    /// The most rows of a step whose GEMMs take and make norm sources (`matmul::norm_fold_max_rows`).
    pub(super) norm_fold_rows: usize,
    /// The norm source of the residual rows that the last `attention_add` or `mlp_add` left, for
    /// the next one's stacked GEMM; taken by each of them, cleared by `embed` (x's only other
    /// writer in a forward pass).
    norm_source: Option<super::matmul::NormSource>,
    /// A norm source's f16 rows and sums of squares; grow (bumping `batch_generation`).
    pub(super) norm_src_f16: Option<CudaSlice<u16>>,
    pub(super) norm_parts: Option<CudaSlice<f64>>,
    pub(super) sampler: super::sampling::DeviceSampler,
    /// FERRITE_HOST_SAMPLING=1: copy logits to the host and sample there (for comparisons).
    pub(super) host_sampling: bool,
    /// The draw sets of host sampling (`host_sampling`).
    pub(super) host_draws: crate::backend::draws::HostDraws,
    kv_capacity_tokens: usize,
    /// The decode step's weights in read order, for the kernels' L2 prefetches
    /// (`plan_weight_prefetch`); `None`: no prefetches.
    pub(super) prefetch: Option<super::prefetch::PrefetchPlan>,
}

/// How multiplies of more than 4 rows (prefill, larger batches; `matmul::takes_matvec`) run on
/// cuBLAS. Matvec multiplies (up to 4 rows) keep float32 sums of x in two bf16 or int8 parts (three, exact or nearly, for one or two rows; see `matmul::MATVEC_EXACT_MAX_ROWS`); with
/// F32 only the exact ones stay on the kernels, and from 3 rows every multiply is float32 on
/// cuBLAS.
///
/// Measured on an H200 with the test model (docs/BENCHMARKS.md): TF32 rounds both inputs of
/// each product to 10 mantissa bits and ran a 64-sequence decode 1.6x faster than float32, the
/// logits 0.042 from the float64 reference instead of 8e-4. F16 rounds the same 10 bits (to
/// nearest, where TF32 truncates), but keeps the weight copy in 2 bytes instead of 4 and runs
/// on the f16 tensor cores at twice TF32's rate; the range is kept by scaling (see matmul.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPrecision {
    /// Float32 on the CUDA cores (`exact_matmul=True`), from 3 rows (see above).
    F32,
    /// Float32 copies of the weights, TF32 tensor cores.
    Tf32,
    /// f16 copies of the weights, activations converted to f16, float32 sums (the default).
    F16,
}

impl GemmPrecision {
    /// `exact_matmul` picks F32, else F16; FERRITE_CUDA_GEMM=f32|tf32|f16 overrides either
    /// (FERRITE_CUDA_TF32=0/1, the older switch, still means f32/tf32).
    fn choose(exact_matmul: bool) -> Result<GemmPrecision, CudaError> {
        match std::env::var("FERRITE_CUDA_GEMM").as_deref() {
            Ok("f32") => return Ok(GemmPrecision::F32),
            Ok("tf32") => return Ok(GemmPrecision::Tf32),
            Ok("f16") => return Ok(GemmPrecision::F16),
            Ok(other) => return Err(CudaError::Invalid(format!("FERRITE_CUDA_GEMM={other:?}: expected f32, tf32 or f16"))),
            Err(_) => {}
        }
        Ok(match std::env::var("FERRITE_CUDA_TF32").as_deref() {
            Ok("0") => GemmPrecision::F32,
            Ok("1") => GemmPrecision::Tf32,
            _ if exact_matmul => GemmPrecision::F32,
            _ => GemmPrecision::F16,
        })
    }
}

/// Steps of up to this many rows are recorded as CUDA graphs (the engine's default
/// `max_batch` is 64; a step's launches cost the CPU ~2-4 ms whatever its size).
const GRAPH_MAX_ROWS: usize = 512;
/// Unrecorded runs of a large-batch key before it is recorded.
const LARGE_RUNS_BEFORE_RECORDING: u32 = 3;
/// Large-batch keys remembered at most (then forgotten all at once).
const SIGHTINGS_MAX: usize = 4096;
/// cuBLAS's workspace (NVIDIA's recommendation for Hopper).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Device address of a buffer, for kernel arguments that are plain pointers (an optional input
/// passed as 0, an array inside the batch buffer).
pub fn addr<T>(buf: &impl DevicePtr<T>, ctx: &CudaContext) -> u64 {
    // Event tracking is off (see CudaContext), so the returned guard records nothing.
    let (ptr, _guard) = buf.device_ptr(ctx.stream());
    ptr
}

/// Launch shape of a grid-stride kernel over `n` elements.
pub(super) fn grid_stride(n: u64) -> LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = n.div_ceil(THREADS as u64).clamp(1, 1 << 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// [`grid_stride`] for kernels that take four elements a thread where they can (`swiglu`,
/// `swiglu_f16`: elementwise.cu's `as_float4s`).
pub(super) fn grid_stride_float4s(n: u64) -> LaunchConfig {
    grid_stride(n.div_ceil(4))
}

pub(super) use super::launch::launch;

/// Gives the cuBLAS handle its workspace (returned: it must outlive the handle) and, with
/// `tf32`, the TF32 tensor-core math mode.
fn configure_blas(ctx: &CudaContext, blas: &CudaBlas, tf32: bool) -> Result<CudaSlice<u8>, CudaError> {
    use cudarc::cublas::sys::{cublasMath_t, cublasSetMathMode, cublasSetWorkspace_v2, cublasStatus_t};
    let check = |op: &str, status: cublasStatus_t| match status {
        cublasStatus_t::CUBLAS_STATUS_SUCCESS => Ok(()),
        _ => Err(CudaError::Driver { op: op.into(), msg: format!("{status:?}") }),
    };
    let workspace = ctx.alloc::<u8>(BLAS_WORKSPACE_BYTES, "the cuBLAS workspace")?;
    let ptr = addr(&workspace, ctx) as *mut std::ffi::c_void;
    // SAFETY: the handle is valid while `blas` lives; the buffer is kept by the backend after
    // the handle (field order) and used by it alone.
    check("cublasSetWorkspace", unsafe { cublasSetWorkspace_v2(*blas.handle(), ptr, BLAS_WORKSPACE_BYTES) })?;
    if tf32 {
        // SAFETY: as above.
        check("cublasSetMathMode(TF32)", unsafe { cublasSetMathMode(*blas.handle(), cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH) })?;
    }
    Ok(workspace)
}

fn check_rows(what: &str, a: &CudaAct, n_rows: usize) -> Result<(), BackendError> {
    if n_rows > a.capacity_rows {
        return Err(BackendError::Invalid(format!("{what}: {n_rows} rows requested from a buffer of {} rows", a.capacity_rows)));
    }
    Ok(())
}

/// Checks one projection's shapes; returns the bias's values.
fn check_projection<'b>(w: &CudaWeight, bias: Option<&'b CudaWeight>, x: &CudaAct, n_rows: usize, out: &CudaAct) -> Result<Option<&'b CudaSlice<f32>>, BackendError> {
    check_width("matmul input", x.width, w.n_cols)?;
    check_width("matmul output", out.width, w.n_rows)?;
    check_rows("matmul input", x, n_rows)?;
    check_rows("matmul output", out, n_rows)?;
    match bias {
        Some(b) => {
            check_width("matmul bias", b.n_cols, w.n_rows)?;
            Ok(Some(b.dense()?))
        }
        None => Ok(None),
    }
}

fn to_u32(what: &str, n: usize) -> Result<u32, BackendError> {
    u32::try_from(n).map_err(|_| BackendError::Invalid(format!("{what} = {n} does not fit the kernels' 32-bit counts")))
}

/// Where a decode step's attention reads the new tokens' q, k and v (device addresses): rows of
/// their own, or the three parts of a stacked q/k/v GEMM's output rows, with the biases (0: none)
/// still to add.
struct QkvRows {
    q: u64,
    k: u64,
    v: u64,
    q_stride: u32,
    kv_stride: u32,
    biases: [u64; 3],
}

/// A row kernel of the batch path that [`test_row_op`] runs alone.
#[derive(Clone, Copy, Debug)]
pub enum RowOp {
    /// `rms_norm` / `rms_norm_f16` with this epsilon: rows `a`, weight `b` (one row).
    RmsNorm { eps: f32 },
    /// `swiglu` / `swiglu_f16`: gate `a`, up `b` (as many rows).
    Swiglu,
    /// `swiglu`, and `swiglu_f16` reading gate and up as the two halves of each row of one
    /// buffer, as it reads a stacked gate/up GEMM's output.
    SwigluStacked,
}

/// Test hook: `op` on `n_rows` rows of `width`, in both of its forms: the float32 rows and the
/// f16 bits (times the returned `X_F16_SCALE`) that the cuBLAS path takes, so that a test can
/// hold each kernel against a reference and the two forms against each other.
pub fn test_row_op(device: &str, op: RowOp, a: &[f32], b: &[f32], n_rows: usize, width: usize) -> Result<(Vec<f32>, Vec<u16>, f32), BackendError> {
    let n = n_rows.checked_mul(width).ok_or_else(|| BackendError::Invalid(format!("{n_rows} rows of {width} overflow")))?;
    let b_len = if matches!(op, RowOp::RmsNorm { .. }) { width } else { n };
    if a.len() != n || b.len() != b_len || n == 0 {
        return Err(BackendError::Invalid(format!("{op:?} on {n_rows} rows of {width}: got {} and {} values (need {n} and {b_len}, not 0)", a.len(), b.len())));
    }
    let mut be = CudaBackend::new(device, false)?;
    let ctx = be.ctx.clone();
    let act = |buf| CudaAct { buf, width, capacity_rows: n_rows };
    let x = act(ctx.upload(a, "test rows")?);
    let y = ctx.upload(b, "test weight or up rows")?;
    let mut out = ctx.alloc::<f32>(n, "test output")?;
    match op {
        RowOp::RmsNorm { eps } => {
            let cfg = LaunchConfig { grid_dim: (to_u32("rows", n_rows)?, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
            let w32 = to_u32("width", width)?;
            launch!(ctx, &be.fixed.rms_norm, "rms_norm", cfg, &x.buf, &y, &w32, &eps, &mut out)?;
            super::matmul::rms_norm_as_f16(&mut be, &x, &y, eps, n_rows, super::matmul::X_F16_SCALE)?;
        }
        RowOp::Swiglu | RowOp::SwigluStacked => {
            let up = act(y);
            let n64 = n as u64;
            launch!(ctx, &be.fixed.swiglu, "swiglu", grid_stride_float4s(n64), &x.buf, &up.buf, &n64, &mut out)?;
            if matches!(op, RowOp::Swiglu) {
                let (g, u) = (addr(&x.buf, &ctx), addr(&up.buf, &ctx));
                super::matmul::swiglu_as_f16(&mut be, g, u, width, width, n_rows)?;
            } else {
                let stacked: Vec<f32> = a.chunks(width).zip(b.chunks(width)).flat_map(|(g, u)| g.iter().chain(u).copied()).collect();
                let stacked = ctx.upload(&stacked, "test stacked gate/up rows")?;
                let g = addr(&stacked, &ctx);
                let u = g + (width * std::mem::size_of::<f32>()) as u64;
                super::matmul::swiglu_as_f16(&mut be, g, u, width, 2 * width, n_rows)?;
            }
        }
    }
    let f32_rows = ctx.download(&out, "test output")?;
    let f16_all = ctx.download(be.x_f16.as_ref().ok_or_else(|| BackendError::Invalid("no f16 output".into()))?, "test f16 output")?;
    Ok((f32_rows, f16_all[..n].to_vec(), super::matmul::X_F16_SCALE))
}

impl CudaBackend {
    /// The model's hidden width as its attention sees it (query heads x head dim, set with the
    /// KV cache; 0 before): Qwen2's and llama's hidden size.
    pub(super) fn model_width(&self) -> usize {
        self.attn_heads * self.attn_head_dim
    }

    /// Rows of x up to which every projection of this backend takes the matrix-vector kernels
    /// (`matmul::matvec_max_rows` at its GEMM precision).
    fn matvec_rows(&self) -> usize {
        super::matmul::matvec_max_rows(self.gemm == GemmPrecision::F32)
    }

    /// One projection, checked: `out = w x (+ bias)`, or `out += w x` with `Write::Accumulate`.
    /// `x_f16` carries `x`'s f16 conversion between the projections of one input (`None` at
    /// the first). `group`: the weights projected from the same x, `w` among them (it decides
    /// between the matrix-vector kernels and cuBLAS: `matmul::takes_matvec`).
    #[allow(clippy::too_many_arguments)]
    fn project(
        &mut self,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        x: &CudaAct,
        n_rows: usize,
        out: &mut CudaAct,
        write: Write,
        x_f16: &mut Option<u64>,
    ) -> Result<(), BackendError> {
        let bias = check_projection(w, bias, x, n_rows, out)?;
        if n_rows == 0 {
            return Ok(());
        }
        super::matmul::matmul(self, w, bias, x, n_rows, out, write, x_f16)
    }

    /// `x += w · input` of a decode step's stacked path, whose input only its f16 rows at
    /// `input_f16` hold (`input` is its buffer, for the checks): on gemm_f16_rows.cu writing x's
    /// norm source for the next stacked GEMM where it can (`matmul::gemm_rows_add_norm_source`,
    /// kept in `norm_source`), else as any projection.
    fn project_add_with_norm_source(&mut self, w: &CudaWeight, input: &CudaAct, input_f16: u64, n_rows: usize, x: &mut CudaAct) -> Result<(), BackendError> {
        check_projection(w, None, input, n_rows, x)?;
        self.norm_source = super::matmul::gemm_rows_add_norm_source(self, w, input_f16, n_rows, x)?;
        if self.norm_source.is_some() {
            return Ok(());
        }
        self.project(w, None, input, n_rows, x, Write::Accumulate, &mut Some(input_f16))
    }

    /// Projections of `x` (taken as `input` says) on the tiled matrix-vector kernels, checked.
    fn tiled_projections<const N: usize>(
        &mut self,
        projections: [(&CudaWeight, Option<&CudaWeight>, &mut CudaAct); N],
        x: &CudaAct,
        n_rows: usize,
        write: Write,
        input: Input,
    ) -> Result<(), BackendError> {
        let mut checked = Vec::with_capacity(N);
        for (w, bias, out) in projections {
            let bias = check_projection(w, bias, x, n_rows, out)?;
            checked.push((w, bias, out));
        }
        super::matmul::tiled_matvecs(self, checked, x, n_rows, write, input)
    }

    /// The fused FFN kernel's shape of these weights (ffn.rs), where they may take it: gate and up
    /// of one type and grid, all three repacked, and the kernel on (FERRITE_CUDA_FFN not `off`).
    /// Whether the kernel takes the shape is `FfnShape::takes_rows`'s to say.
    fn ffn_shape(&self, [gate, up, down]: [&CudaWeight; 3]) -> Option<super::ffn::FfnShape> {
        use super::matvec::Layout::Tiles;
        let (Tiles(g), Tiles(u), Tiles(d)) = (gate.layout, up.layout, down.layout) else { return None };
        let shape = super::ffn::FfnShape { gate_up: gate.ty, down: down.ty, n_cols: gate.n_cols, n_inter: gate.n_rows };
        let fits = g == u && (d.n_rows, d.n_cols) == (gate.n_cols, gate.n_rows) && [gate, up, down].iter().all(|w| w.kernels.as_ref().is_some_and(|k| k.tiled.is_some()));
        (self.ffn_rows > 0 && fits).then_some(shape)
    }

    /// Checks one layer's attention shapes; returns the KV row width.
    #[allow(clippy::too_many_arguments)]
    fn check_attention(
        &self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        cache: &CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        p: &AttnParams,
        out: &CudaAct,
    ) -> Result<usize, BackendError> {
        let lay = cache.layout;
        let (_, kv_width) = p.check_shapes(q.width, k.width, v.width, out.width, &lay, layer)?;
        let n = batch.n_tokens;
        for (what, a) in [("attention q", q), ("attention k", k), ("attention v", v)] {
            check_rows(what, a, n)?;
        }
        check_rows("attention out", out, n)?;
        if p.n_kv_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
            return Err(BackendError::Invalid(format!("{} query heads do not group over {} KV heads", p.n_heads, p.n_kv_heads)));
        }
        // The flash-decoding scratch is sized by the layout's heads (`attention_scratch`).
        if (p.n_heads, p.head_dim) != (self.attn_heads, self.attn_head_dim) {
            return Err(BackendError::Invalid(format!(
                "attention of {} heads of {} on a KV cache made for {} heads of {}",
                p.n_heads, p.head_dim, self.attn_heads, self.attn_head_dim
            )));
        }
        if self.fixed.attention.as_ref().is_none_or(|a| a.head_dim != p.head_dim) {
            return Err(BackendError::Invalid(format!(
                "head_dim {} has no CUDA attention kernel (these do: {:?})",
                p.head_dim,
                kernels::ATTENTION_HEAD_DIMS
            )));
        }
        // The kernels are those of the cache allocated last: another cache type would be misread.
        if let Some(a) = self.fixed.attention.as_ref().filter(|a| a.kv_dtype != lay.dtype) {
            return Err(BackendError::Invalid(format!(
                "a {} KV cache, but the attention kernels are compiled for {} (one cache type a backend)",
                lay.dtype.name(),
                a.kv_dtype.name()
            )));
        }
        if batch.block_tokens as usize != lay.block_tokens {
            return Err(BackendError::Invalid(format!("batch of {}-token blocks on a cache of {}-token blocks", batch.block_tokens, lay.block_tokens)));
        }
        Ok(kv_width)
    }

    /// The attention kernels of `head_dim` (compiled with the KV cache).
    fn attention_kernels(&self, head_dim: usize) -> Result<&AttentionKernels, BackendError> {
        match self.fixed.attention.as_ref() {
            Some(a) if a.head_dim == head_dim => Ok(a),
            _ => Err(BackendError::Invalid(format!("head_dim {head_dim} has no CUDA attention kernel"))),
        }
    }

    /// Attention of the batch's (rotated) queries over layer `layer` of the cache, which already
    /// holds their own keys and values; shapes checked by `check_attention`.
    /// `out_f16`: 0, or the device address of f16 activations (`matmul::X_F16_SCALE`) that take
    /// the output instead of `out` (see `rope_attention_matmul_add`).
    #[allow(clippy::too_many_arguments)]
    fn attend(&mut self, q: &CudaAct, cache: &CudaKvCache, layer: usize, batch: &CudaBatch, p: &AttnParams, out: &mut CudaAct, out_f16: u64) -> Result<(), BackendError> {
        let kernels = self.attention_kernels(p.head_dim)?;
        let (kc, vc) = cache.layer_addrs(layer, &self.ctx);
        if let (Some(prefill), true) = (kernels.prefill.as_ref(), batch.n_tiles > 0) {
            let (cfg, per_block) = prefill_launch(batch.n_tiles, p)?;
            let (n_heads, n_kv_heads) = (to_u32("heads", p.n_heads)?, to_u32("KV heads", p.n_kv_heads)?);
            let scale = attention_scale(p);
            launch!(
                self.ctx,
                prefill,
                "attention_prefill",
                cfg,
                &q.buf,
                &kc,
                &vc,
                &batch.positions,
                &batch.table_offset,
                &batch.block_tables,
                &batch.block_tokens,
                &batch.tiles,
                &n_heads,
                &n_kv_heads,
                &per_block,
                &scale,
                &mut out.buf,
                &out_f16,
                &super::matmul::X_F16_SCALE
            )?;
            return Ok(());
        }
        let (cfg, slice, n_heads, n_kv_heads, scale) = attention_launch(batch, p)?;
        let attend = kernels.for_slice(slice, &cfg, false);
        launch!(
            self.ctx,
            attend,
            "attention_heads",
            cfg,
            &q.buf,
            &kc,
            &vc,
            &batch.positions,
            &batch.table_offset,
            &batch.block_tables,
            &batch.block_tokens,
            &n_heads,
            &n_kv_heads,
            &slice,
            &scale,
            &mut out.buf,
            &out_f16,
            &super::matmul::X_F16_SCALE,
            &batch.attn_splits,
            &batch.attn_partials,
            &batch.attn_counters
        )?;
        Ok(())
    }

    /// [`Backend::rope_attention`], the output written to `out` or, when `out_f16` is not 0, as
    /// f16 to that device address (see `attend`).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention_to(
        &mut self,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &CudaAct,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        rope: (&RopeParams, &RopeParams),
        p: &AttnParams,
        out: &mut CudaAct,
        out_f16: u64,
    ) -> Result<(), BackendError> {
        let (qp, kp) = rope;
        if !rope_in_one_launch(qp, kp, p) {
            self.rope_qk(q, k, batch, qp, kp)?;
            return self.append_and_attend(q, k, v, cache, layer, batch, p, out, out_f16);
        }
        self.check_attention(q, k, v, cache, layer, batch, p, out)?;
        check_width("rope input", q.width, qp.n_heads * qp.head_dim)?;
        check_width("rope input", k.width, kp.n_heads * kp.head_dim)?;
        if qp.head_dim % 2 != 0 {
            return Err(BackendError::Invalid(format!("rope: odd head_dim {}", qp.head_dim)));
        }
        if batch.n_tokens == 0 {
            return Ok(());
        }
        if batch.one_token_per_seq && self.rope_in_attention {
            // A decode step: one launch rotates, writes the cache and attends.
            let a = |buf: &CudaSlice<f32>| addr(buf, &self.ctx);
            let rows = QkvRows { q: a(&q.buf), k: a(&k.buf), v: a(&v.buf), q_stride: to_u32("q width", q.width)?, kv_stride: to_u32("kv width", k.width)?, biases: [0; 3] };
            return self.attend_rope(rows, cache, layer, batch, qp, p, out, out_f16);
        }
        let (kc, vc) = cache.layer_addrs(layer, &self.ctx);
        let capacity = to_u32("KV capacity", cache.layout.capacity_tokens())?;
        let neox: u32 = matches!(qp.style, RopeStyle::Neox) as u32;
        let cfg = rope_launch(batch.n_tokens, (qp.n_heads + kp.n_heads) * qp.head_dim / 2)?;
        let (q_heads, kv_heads, head_dim) = (to_u32("heads", qp.n_heads)?, to_u32("heads", kp.n_heads)?, to_u32("head_dim", qp.head_dim)?);
        launch!(
            self.ctx, self.fixed.rope_store.for_cache(cache.layout.dtype), "rope_store", cfg,
            &mut q.buf, &q_heads, &k.buf, &v.buf, &kv_heads, &batch.positions, &batch.slots, &capacity, &head_dim,
            &qp.freq_base, &qp.scale, &neox, &kc, &vc
        )?;
        self.attend(q, cache, layer, batch, p, out, out_f16)
    }

    /// A decode step's attention in one launch (`attention_heads_rope`): rotates q and the new
    /// keys, writes the new keys and values into the cache and attends, q, k and v read from
    /// `rows`. The caller has checked the shapes and that the batch has one token a sequence.
    #[allow(clippy::too_many_arguments)]
    fn attend_rope(
        &mut self,
        rows: QkvRows,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        qp: &RopeParams,
        p: &AttnParams,
        out: &mut CudaAct,
        out_f16: u64,
    ) -> Result<(), BackendError> {
        let (kc, vc) = cache.layer_addrs(layer, &self.ctx);
        let capacity = to_u32("KV capacity", cache.layout.capacity_tokens())?;
        let neox: u32 = matches!(qp.style, RopeStyle::Neox) as u32;
        let kernels = self.attention_kernels(p.head_dim)?;
        let (cfg, slice, n_heads, n_kv_heads, scale) = attention_launch(batch, p)?;
        let attend_rope = kernels.for_slice(slice, &cfg, true);
        let [bq, bk, bv] = rows.biases;
        // The weights read next, where the step's projections run on the matrix-vector kernels,
        // which read the buffers the plan names (with more rows most projections read a
        // dequantized copy, which it does not name).
        let matvec = batch.n_tokens <= self.matvec_rows();
        let pf = match &self.prefetch {
            Some(plan) if matvec => plan.attention(&self.ctx, layer),
            _ => Default::default(),
        };
        launch!(
            self.ctx, attend_rope, "attention_heads_rope", cfg,
            &rows.q, &kc, &vc, &batch.positions, &batch.table_offset, &batch.block_tables, &batch.block_tokens,
            &n_heads, &n_kv_heads, &slice, &scale, &mut out.buf, &out_f16, &super::matmul::X_F16_SCALE,
            &rows.k, &rows.v, &batch.slots, &capacity, &qp.freq_base, &qp.scale, &neox,
            &batch.attn_splits, &batch.attn_partials, &batch.attn_counters, &rows.q_stride, &rows.kv_stride, &bq, &bk, &bv,
            &pf.ranges, &pf.n_ranges, &pf.first, &pf.offset_bytes, &pf.len_bytes
        )?;
        Ok(())
    }

    /// [`Backend::attention`], the output written as `attend` says.
    #[allow(clippy::too_many_arguments)]
    fn append_and_attend(
        &mut self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        p: &AttnParams,
        out: &mut CudaAct,
        out_f16: u64,
    ) -> Result<(), BackendError> {
        let kv_width = self.check_attention(q, k, v, cache, layer, batch, p, out)?;
        if batch.n_tokens == 0 {
            return Ok(());
        }
        let (kc, vc) = cache.layer_addrs(layer, &self.ctx);
        let (kv_width_u, capacity) = (to_u32("kv width", kv_width)?, to_u32("KV capacity", cache.layout.capacity_tokens())?);
        let cfg = LaunchConfig { grid_dim: (to_u32("tokens", batch.n_tokens)?, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let append = self.fixed.kv_append.for_cache(cache.layout.dtype);
        launch!(self.ctx, append, "kv_append", cfg, &k.buf, &v.buf, &batch.slots, &kv_width_u, &capacity, &kc, &vc)?;
        self.attend(q, cache, layer, batch, p, out, out_f16)
    }

    /// RoPE on `x` (`p.n_heads` heads a token) and, in the same launch, on `y` (`y_heads` heads
    /// a token, otherwise the same parameters).
    fn rotate(&mut self, x: &mut CudaAct, p: &RopeParams, y: Option<(&mut CudaAct, usize)>, batch: &CudaBatch) -> Result<(), BackendError> {
        check_width("rope input", x.width, p.n_heads * p.head_dim)?;
        check_rows("rope input", x, batch.n_tokens)?;
        if let Some((y, y_heads)) = &y {
            check_width("rope input", y.width, y_heads * p.head_dim)?;
            check_rows("rope input", y, batch.n_tokens)?;
        }
        if !p.head_dim.is_multiple_of(2) {
            return Err(BackendError::Invalid(format!("rope: odd head_dim {}", p.head_dim)));
        }
        if batch.n_tokens == 0 {
            return Ok(());
        }
        let y_heads = y.as_ref().map_or(0, |(_, h)| *h);
        let cfg = rope_launch(batch.n_tokens, (p.n_heads + y_heads) * p.head_dim / 2)?;
        let (x_heads, y_heads, head_dim) = (to_u32("heads", p.n_heads)?, to_u32("heads", y_heads)?, to_u32("head_dim", p.head_dim)?);
        let neox: u32 = matches!(p.style, RopeStyle::Neox) as u32;
        let (ctx, f) = (&self.ctx, &self.fixed.rope);
        match y {
            Some((y, _)) => launch!(ctx, f, "rope", cfg, &mut x.buf, &x_heads, &mut y.buf, &y_heads, &batch.positions, &head_dim, &p.freq_base, &p.scale, &neox)?,
            None => launch!(ctx, f, "rope", cfg, &mut x.buf, &x_heads, &0u64, &y_heads, &batch.positions, &head_dim, &p.freq_base, &p.scale, &neox)?,
        }
        Ok(())
    }

    /// A backend on `device` ("cuda" or "cuda:N"): creates (or reuses) the device's context,
    /// the cuBLAS handle, and compiles (or loads from the disk cache) the fixed kernels.
    /// `exact_matmul`: multiplies of more than 2 rows in float32 on the CUDA cores rather than
    /// f16 on the tensor cores or two-part x on the matrix-vector kernels (see `GemmPrecision`
    /// for the overrides).
    pub fn new(device: &str, exact_matmul: bool) -> Result<CudaBackend, CudaError> {
        Self::with_needs(device, exact_matmul, &KernelNeeds::default())
    }

    /// As [`CudaBackend::new`], compiling at once every kernel a model with `needs` will run
    /// (`kernels::modules_for`), not only the fixed ones.
    pub fn with_needs(device: &str, exact_matmul: bool, needs: &KernelNeeds) -> Result<CudaBackend, CudaError> {
        let ctx = CudaContext::get(device)?;
        ctx.precompile(&kernels::modules_for(needs, |ty| super::matvec::path_for(&ctx, ty) == MatvecPath::Tiled, flash_prefill_enabled()))?;
        if !cublas_library_present() {
            return Err(CudaError::MissingLibrary {
                lib: "cuBLAS (libcublas)",
                candidates: cudarc::get_lib_name_candidates("cublas").join(", "),
            });
        }
        ctx.raw().bind_to_thread().map_err(|e| CudaError::Driver { op: "binding the CUDA context".into(), msg: super::error::describe(&e) })?;
        let blas = CudaBlas::new(ctx.stream().clone())
            .map_err(|e| CudaError::Driver { op: format!("creating a cuBLAS handle on {}", ctx.device_name()), msg: format!("{e:?}") })?;
        let gemm = GemmPrecision::choose(exact_matmul)?;
        // The handle's math mode serves the float32 GEMMs: TF32 unless float32 was asked for
        // (an f16 model still multiplies in float32 when its weight has no f16 copy).
        let blas_workspace = configure_blas(&ctx, &blas, gemm != GemmPrecision::F32)?;
        let f = |src, name| ctx.function(src, name);
        let fixed = FixedKernels {
            rms_norm: f(&kernels::NORM, "rms_norm")?,
            rms_norm_f16: f(&kernels::NORM, "rms_norm_f16")?,
            rope: f(&kernels::ROPE, "rope")?,
            rope_store: PerKvDtype { f32: f(&kernels::ROPE, "rope_store")?, f16: f(&kernels::ROPE, "rope_store_f16")? },
            kv_append: PerKvDtype { f32: f(&kernels::ATTENTION, "kv_append")?, f16: f(&kernels::ATTENTION, "kv_append_f16")? },
            attention: None,
            swiglu: f(&kernels::ELEMENTWISE, "swiglu")?,
            swiglu_f16: f(&kernels::ELEMENTWISE, "swiglu_f16")?,
            add_assign: f(&kernels::ELEMENTWISE, "add_assign")?,
            add_bias: f(&kernels::ELEMENTWISE, "add_bias")?,
            add_biases3: f(&kernels::ELEMENTWISE, "add_biases3")?,
            split_rows3: f(&kernels::ELEMENTWISE, "split_rows3")?,
            gather_rows: f(&kernels::ELEMENTWISE, "gather_rows")?,
            to_f16_scaled: f(&kernels::CONVERT, "to_f16_scaled")?,
            abs_max: f(&kernels::CONVERT, "abs_max")?,
            scale_columns: f(&kernels::CONVERT, "scale_columns")?,
            norm_source: f(&kernels::NORM, "norm_source")?,
            gemm_f16_rows: [f(&kernels::GEMM_F16_ROWS, "gemm_f16_rows_8")?, f(&kernels::GEMM_F16_ROWS, "gemm_f16_rows_16")?],
            gemm_f16_rows_swiglu: [f(&kernels::GEMM_F16_ROWS, "gemm_f16_rows_swiglu_8")?, f(&kernels::GEMM_F16_ROWS, "gemm_f16_rows_swiglu_16")?],
        };
        // A graph would record the synchronizations FERRITE_CUDA_SYNC asks for, which capture forbids.
        let sampler = super::sampling::DeviceSampler::new(ctx.clone())?;
        let graphs_enabled = !ctx.syncs_each_launch() && std::env::var("FERRITE_CUDA_GRAPHS").map_or(true, |v| v != "0");
        let graph_max_rows = std::env::var("FERRITE_CUDA_GRAPH_MAX_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(GRAPH_MAX_ROWS);
        Ok(CudaBackend {
            ctx,
            blas,
            fixed,
            type_kernels: HashMap::new(),
            pair_kernels: HashMap::new(),
            pair_rows: super::matvec::pair_max_rows(),
            ffn_kernels: HashMap::new(),
            ffn_rows: super::ffn::max_rows()?,
            batch_buf: None,
            batch_generation: 0,
            graphs: HashMap::new(),
            attn_warps: 4,
            attn_splits: 1,
            forced_splits: forced_attention_splits(),
            gemm_mma_rows: super::matmul::forced_gemm_mma_rows(),
            row_rules: super::matmul::RowRules::from_env(),
            swiglu_gemm: super::matmul::swiglu_gemm_enabled(),
            stacking: super::matmul::stacking_enabled(),
            stack_in_place: super::matmul::stacked_in_place(),
            gemm_rows_max_bytes: super::matmul::gemm_rows_max_bytes(),
            gemm_rows_plan: super::matmul::gemm_rows_plan(),
            attn_heads: 0,
            attn_kv_heads: 0,
            attn_head_dim: 0,
            attn_partials: None,
            attn_counters: None,
            one_token_per_seq: false,
            rope_in_attention: rope_in_attention_enabled(),
            prefill_tiles: 0,
            graphs_enabled,
            graph_max_rows,
            sightings: HashMap::new(),
            _blas_workspace: blas_workspace,
            scratch: None,
            gemm,
            x_f16: None,
            stacked_out: None,
            swiglu_f16: None,
            norm_fold: super::matmul::norm_fold_enabled(),
            norm_fold_rows: super::matmul::norm_fold_max_rows(),
            norm_source: None,
            norm_src_f16: None,
            norm_parts: None,
            sampler,
            host_sampling: std::env::var("FERRITE_HOST_SAMPLING").is_ok_and(|v| v == "1"),
            host_draws: Default::default(),
            kv_capacity_tokens: 0,
            prefetch: None,
        })
    }

    /// The flash-decoding scratch for `n_tokens` rows in `splits` splits (grown if needed; see
    /// attention.cu's `Splits`): device addresses of the partial softmax states and of the
    /// counters.
    fn attention_scratch(&mut self, n_tokens: usize, splits: u32) -> Result<(u64, u64), BackendError> {
        let too_big = || BackendError::Invalid(format!("attention scratch for {n_tokens} rows in {splits} splits overflows"));
        let heads = n_tokens.checked_mul(self.attn_heads).ok_or_else(too_big)?;
        let partials = heads.checked_mul(splits as usize).and_then(|n| n.checked_mul(self.attn_head_dim + 2)).ok_or_else(too_big)?;
        if self.attn_partials.as_ref().is_none_or(|b| b.len() < partials) {
            self.attn_partials = None;
            self.attn_partials = Some(self.ctx.alloc::<f32>(partials.next_power_of_two(), "the attention splits' partial results")?);
            self.batch_generation += 1;
        }
        // One counter per (token, KV head, slice): at most one per query head.
        if self.attn_counters.as_ref().is_none_or(|b| b.len() < heads) {
            self.attn_counters = None;
            self.attn_counters = Some(self.ctx.alloc_zeros::<u32>(heads.next_power_of_two(), "the attention splits' counters")?);
            self.batch_generation += 1;
        }
        let (Some(p), Some(c)) = (self.attn_partials.as_ref(), self.attn_counters.as_ref()) else { unreachable!("allocated above") };
        Ok((addr(p, &self.ctx), addr(c, &self.ctx)))
    }

    fn kernels_for(&mut self, ty: GgmlType, path: super::matvec::MatvecPath) -> Result<Arc<TypeKernels>, CudaError> {
        if let Some(k) = self.type_kernels.get(&ty) {
            return Ok(k.clone());
        }
        let k = Arc::new(TypeKernels::compile(&self.ctx, ty, path)?);
        self.type_kernels.insert(ty, k.clone());
        Ok(k)
    }

    /// For a group of tiled matrices of two types that may share a launch (`kernels::launch_pair`:
    /// a 7B's Q4_K q and k with a Q6_K v), the pair kernels, compiled now rather than at the first
    /// token, and their split-K scratch for the group (the first type's matrices first, as
    /// `launch_matvec_pair` orders them).
    fn prepare_pair(&mut self, weights: &[&CudaWeight]) -> Result<(), BackendError> {
        let grids: Vec<(GgmlType, super::repack::TileGrid)> = weights
            .iter()
            .filter_map(|w| match w.layout {
                super::matvec::Layout::Tiles(g) if w.kernels.as_ref().is_some_and(|k| k.tiled.is_some()) => Some((w.ty, g)),
                _ => None,
            })
            .collect();
        if self.pair_rows == 0 || grids.len() != weights.len() || grids.len() > super::matvec::MAX_SEGMENTS {
            return Ok(());
        }
        let Some(pair) = kernels::group_pair(grids.iter().map(|g| g.0)) else {
            return Ok(());
        };
        let kernels = match self.pair_kernels.get(&pair) {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(super::matvec::PairKernels::compile(&self.ctx, pair)?);
                self.pair_kernels.insert(pair, k.clone());
                k
            }
        };
        kernels.reserve(&self.ctx, &grids)?;
        Ok(())
    }

    /// Uploads `bytes` (`n_rows` x `n_cols` elements of `ty`) as the weight `name`.
    fn upload_weight(&mut self, name: &str, ty: GgmlType, bytes: &[u8], n_rows: usize, n_cols: usize) -> Result<CudaWeight, BackendError> {
        use super::matvec::{self, Layout};
        let row_bytes = quant::row_bytes(ty, n_cols)?;
        quant::check_len(ty, bytes.len(), n_cols * n_rows)?;
        if kernels::type_defines(ty).is_none() {
            return Err(QuantError::Unsupported(ty).into());
        }
        if n_rows == 1 {
            let blocks = self.ctx.upload_weights(bytes, name)?;
            let mut v = vec![0f32; n_cols];
            quant::dequantize(ty, bytes, &mut v)?;
            let dense = Some(self.ctx.upload(&v, name)?);
            return Ok(CudaWeight { name: name.to_string(), ty, n_cols, n_rows, row_bytes, blocks, layout: Layout::Blocks, dense, kernels: None, resident: Default::default(), stacked: Default::default() });
        }
        // Compiled (or loaded from the disk cache) now, so that load fails rather than the
        // first token.
        let path = matvec::path_for(&self.ctx, ty);
        let kernels = self.kernels_for(ty, path)?;
        let (layout, repacked) = matvec::device_bytes(ty, bytes, n_rows, n_cols, path)?;
        let blocks = self.ctx.upload_weights(repacked.as_deref().unwrap_or(bytes), name)?;
        if let (Layout::Tiles(grid), Some(tiled)) = (layout, &kernels.tiled) {
            // Sized here, never during a forward: a recorded graph holds the scratch's address.
            let mut scratch = tiled.scratch.lock().map_err(|_| BackendError::Invalid("split-K scratch lock poisoned".into()))?;
            scratch.reserve(&self.ctx, tiled.sms, &grid)?;
            if self.gemm == GemmPrecision::F16 {
                // The quantized GEMM's plans too (matmul::takes_gemm_mma: f16 precision only).
                scratch.reserve_gemm(&self.ctx, tiled.sms, &grid)?;
            }
        }
        Ok(CudaWeight { name: name.to_string(), ty, n_cols, n_rows, row_bytes, blocks, layout, dense: None, kernels: Some(kernels), resident: Default::default(), stacked: Default::default() })
    }
}

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Act = CudaAct;
    type KvCache = CudaKvCache;
    type Batch = CudaBatch;

    fn device(&self) -> String {
        self.ctx.device_name()
    }

    fn load_weight(&mut self, src: &TensorSource) -> Result<CudaWeight, BackendError> {
        self.upload_weight(src.name(), src.ggml_type(), src.bytes(), src.n_rows(), src.n_cols())
    }

    fn group_type(&self, types: &[GgmlType]) -> Option<GgmlType> {
        let tiled = super::matvec::path_for(&self.ctx, GgmlType::Q8_0) == super::matvec::MatvecPath::Tiled;
        widened_group_type(types, tiled)
    }

    fn load_weight_as(&mut self, src: &TensorSource, ty: GgmlType) -> Result<CudaWeight, BackendError> {
        if ty == src.ggml_type() {
            return self.load_weight(src);
        }
        if ty != GgmlType::Q8_0 {
            return Err(BackendError::Invalid(format!("{}: the CUDA backend converts weights to Q8_0 only, not {ty}", src.name())));
        }
        let wide = quant::widen_to_q8_0(src.ggml_type(), src.bytes(), src.n_rows() * src.n_cols())?;
        self.upload_weight(src.name(), ty, &wide, src.n_rows(), src.n_cols())
    }

    fn alloc_act(&mut self, capacity_rows: usize, width: usize) -> Result<CudaAct, BackendError> {
        let n = capacity_rows
            .checked_mul(width)
            .ok_or_else(|| BackendError::Invalid(format!("activation {capacity_rows} x {width} overflows")))?;
        let buf = self.ctx.alloc::<f32>(n, &format!("an activation buffer of {capacity_rows} x {width}"))?;
        Ok(CudaAct { buf, width, capacity_rows })
    }

    fn plan_weight_prefetch(&mut self, read_order: &[&CudaWeight], after_attention: &[usize]) -> Result<(), BackendError> {
        let (attention_bytes, ahead_bytes) = super::prefetch::PrefetchPlan::sizes_from_env();
        // Recorded steps hold the old table's address.
        self.graphs.clear();
        self.prefetch = None;
        if attention_bytes == 0 && ahead_bytes == 0 {
            return Ok(());
        }
        let buffers: Vec<(u64, u64)> = read_order.iter().map(|w| (addr(&w.blocks, &self.ctx), w.blocks.len() as u64)).collect();
        let order = super::prefetch::ReadOrder::new(&buffers);
        self.prefetch = Some(super::prefetch::PrefetchPlan::new(&self.ctx, order, after_attention.to_vec(), attention_bytes, ahead_bytes)?);
        Ok(())
    }

    fn alloc_kv_cache(&mut self, layout: &KvLayout) -> Result<CudaKvCache, BackendError> {
        let n = layout.elements()?;
        if self.fixed.attention.as_ref().is_none_or(|a| (a.head_dim, a.kv_dtype) != (layout.head_dim, layout.dtype)) {
            let defines = kernels::attention_defines(layout.head_dim, layout.dtype).ok_or_else(|| {
                BackendError::Invalid(format!(
                    "head_dim {} has no CUDA attention kernel (these do: {:?})",
                    layout.head_dim,
                    kernels::ATTENTION_HEAD_DIMS
                ))
            })?;
            let prefill_defines = kernels::prefill_attention_defines(layout.head_dim, layout.dtype).filter(|_| flash_prefill_enabled());
            // Both modules compile at once (in parallel) on a new machine.
            let mut modules = vec![(&kernels::ATTENTION, defines.clone())];
            modules.extend(prefill_defines.iter().map(|d| (&kernels::ATTENTION_PREFILL, d.clone())));
            self.ctx.precompile(&modules)?;
            let f = |name| self.ctx.function_with(&kernels::ATTENTION, &defines, name);
            let (heads, heads_rope, heads_1, heads_rope_1) = (f("attention_heads")?, f("attention_heads_rope")?, f("attention_heads_1")?, f("attention_heads_rope_1")?);
            let heads_rope_1w8 = f("attention_heads_rope_1w8")?;
            let most = kernels::attention_shared_bytes(kernels::ATTENTION_MAX_WARPS, layout.head_dim, kernels::attention_group(layout.head_dim));
            for f in [&heads, &heads_rope, &heads_1, &heads_rope_1, &heads_rope_1w8] {
                super::launch::allow_dynamic_shared(f, "attention_heads", most)?;
            }
            // A driver that cannot say leaves 0: every launch keeps the 16-warp kernel.
            let mut w8_wave_blocks = [0u64; 4];
            if w8_attention_enabled() {
                for (i, blocks) in w8_wave_blocks.iter_mut().enumerate() {
                    let warps = 1u32 << i;
                    let smem = kernels::attention_shared_bytes(warps, layout.head_dim, 1) as usize;
                    let per_sm = heads_rope_1w8.occupancy_max_active_blocks_per_multiprocessor(32 * warps, smem, None).unwrap_or(0);
                    *blocks = per_sm as u64 * self.ctx.sms() as u64;
                }
            }
            let prefill = match prefill_defines {
                Some(d) => Some(self.ctx.function_with(&kernels::ATTENTION_PREFILL, &d, "attention_prefill")?),
                None => None,
            };
            self.fixed.attention =
                Some(AttentionKernels { head_dim: layout.head_dim, kv_dtype: layout.dtype, heads, heads_rope, heads_1, heads_rope_1, heads_rope_1w8, w8_wave_blocks, prefill });
        }
        if !layout.block_tokens.is_power_of_two() {
            return Err(BackendError::Invalid(format!("KV blocks of {} tokens: the kernels need a power of two", layout.block_tokens)));
        }
        let what = format!("the KV cache ({} layers x {} token slots)", layout.n_layers, layout.capacity_tokens());
        let k = KvBuf::alloc(&self.ctx, layout.dtype, n, &format!("K of {what}"))?;
        let v = KvBuf::alloc(&self.ctx, layout.dtype, n, &format!("V of {what}"))?;
        self.kv_capacity_tokens = layout.capacity_tokens();
        self.attn_heads = layout.n_heads;
        self.attn_kv_heads = layout.n_kv_heads;
        self.attn_head_dim = layout.head_dim;
        Ok(CudaKvCache { layout: *layout, k, v })
    }

    fn upload_batch(&mut self, plan: &BatchPlan) -> Result<CudaBatch, BackendError> {
        let n = plan.n_tokens();
        if plan.positions.len() != n || plan.token_seq.len() != n {
            return Err(BackendError::Invalid("batch plan arrays differ in length".into()));
        }
        // Packed, all u32: tokens | positions | slots | table_offset | logit_rows | prefill tiles
        // (2n) | block_tables. Every offset but the block tables' depends only on the token and
        // logit-row counts, which a recorded decode step is keyed by; the tables, whose length
        // varies, come last.
        let mut packed: Vec<u32> = Vec::with_capacity(6 * n + plan.logit_rows.len() + plan.block_tables.len() + 2 * plan.fed.len());
        packed.extend_from_slice(&plan.tokens);
        if self.host_sampling {
            self.host_draws.feed(plan, &mut packed[..n])?;
        }
        packed.extend_from_slice(&plan.positions);
        if plan.slots.len() != n {
            return Err(BackendError::Invalid(format!("batch plan of {n} tokens has {} KV slots", plan.slots.len())));
        }
        for (t, &slot) in plan.slots.iter().enumerate() {
            // The kernels index the cache with these; check them here, where an error can still
            // say which token.
            if slot as usize >= self.kv_capacity_tokens {
                return Err(BackendError::Invalid(format!("KV slot {slot} of token {t} past capacity {}", self.kv_capacity_tokens)));
            }
            packed.push(slot);
        }
        for t in 0..n {
            let seq = plan
                .seqs
                .get(plan.token_seq[t] as usize)
                .ok_or_else(|| BackendError::Invalid(format!("token {t} names sequence {} of {}", plan.token_seq[t], plan.seqs.len())))?;
            let blocks_needed = (plan.positions[t] as usize / plan.block_tokens.max(1) as usize) + 1;
            if seq.table_offset as usize + blocks_needed > plan.block_tables.len() {
                return Err(BackendError::Invalid(format!("token {t}: its block table is shorter than its position {}", plan.positions[t])));
            }
            // Attention reads a token's own key through its block table, and the decode kernel
            // (attention_heads_rope) takes it from where it writes it: the two must agree.
            if plan.slots[t] as usize != plan.slot_of(seq, plan.positions[t] as usize) {
                return Err(BackendError::Invalid(format!("token {t}: KV slot {} is not its position's slot in its block table", plan.slots[t])));
            }
            packed.push(seq.table_offset);
        }
        if let Some(&r) = plan.logit_rows.iter().find(|&&r| r as usize >= n) {
            return Err(BackendError::Invalid(format!("logit row {r} of a batch of {n} tokens")));
        }
        packed.extend_from_slice(&plan.logit_rows);
        let has_prefill_kernel = self.fixed.attention.as_ref().is_some_and(|a| a.prefill.is_some());
        let tiles = if has_prefill_kernel { prefill_tiles(&plan.token_seq, &plan.positions) } else { None };
        let n_tiles = tiles.as_ref().map_or(0, Vec::len);
        let tiles_at = packed.len();
        packed.extend(tiles.iter().flatten().flat_map(|&(first, rows)| [first, rows]));
        packed.resize(tiles_at + 2 * n, 0);
        let capacity_blocks = self.kv_capacity_tokens / plan.block_tokens.max(1) as usize;
        if let Some(&b) = plan.block_tables.iter().find(|&&b| b as usize >= capacity_blocks) {
            return Err(BackendError::Invalid(format!("KV block {b} of a pool of {capacity_blocks}")));
        }
        packed.extend_from_slice(&plan.block_tables);
        // Tokens drawn by the last step, which the host has not seen: copied on the device.
        let fed_at = packed.len();
        let mut fed_max_row = 0;
        if !self.host_sampling {
            for &(t, row) in &plan.fed {
                if t as usize >= n {
                    return Err(BackendError::Invalid(format!("fed token {t} of a batch of {n}")));
                }
                fed_max_row = fed_max_row.max(row as usize);
                packed.extend_from_slice(&[t, row]);
            }
        }
        let need = packed.len().max(1);
        if self.batch_buf.as_ref().is_none_or(|b| b.len() < need) {
            self.batch_buf = None;
            self.batch_buf = Some(self.ctx.alloc::<u32>(need.next_power_of_two().max(1024), "the batch description")?);
            self.batch_generation += 1;
        }
        let Some(buf) = self.batch_buf.as_mut() else { unreachable!("allocated above") };
        let base = addr(buf, &self.ctx);
        let at = |i: usize| base + (i * std::mem::size_of::<u32>()) as u64;
        // A decode step's description goes in a launch's parameters, with the drawn tokens fed in
        // the same launch; a longer one is copied, then fed.
        if !self.sampler.batch_in(base, &packed, fed_at, fed_max_row)? {
            self.ctx.upload_small(&packed, buf, "the batch description")?;
            let n_fed = (packed.len() - fed_at) / 2;
            self.sampler.feed(at(0), at(fed_at), n_fed, fed_max_row)?;
        }
        // Blocks a row of this batch takes unsplit: one per KV head and slice of its query heads.
        let group = self.attn_heads / self.attn_kv_heads.max(1);
        let blocks_per_row = self.attn_kv_heads * group.div_ceil(attention_slice(n, group, self.attn_head_dim).max(1));
        let (attn_warps, mut attn_splits) = attention_shape(&plan.positions, blocks_per_row, self.forced_splits);
        if n_tiles > 0 {
            attn_splits = 1; // attention_prefill takes the batch
        }
        self.attn_warps = attn_warps;
        self.attn_splits = attn_splits;
        let (attn_partials, attn_counters) = if attn_splits > 1 { self.attention_scratch(n, attn_splits)? } else { (0, 0) };
        let mut seen = vec![false; plan.seqs.len()];
        let one_token_per_seq = plan.token_seq.iter().all(|&s| !std::mem::replace(&mut seen[s as usize], true));
        self.one_token_per_seq = one_token_per_seq;
        let n_tiles = to_u32("prefill tiles", n_tiles)?;
        self.prefill_tiles = n_tiles;
        Ok(CudaBatch {
            n_tokens: n,
            n_logit_rows: plan.logit_rows.len(),
            tokens: at(0),
            positions: at(n),
            slots: at(2 * n),
            table_offset: at(3 * n),
            logit_rows: at(4 * n),
            block_tables: at(6 * n + plan.logit_rows.len()),
            block_tokens: plan.block_tokens,
            attn_warps,
            attn_splits,
            attn_partials,
            attn_counters,
            one_token_per_seq,
            tiles: at(tiles_at),
            n_tiles,
        })
    }

    fn embed(&mut self, table: &CudaWeight, batch: &CudaBatch, out: &mut CudaAct) -> Result<(), BackendError> {
        self.norm_source = None;
        check_width("embedding output", out.width, table.n_cols)?;
        check_rows("embedding output", out, batch.n_tokens)?;
        let f = table
            .kernels
            .as_ref()
            .map(|k| &k.embed)
            .ok_or_else(|| BackendError::Invalid(format!("{}: a vector cannot be an embedding table", table.name)))?;
        let n = (batch.n_tokens * table.n_cols) as u64;
        let (row_bytes, n_table_rows) = (table.row_bytes as u64, to_u32("table rows", table.n_rows)?);
        let (n_tokens, width) = (to_u32("tokens", batch.n_tokens)?, to_u32("width", table.n_cols)?);
        launch!(self.ctx, f, "embed_rows", grid_stride(n), &table.blocks, &row_bytes, &n_table_rows, &batch.tokens, &n_tokens, &width, &mut out.buf)?;
        Ok(())
    }

    fn rms_norm(&mut self, x: &CudaAct, weight: &CudaWeight, eps: f32, n_rows: usize, out: &mut CudaAct) -> Result<(), BackendError> {
        let w = weight.dense()?;
        check_width("rms_norm input", x.width, weight.n_cols)?;
        check_width("rms_norm output", out.width, weight.n_cols)?;
        check_rows("rms_norm input", x, n_rows)?;
        check_rows("rms_norm output", out, n_rows)?;
        if n_rows == 0 {
            return Ok(());
        }
        let cfg = LaunchConfig { grid_dim: (to_u32("rows", n_rows)?, 1, 1), block_dim: (NORM_THREADS, 1, 1), shared_mem_bytes: 0 };
        let width = to_u32("width", x.width)?;
        launch!(self.ctx, &self.fixed.rms_norm, "rms_norm", cfg, &x.buf, w, &width, &eps, &mut out.buf)?;
        Ok(())
    }

    fn matmul(&mut self, w: &CudaWeight, bias: Option<&CudaWeight>, x: &CudaAct, n_rows: usize, out: &mut CudaAct) -> Result<(), BackendError> {
        self.project(w, bias, x, n_rows, out, Write::Overwrite, &mut None)
    }

    fn matmuls<const N: usize>(
        &mut self,
        x: &CudaAct,
        n_rows: usize,
        projections: [(&CudaWeight, Option<&CudaWeight>, &mut CudaAct); N],
    ) -> Result<(), BackendError> {
        if super::matmul::tiled_matvec(self, &projections.each_ref().map(|p| p.0), n_rows) {
            return self.tiled_projections(projections, x, n_rows, Write::Overwrite, Input::X);
        }
        let mut x_f16 = None;
        for (w, bias, out) in projections {
            self.project(w, bias, x, n_rows, out, Write::Overwrite, &mut x_f16)?;
        }
        Ok(())
    }

    fn prepare_group(&mut self, weights: &[&CudaWeight]) -> Result<(), BackendError> {
        // Launches of the tiled kernels over several matrices of one type need split-K scratch
        // for all their rows at once; sized here, never during a (recorded) forward.
        let mut types: Vec<GgmlType> = Vec::new();
        for w in weights {
            if !types.contains(&w.ty) {
                types.push(w.ty);
            }
        }
        for ty in types {
            let grids: Vec<_> = weights
                .iter()
                .filter(|w| w.ty == ty)
                .filter_map(|w| match (w.layout, &w.kernels) {
                    (super::matvec::Layout::Tiles(g), Some(_)) => Some(g),
                    _ => None,
                })
                .collect();
            let Some(tiled) = weights.iter().find(|w| w.ty == ty).and_then(|w| w.kernels.as_ref()).and_then(|k| k.tiled.as_ref()) else {
                continue;
            };
            for group in grids.chunks(super::matvec::MAX_SEGMENTS) {
                let mut scratch = tiled.scratch.lock().map_err(|_| BackendError::Invalid("split-K scratch lock poisoned".into()))?;
                scratch.reserve_group(&self.ctx, tiled.sms, group)?;
            }
        }
        self.prepare_pair(weights)?;
        Ok(())
    }

    fn prepare_mlp(&mut self, [gate, up, down]: [&CudaWeight; 3]) -> Result<(), BackendError> {
        // Compiled for the shapes the kernel takes on this GPU; `mlp_add` finds no other.
        let runs = super::ffn::runs_on(self.ctx.compute_capability());
        if let Some(shape) = self.ffn_shape([gate, up, down]).filter(|s| runs && s.takes()) {
            if !self.ffn_kernels.contains_key(&shape) {
                let k = super::ffn::FfnKernels::new(&self.ctx, shape)?;
                self.ffn_kernels.insert(shape, k);
            }
        }
        Ok(())
    }

    fn norm_matmuls<const N: usize>(
        &mut self,
        x: &CudaAct,
        norm: &CudaWeight,
        eps: f32,
        n_rows: usize,
        xn: &mut CudaAct,
        projections: [(&CudaWeight, Option<&CudaWeight>, &mut CudaAct); N],
    ) -> Result<(), BackendError> {
        let weights = projections.each_ref().map(|p| p.0);
        if !super::matmul::tiled_matvec(self, &weights, n_rows) {
            if n_rows > 0 {
                // Every shape checked before the first launch; the checked outputs and biases serve
                // both GEMM paths below.
                check_width("rms_norm input", x.width, norm.n_cols)?;
                check_rows("rms_norm input", x, n_rows)?;
                let mut outs = Vec::with_capacity(N);
                for (w, bias, out) in &projections {
                    let b = check_projection(w, *bias, x, n_rows, out)?;
                    outs.push(super::matmul::StackedOut { weight: w, out: addr(&out.buf, &self.ctx), bias: b.map_or(0, |b| addr(b, &self.ctx)) });
                }
                let norm_w = norm.dense()?;
                // q/k/v as one GEMM on their stacked copy where it pays (`matmul::stacks`).
                let input = super::matmul::NormedInput { x, weight: norm_w, eps, source: None };
                if super::matmul::stacked_gemm(self, &outs, n_rows, &input)? {
                    return Ok(());
                }
                if super::matmul::f16_gemm_inputs(self, &weights, n_rows)? {
                    // Only cuBLAS's f16 GEMMs read the normalized rows: written as f16 directly.
                    let mut x_f16 = Some(super::matmul::rms_norm_as_f16(self, x, norm_w, eps, n_rows, super::matmul::X_F16_SCALE)?);
                    for (w, _, out) in projections {
                        self.project(w, None, x, n_rows, out, Write::Overwrite, &mut x_f16)?;
                    }
                    // The biases (q, k, v) go on in one launch after the GEMMs.
                    let biases: Vec<_> = outs.iter().filter(|o| o.bias != 0).map(|o| (o.out, o.bias, o.weight.n_rows)).collect();
                    return super::matmul::add_biases(self, &biases, n_rows);
                }
            }
            self.rms_norm(x, norm, eps, n_rows, xn)?;
            return self.matmuls(xn, n_rows, projections);
        }
        check_width("rms_norm input", x.width, norm.n_cols)?;
        let weight = addr(norm.dense()?, &self.ctx);
        self.tiled_projections(projections, x, n_rows, Write::Overwrite, Input::Normed { weight, eps })
    }

    fn attention_add(
        &mut self,
        x: &mut CudaAct,
        w: AttnWeights<'_, CudaWeight>,
        eps: f32,
        n_rows: usize,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        rope: (&RopeParams, &RopeParams),
        p: &AttnParams,
        bufs: AttnBuffers<'_, CudaAct>,
    ) -> Result<(), BackendError> {
        // A decode step on the cuBLAS path with q/k/v stacked (`matmul::stacks`): attention reads
        // the stacked GEMM's output rows and adds the biases itself, no launch to split them.
        let source = self.norm_source.take();
        let (qp, kp) = rope;
        let decode = n_rows > 0
            && n_rows == batch.n_tokens
            && batch.one_token_per_seq
            && self.rope_in_attention
            && rope_in_one_launch(qp, kp, p)
            && qp.head_dim % 2 == 0;
        let stacked = decode
            && self.stack_in_place
            && !super::matmul::tiled_matvec(self, &[w.q, w.k, w.v], n_rows)
            && !super::matmul::tiled_matvec(self, &[w.o], n_rows)
            && super::matmul::f16_gemm_inputs(self, &[w.o], n_rows)?;
        if stacked {
            check_width("rms_norm input", x.width, w.norm.n_cols)?;
            check_rows("rms_norm input", x, n_rows)?;
            self.check_attention(bufs.q, bufs.k, bufs.v, cache, layer, batch, p, bufs.out)?;
            check_width("rope input", bufs.q.width, qp.n_heads * qp.head_dim)?;
            check_width("rope input", bufs.k.width, kp.n_heads * kp.head_dim)?;
            let mut biases = [0u64; 3];
            for (i, (proj, bias, out)) in [(w.q, w.bq, &*bufs.q), (w.k, w.bk, &*bufs.k), (w.v, w.bv, &*bufs.v)].into_iter().enumerate() {
                biases[i] = check_projection(proj, bias, x, n_rows, out)?.map_or(0, |b| addr(b, &self.ctx));
            }
            check_width("attention output", bufs.out.width, w.o.n_cols)?;
            let input = super::matmul::NormedInput { x, weight: w.norm.dense()?, eps, source };
            if let Some(qkv) = super::matmul::stacked_gemm_unsplit(self, &[w.q, w.k, w.v], n_rows, &input)? {
                let f = std::mem::size_of::<f32>() as u64;
                let (q_rows, k_rows) = (w.q.n_rows as u64, w.k.n_rows as u64);
                let stride = to_u32("stacked q/k/v width", w.q.n_rows + w.k.n_rows + w.v.n_rows)?;
                let rows = QkvRows { q: qkv, k: qkv + q_rows * f, v: qkv + (q_rows + k_rows) * f, q_stride: stride, kv_stride: stride, biases };
                let out_f16 = super::matmul::f16_input(self, n_rows * w.o.n_cols)?;
                self.attend_rope(rows, cache, layer, batch, qp, p, bufs.out, out_f16)?;
                // x += o · attention, with x's norm source for gate/up.
                return self.project_add_with_norm_source(w.o, bufs.out, out_f16, n_rows, x);
            }
        }
        let projections = [(w.q, w.bq, &mut *bufs.q), (w.k, w.bk, &mut *bufs.k), (w.v, w.bv, &mut *bufs.v)];
        self.norm_matmuls(x, w.norm, eps, n_rows, bufs.xn, projections)?;
        self.rope_attention_matmul_add(bufs.q, bufs.k, bufs.v, cache, layer, batch, rope, p, bufs.out, w.o, n_rows, bufs.proj, x)
    }

    fn mlp_add(
        &mut self,
        x: &mut CudaAct,
        norm: &CudaWeight,
        eps: f32,
        n_rows: usize,
        [gate, up, down]: [&CudaWeight; 3],
        bufs: MlpBuffers<'_, CudaAct>,
    ) -> Result<(), BackendError> {
        // On the cuBLAS path with gate and up stacked (`matmul::stacks`), SwiGLU reads the two
        // halves of the stacked GEMM's output rows: no launch to split them first.
        let source = self.norm_source.take();
        // One or two rows: the whole block as one launch where the fused kernel takes it (ffn.rs).
        if n_rows > 0 && n_rows <= self.ffn_rows && super::matmul::tiled_matvec(self, &[gate, up, down], n_rows) {
            let shape = self.ffn_shape([gate, up, down]).filter(|s| s.takes_rows(n_rows));
            if let Some(k) = shape.and_then(|shape| self.ffn_kernels.get(&shape)) {
                check_width("rms_norm input", x.width, norm.n_cols)?;
                check_width("ffn_gate input", x.width, gate.n_cols)?;
                check_rows("rms_norm input", x, n_rows)?;
                let norm_w = addr(norm.dense()?, &self.ctx);
                let weights = [gate, up, down].map(|w| addr(&w.blocks, &self.ctx));
                k.launch(&self.ctx, n_rows, weights, addr(&x.buf, &self.ctx), norm_w, eps)?;
                return Ok(());
            }
        }
        let stacked = n_rows > 0
            && self.stack_in_place
            && !super::matmul::tiled_matvec(self, &[gate, up], n_rows)
            && !super::matmul::tiled_matvec(self, &[down], n_rows)
            && gate.n_rows == up.n_rows
            && super::matmul::f16_gemm_inputs(self, &[down], n_rows)?;
        if stacked {
            check_width("rms_norm input", x.width, norm.n_cols)?;
            check_rows("rms_norm input", x, n_rows)?;
            check_projection(gate, None, x, n_rows, bufs.gate)?;
            check_projection(up, None, x, n_rows, bufs.up)?;
            // SwiGLU's output takes gate's place as down's input.
            check_projection(down, None, bufs.gate, n_rows, x)?;
            let input = super::matmul::NormedInput { x, weight: norm.dense()?, eps, source };
            let swiglu = match super::matmul::stacked_swiglu_rows(self, gate, up, n_rows, &input)? {
                Some(swiglu) => Some(swiglu),
                None => match super::matmul::stacked_gemm_unsplit(self, &[gate, up], n_rows, &input)? {
                    Some(out) => {
                        let width = gate.n_rows;
                        let up_out = out + (width * std::mem::size_of::<f32>()) as u64;
                        Some(super::matmul::swiglu_as_f16(self, out, up_out, width, 2 * width, n_rows)?)
                    }
                    None => None,
                },
            };
            if let Some(swiglu) = swiglu {
                // x += down · swiglu, with x's norm source for the next layer's q/k/v.
                return self.project_add_with_norm_source(down, bufs.gate, swiglu, n_rows, x);
            }
        }
        self.norm_matmuls(x, norm, eps, n_rows, bufs.xn, [(gate, None, &mut *bufs.gate), (up, None, &mut *bufs.up)])?;
        self.swiglu_matmul_add(bufs.gate, bufs.up, down, n_rows, bufs.ffn, bufs.proj, x)
    }

    fn swiglu_matmul_add(
        &mut self,
        gate: &CudaAct,
        up: &CudaAct,
        w: &CudaWeight,
        n_rows: usize,
        ffn: &mut CudaAct,
        scratch: &mut CudaAct,
        acc: &mut CudaAct,
    ) -> Result<(), BackendError> {
        if !super::matmul::tiled_matvec(self, &[w], n_rows) {
            if n_rows > 0 && super::matmul::f16_gemm_inputs(self, &[w], n_rows)? {
                // Only ffn_down's f16 GEMM reads SwiGLU's output: written as f16 directly.
                check_width("swiglu up", up.width, gate.width)?;
                for (what, a) in [("swiglu gate", gate), ("swiglu up", up)] {
                    check_rows(what, a, n_rows)?;
                }
                let (g, u) = (addr(&gate.buf, &self.ctx), addr(&up.buf, &self.ctx));
                let mut x_f16 = Some(super::matmul::swiglu_as_f16(self, g, u, gate.width, gate.width, n_rows)?);
                return self.project(w, None, gate, n_rows, acc, Write::Accumulate, &mut x_f16);
            }
            self.swiglu(gate, up, n_rows, ffn)?;
            return self.matmul_add(w, ffn, n_rows, scratch, acc);
        }
        check_width("swiglu up", up.width, gate.width)?;
        check_rows("swiglu up", up, n_rows)?;
        let up = addr(&up.buf, &self.ctx);
        self.tiled_projections([(w, None, acc)], gate, n_rows, Write::Accumulate, Input::Swiglu { up })
    }

    fn matmul_add(&mut self, w: &CudaWeight, x: &CudaAct, n_rows: usize, _scratch: &mut CudaAct, acc: &mut CudaAct) -> Result<(), BackendError> {
        self.project(w, None, x, n_rows, acc, Write::Accumulate, &mut None)
    }

    fn rope(&mut self, x: &mut CudaAct, batch: &CudaBatch, p: &RopeParams) -> Result<(), BackendError> {
        self.rotate(x, p, None, batch)
    }

    fn rope_qk(&mut self, q: &mut CudaAct, k: &mut CudaAct, batch: &CudaBatch, qp: &RopeParams, kp: &RopeParams) -> Result<(), BackendError> {
        let same_but_heads = RopeParams { n_heads: qp.n_heads, ..*kp } == *qp;
        if !same_but_heads {
            self.rotate(q, qp, None, batch)?;
            return self.rotate(k, kp, None, batch);
        }
        self.rotate(q, qp, Some((k, kp.n_heads)), batch)
    }

    fn attention(
        &mut self,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        p: &AttnParams,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.append_and_attend(q, k, v, cache, layer, batch, p, out, 0)
    }

    fn rope_attention(
        &mut self,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &CudaAct,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        rope: (&RopeParams, &RopeParams),
        p: &AttnParams,
        out: &mut CudaAct,
    ) -> Result<(), BackendError> {
        self.rope_attention_to(q, k, v, cache, layer, batch, rope, p, out, 0)
    }

    fn rope_attention_matmul_add(
        &mut self,
        q: &mut CudaAct,
        k: &mut CudaAct,
        v: &CudaAct,
        cache: &mut CudaKvCache,
        layer: usize,
        batch: &CudaBatch,
        rope: (&RopeParams, &RopeParams),
        p: &AttnParams,
        out: &mut CudaAct,
        wo: &CudaWeight,
        n_rows: usize,
        scratch: &mut CudaAct,
        acc: &mut CudaAct,
    ) -> Result<(), BackendError> {
        let to_gemm = n_rows > 0
            && n_rows == batch.n_tokens
            && !super::matmul::tiled_matvec(self, &[wo], n_rows)
            && super::matmul::f16_gemm_inputs(self, &[wo], n_rows)?;
        if !to_gemm {
            self.rope_attention_to(q, k, v, cache, layer, batch, rope, p, out, 0)?;
            return self.matmul_add(wo, out, n_rows, scratch, acc);
        }
        // Only attn_output's f16 GEMM reads the attention's output: written as f16 directly.
        check_width("attention output", out.width, wo.n_cols)?;
        let out_f16 = super::matmul::f16_input(self, n_rows * wo.n_cols)?;
        self.rope_attention_to(q, k, v, cache, layer, batch, rope, p, out, out_f16)?;
        self.project(wo, None, out, n_rows, acc, Write::Accumulate, &mut Some(out_f16))
    }

    fn swiglu(&mut self, gate: &CudaAct, up: &CudaAct, n_rows: usize, out: &mut CudaAct) -> Result<(), BackendError> {
        check_width("swiglu up", up.width, gate.width)?;
        check_width("swiglu out", out.width, gate.width)?;
        for (what, a) in [("swiglu gate", gate), ("swiglu up", up)] {
            check_rows(what, a, n_rows)?;
        }
        check_rows("swiglu out", out, n_rows)?;
        let n = (n_rows * gate.width) as u64;
        if n == 0 {
            return Ok(());
        }
        launch!(self.ctx, &self.fixed.swiglu, "swiglu", grid_stride_float4s(n), &gate.buf, &up.buf, &n, &mut out.buf)?;
        Ok(())
    }

    fn add_assign(&mut self, x: &mut CudaAct, y: &CudaAct, n_rows: usize) -> Result<(), BackendError> {
        check_width("add", y.width, x.width)?;
        check_rows("add", x, n_rows)?;
        check_rows("add", y, n_rows)?;
        let n = (n_rows * x.width) as u64;
        if n == 0 {
            return Ok(());
        }
        launch!(self.ctx, &self.fixed.add_assign, "add_assign", grid_stride(n), &mut x.buf, &y.buf, &n)?;
        Ok(())
    }

    fn gather_rows(&mut self, x: &CudaAct, batch: &CudaBatch, first: usize, count: usize, out: &mut CudaAct) -> Result<(), BackendError> {
        check_width("gather", out.width, x.width)?;
        if first + count > batch.n_logit_rows {
            return Err(BackendError::Invalid(format!("logit rows {first}..{} of {}", first + count, batch.n_logit_rows)));
        }
        check_rows("gather input", x, batch.n_tokens)?;
        check_rows("gather output", out, count)?;
        if count == 0 {
            return Ok(());
        }
        let rows = batch.logit_rows + (first * std::mem::size_of::<u32>()) as u64;
        let (count_u, width) = (to_u32("rows", count)?, to_u32("width", x.width)?);
        let n = (count * x.width) as u64;
        launch!(self.ctx, &self.fixed.gather_rows, "gather_rows", grid_stride(n), &x.buf, &rows, &count_u, &width, &mut out.buf)?;
        Ok(())
    }

    fn read_rows(&mut self, x: &CudaAct, n_rows: usize, out: &mut [f32]) -> Result<(), BackendError> {
        check_rows("read_rows", x, n_rows)?;
        let n = n_rows * x.width;
        check_width("read_rows destination", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let what = format!("{n_rows} rows of logits");
        self.ctx.sync(&format!("the forward pass producing {what}"))?;
        self.ctx
            .stream()
            .memcpy_dtoh(&x.buf.slice(..n), out)
            .map_err(|e| CudaError::KernelFault { op: format!("copying {what} device->host"), msg: super::error::describe(&e) })?;
        self.ctx.sync(&format!("copying {what} device->host"))?;
        Ok(())
    }

    fn alloc_owned_rows(&mut self, n_rows: usize, width: usize) -> Result<OwnedRows, BackendError> {
        let n = n_rows.checked_mul(width).ok_or_else(|| BackendError::Invalid(format!("{n_rows} x {width} rows overflow")))?;
        Ok(OwnedRows::Cuda(super::device_tensor::DeviceTensor::alloc(self.ctx.clone(), n, &format!("{n_rows} rows of logits"))?))
    }

    fn copy_rows(&mut self, x: &CudaAct, n_rows: usize, width: usize, dst: &mut OwnedRows, dst_row: usize) -> Result<(), BackendError> {
        check_rows("copy_rows", x, n_rows)?;
        check_width("copy_rows", x.width, width)?;
        match dst {
            OwnedRows::Cuda(t) => Ok(t.copy_from(&x.buf, n_rows * width, dst_row * width)?),
            OwnedRows::Host(v) => {
                let out = v
                    .get_mut(dst_row * width..(dst_row + n_rows) * width)
                    .ok_or_else(|| BackendError::Invalid("copy_rows past the end of its destination".into()))?;
                self.read_rows(x, n_rows, out)
            }
        }
    }

    fn queue_draws(&mut self, logits: &CudaAct, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), BackendError> {
        super::sampling::queue_draws(self, logits, specs, first_row)
    }

    fn close_draws(&mut self, rows: usize) -> Result<(), BackendError> {
        super::sampling::close_draws(self, rows)
    }

    fn take_draws(&mut self, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError> {
        super::sampling::take_draws(self, out)
    }

    fn queues_work(&self) -> bool {
        true
    }

    fn replayable(&mut self, key: Option<ReplayKey>, ops: impl FnOnce(&mut Self) -> Result<(), BackendError>) -> Result<(), BackendError> {
        let Some(key) = key.filter(|k| self.graphs_enabled && k.n_tokens <= self.graph_max_rows) else {
            return ops(self);
        };
        let full_key = (key, self.batch_generation, (self.attn_warps, self.attn_splits), self.one_token_per_seq && self.rope_in_attention, self.prefill_tiles);
        if let Some(Recorded(graph)) = self.graphs.get(&full_key) {
            graph.launch().map_err(|e| CudaError::Driver { op: format!("launching the recorded decode step {key:?}"), msg: super::error::describe(&e) })?;
            return Ok(());
        }
        // A large batch is recorded only once its sizes come back (a steady decode), not for
        // every size a changing batch passes through: recording costs about as much as a few
        // steps. Its unrecorded runs also make what a large multiply allocates on first use
        // (the weights' f16 or float32 copies, stacked or single, the scratch, the stacked GEMM's
        // output), which must not happen while recording.
        // "Large" is more rows than the matrix-vector kernels take.
        if key.n_tokens > self.matvec_rows() {
            if self.sightings.len() > SIGHTINGS_MAX {
                self.sightings.clear();
            }
            let seen = self.sightings.entry(full_key).or_insert(0);
            *seen += 1;
            if *seen < LARGE_RUNS_BEFORE_RECORDING {
                return ops(self);
            }
        }
        // Graphs of older buffers can never match again.
        self.graphs.retain(|(k, g, _, _, _), _| k.buffers_generation == key.buffers_generation && *g == self.batch_generation);
        let stream = self.ctx.stream().clone();
        let capture_err = |op: &str, e: cudarc::driver::DriverError| CudaError::Driver { op: format!("{op} the decode step {key:?}"), msg: super::error::describe(&e) };
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| capture_err("starting to record", e))?;
        let queued = ops(self);
        // End the capture whatever happened, or the stream stays unusable.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        queued?;
        let graph = ended.map_err(|e| capture_err("recording", e))?.ok_or_else(|| CudaError::Invalid(format!("recording the decode step {key:?} captured nothing")))?;
        graph.launch().map_err(|e| capture_err("launching", e))?;
        self.graphs.insert(full_key, Recorded(graph));
        Ok(())
    }
}

#[cfg(test)]
mod attention_launch_tests {
    fn attention_warps(positions: &[u32]) -> u32 {
        super::attention_shape(positions, 14, Some(1)).0
    }

    /// Flash-decoding splits: none up to ATTENTION_SPLIT_KEYS keys (the warps as before), then
    /// about that many keys a split, at most ATTENTION_MAX_SPLITS and ATTENTION_SPLIT_MAX_BLOCKS
    /// blocks; none for large batches; the FERRITE_CUDA_ATTN_SPLITS count wherever a batch may split.
    #[test]
    fn long_contexts_of_small_batches_split_into_ranges_of_about_512_keys() {
        // One row takes 14 blocks unsplit in the 0.5B shapes (2 KV heads x 7 one-head slices).
        let attention_shape = |p: &[u32], forced| super::attention_shape(p, 14, forced);
        let cases: [(&[u32], (u32, u32)); 7] = [
            (&[0], (4, 1)),
            (&[511], (16, 1)),
            (&[512], (16, 2)),
            (&[599, 20], (16, 2)),
            (&[4095], (16, 8)),
            (&[4095, 100, 7], (16, 6)), // 3 rows x 14 blocks: 6 splits keep them within 256
            (&[100_000], (16, 16)),
        ];
        for (positions, want) in cases {
            assert_eq!(attention_shape(positions, None), want, "{positions:?}");
        }
        assert_eq!(attention_shape(&vec![5000; 300], None), (4, 1), "large batches do not split");
        assert_eq!(attention_shape(&[44], Some(5)), (4, 5));
        assert_eq!(attention_shape(&[4095], Some(1)), (16, 1));
        assert_eq!(attention_shape(&[4095], Some(1000)), (8, 16), "at most 16 splits, of 256 keys here");
        // The block caps: 2 rows of 14 blocks split in 8 (224 blocks), 4 rows in 4 (224), 8 rows
        // (112 blocks unsplit) not at all; the 7B shapes' one row (28 blocks) in 8.
        assert_eq!(super::attention_shape(&[4095; 2], 14, None), (16, 8));
        assert_eq!(super::attention_shape(&[4095; 4], 14, None), (16, 4));
        assert_eq!(super::attention_shape(&[4095; 8], 14, None), (16, 1));
        assert_eq!(super::attention_shape(&[4095], 28, None), (16, 8));
        assert_eq!(super::attention_shape(&[4095; 8], 14, Some(5)), (16, 5), "the override ignores the cap");
    }

    /// Prompt chunks become tiles of at most 16 consecutive rows of one sequence, longest contexts
    /// first; a batch without a run of 16 (decode, short appends) keeps attention.cu's kernel.
    #[test]
    fn prefill_tiles_cover_every_token_once_in_runs_of_one_sequence() {
        use super::{prefill_tiles, PREFILL_MIN_RUN};
        use crate::backend::cuda::kernels::PREFILL_TILE_ROWS;
        // One prompt of 40 tokens: tiles of 16, 16 and 8, the last (longest contexts) first.
        let seq = vec![0u32; 40];
        let pos: Vec<u32> = (0..40).collect();
        assert_eq!(prefill_tiles(&seq, &pos), Some(vec![(32, 8), (16, 16), (0, 16)]));
        // A decode step, and a short append beside it: no run of 16.
        assert_eq!(prefill_tiles(&[0, 1, 2, 3], &[10, 20, 30, 40]), None);
        let short: Vec<u32> = (0..PREFILL_MIN_RUN as u32 - 1).collect();
        assert_eq!(prefill_tiles(&vec![0; short.len()], &short), None);
        // Random batches: decode rows, prompt chunks at any offset, one sequence's tokens split by
        // a gap in positions. Every token in exactly one tile; a tile's tokens are one sequence's,
        // at consecutive positions; tiles in order of their last position, descending.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % m as u64) as u32
        };
        for _ in 0..200 {
            let (mut seq, mut pos) = (Vec::new(), Vec::new());
            for s in 0..1 + next(6) {
                let (start, len) = (next(300), if next(2) == 0 { 1 } else { 1 + next(70) });
                for i in 0..len {
                    seq.push(s);
                    pos.push(start + i + if i > 20 && next(30) == 0 { 5 } else { 0 });
                }
            }
            let Some(tiles) = prefill_tiles(&seq, &pos) else { continue };
            let mut covered = vec![0; seq.len()];
            let mut last = u64::MAX;
            for &(first, rows) in &tiles {
                let (f, r) = (first as usize, rows as usize);
                assert!((1..=PREFILL_TILE_ROWS).contains(&r));
                for t in f..f + r {
                    covered[t] += 1;
                    assert_eq!(seq[t], seq[f]);
                    assert_eq!(pos[t], pos[f] + (t - f) as u32);
                }
                let end = pos[f] as u64 + rows as u64;
                assert!(end <= last);
                last = end;
            }
            assert!(covered.iter().all(|&c| c == 1), "{seq:?} {pos:?} {tiles:?}");
        }
    }

    #[test]
    fn warps_follow_the_longest_context_in_powers_of_two_from_four_for_small_batches() {
        // positions are 0-based: a context of p + 1 keys.
        let cases: [(&[u32], u32); 7] = [(&[0], 4), (&[31], 4), (&[32], 4), (&[100, 3], 4), (&[5, 128], 8), (&[511], 16), (&[100_000], 16)];
        for (positions, want) in cases {
            assert_eq!(attention_warps(positions), want, "{positions:?}");
        }
        assert_eq!(attention_warps(&vec![2000; 300]), 4, "large batches keep 4-warp blocks");
    }

    #[test]
    fn heads_per_block_are_one_for_few_rows_and_never_above_the_kernels_group() {
        use super::attention_slice;
        for hd in crate::backend::cuda::kernels::ATTENTION_HEAD_DIMS {
            let group = crate::backend::cuda::kernels::attention_group(hd);
            for heads in [1, 4, 7, 8] {
                assert_eq!(attention_slice(1, heads, hd), 1);
                assert_eq!(attention_slice(super::ATTENTION_ONE_HEAD_MAX_ROWS, heads, hd), 1);
                // More rows: every head of the group that the kernel holds shares one block.
                for rows in [super::ATTENTION_ONE_HEAD_MAX_ROWS + 1, 64, 4096] {
                    assert_eq!(attention_slice(rows, heads, hd), group.min(heads), "{rows} rows, head dim {hd}");
                }
            }
        }
    }
}

#[cfg(test)]
mod group_type_tests {
    #[test]
    fn groups_mixing_q5_0_and_q8_0_load_as_q8_0_on_the_tiled_path_only() {
        use crate::quant::GgmlType::*;
        use super::widened_group_type;
        assert_eq!(widened_group_type(&[Q5_0, Q5_0, Q8_0], true), Some(Q8_0));
        assert_eq!(widened_group_type(&[Q8_0, Q5_0], true), Some(Q8_0));
        // One type already: nothing to widen; another type in the group, or no tiles: each keeps its own.
        assert_eq!(widened_group_type(&[Q5_0, Q5_0, Q5_0], true), None);
        assert_eq!(widened_group_type(&[Q5_0, Q4_0, Q8_0], true), None);
        assert_eq!(widened_group_type(&[Q4_K, Q6_K], true), None);
        assert_eq!(widened_group_type(&[Q5_0, Q8_0], false), None);
        assert_eq!(widened_group_type(&[], true), None);
    }
}
