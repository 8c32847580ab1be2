//! The ops the model needs, implemented per device. `cpu` runs everywhere; `cuda` loads the
//! driver at run time.
//!
//! The forward pass (`crate::model::qwen2`) is written once against [`Backend`]. The trait is
//! shaped so that a GPU backend keeps weights, activations and the KV cache in device memory:
//!
//! * weights are uploaded once, as the GGUF's own quantized blocks ([`TensorSource`]);
//! * activation buffers are allocated once per batch size and reused ([`Backend::alloc_act`]);
//!   ops write into caller-provided buffers, so no op allocates;
//! * the ragged batch layout (positions, which sequence each token belongs to, where each
//!   sequence lives in the KV cache) is uploaded once per forward ([`Backend::upload_batch`]);
//! * ops return no data, so a backend may queue them asynchronously; the only device-to-host
//!   copy is [`Backend::read_rows`] for the logits.
//!
//! Shapes: an activation is row-major `[rows][width]` float32 (a backend may store it otherwise
//! internally, but `read_rows` returns that layout). Every op takes the number of rows it works
//! on, which may be less than the buffer's capacity. A matrix weight has GGUF dims
//! `[n_cols, n_rows]` (ggml order) and computes `out[t][r] = Σ_c W[r][c] · x[t][c] (+ bias[r])`.

pub mod cpu;
pub mod cuda;
mod device;
pub mod draws;
mod error;

pub use device::{with_backend, BackendOptions, Device, KernelNeeds, WithBackend};

use std::sync::Arc;

use crate::gguf::{GgufFile, TensorInfo};
pub use error::BackendError;
use crate::quant::GgmlType;
use crate::sampling::{SampleSpec, Sampled, SamplingError};

/// Rows of float32 values the caller keeps after the forward pass (logits handed out on the
/// device that computed them): on the host, or in a CUDA buffer of their own.
pub enum OwnedRows {
    Host(Vec<f32>),
    Cuda(cuda::DeviceTensor),
}

/// A tensor to upload: its info and the file that holds its block bytes. The CPU backend keeps
/// the `Arc` and computes straight from the memory map; a GPU backend copies `bytes()` once.
#[derive(Clone)]
pub struct TensorSource {
    pub file: Arc<GgufFile>,
    pub info: TensorInfo,
}

impl TensorSource {
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }
    /// Elements per row (GGUF ne0): the input width of a matrix, the length of a vector.
    pub fn n_cols(&self) -> usize {
        self.info.row_elems()
    }
    /// Rows (product of the other dims): the output width of a matrix, 1 for a vector.
    pub fn n_rows(&self) -> usize {
        self.info.n_rows()
    }
    /// The raw quantized blocks, row after row (`n_rows * quant::row_bytes(ty, n_cols)` bytes).
    pub fn bytes(&self) -> &[u8] {
        self.file.tensor_bytes(&self.info)
    }
}

/// How RoPE pairs the dimensions of a head. GGUF files store Q/K weights for the layout their
/// architecture's ggml graph uses: `qwen2` rotates the two halves of a head (NeoX style,
/// dimension `i` with `i + head_dim/2`); `llama` rotates adjacent pairs (`2i` with `2i+1`),
/// because the converter permutes Llama's Q/K rows to make it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(i, i + head_dim/2)`.
    Neox,
    /// Pairs `(2i, 2i + 1)`.
    Adjacent,
}

/// RoPE for one projection: `theta_i = pos / scale · freq_base^(-2i/head_dim)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub style: RopeStyle,
    pub n_heads: usize,
    pub head_dim: usize,
    pub freq_base: f32,
    /// Linear position scaling: positions are divided by it (1.0 = none).
    pub scale: f32,
}

/// Shape of the KV cache: one pool of `n_blocks` blocks of `block_tokens` token slots per layer,
/// shared by all sequences. A sequence owns a list of blocks (its block table): the token at
/// position `p` lives in slot `table[p / block_tokens] * block_tokens + p % block_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub n_layers: usize,
    /// Query heads a layer (the cache holds none; a backend may size per-head attention scratch by it).
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub n_blocks: usize,
    pub block_tokens: usize,
    /// What one cached key or value element is stored as.
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Token slots per layer.
    pub fn capacity_tokens(&self) -> usize {
        self.n_blocks * self.block_tokens
    }

    /// Elements of K (and as many of V) over every layer, or an error when that overflows.
    pub fn elements(&self) -> Result<usize, BackendError> {
        self.n_layers
            .checked_mul(self.capacity_tokens())
            .and_then(|n| n.checked_mul(self.n_kv_heads * self.head_dim))
            .ok_or_else(|| BackendError::Invalid(format!("KV cache {self:?} overflows")))
    }
}

/// The element type of the KV cache. Attention computes in float32 either way; `F16` rounds each
/// key and value to IEEE half precision (round to nearest even) as it is stored, which halves the
/// cache's memory. Values past f16's range become infinite, as in any f16 cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    pub const ALL: [KvDtype; 2] = [KvDtype::F32, KvDtype::F16];

    /// The name the Python API uses: "float32" or "float16".
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
        }
    }

    /// The dtype of a [`name`](Self::name), or `None`.
    pub fn from_name(name: &str) -> Option<KvDtype> {
        KvDtype::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Grouped-query attention geometry: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnParams {
    /// Checks the widths of attention's q, k, v and output activations and of the cache against
    /// these parameters, and that `layer` is in the cache (shared by the backends, so each
    /// reports a mismatch the same way). Returns `(q_width, kv_width)` in floats.
    pub(crate) fn check_shapes(
        &self,
        q_width: usize,
        k_width: usize,
        v_width: usize,
        out_width: usize,
        cache: &KvLayout,
        layer: usize,
    ) -> Result<(usize, usize), BackendError> {
        let want_q = self.n_heads * self.head_dim;
        let want_kv = self.n_kv_heads * self.head_dim;
        check_width("attention q", q_width, want_q)?;
        check_width("attention k", k_width, want_kv)?;
        check_width("attention v", v_width, want_kv)?;
        check_width("attention out", out_width, want_q)?;
        check_width("KV cache", cache.n_kv_heads * cache.head_dim, want_kv)?;
        if layer >= cache.n_layers {
            return Err(BackendError::Invalid(format!("layer {layer} of a {}-layer KV cache", cache.n_layers)));
        }
        Ok((want_q, want_kv))
    }
}

/// Errors unless a buffer's width (floats per row) is the one an op expects.
pub(crate) fn check_width(what: &str, got: usize, expected: usize) -> Result<(), BackendError> {
    if got != expected {
        return Err(BackendError::Invalid(format!("{what}: width {got}, expected {expected}")));
    }
    Ok(())
}

/// One sequence's part of a ragged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    /// Index of its first new token in the batch.
    pub first_token: u32,
    /// New tokens this forward appends.
    pub n_new: u32,
    /// Tokens already in its cache; the new ones take positions `n_past..n_past + n_new`.
    pub n_past: u32,
    /// Where its block table starts in [`BatchPlan::block_tables`].
    pub table_offset: u32,
}

/// The host-side description of a ragged batch, built by the model and uploaded once per
/// forward with [`Backend::upload_batch`]. Tokens are grouped by sequence, in `seqs` order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPlan {
    /// Token ids, `n_tokens` of them.
    pub tokens: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// Index into `seqs` of each token's sequence.
    pub token_seq: Vec<u32>,
    /// The KV slot each token's key and value are written to (see [`KvLayout`]).
    pub slots: Vec<u32>,
    pub seqs: Vec<SeqSpan>,
    /// Every sequence's block table, concatenated: attention of a token at position `p` reads
    /// the slots of positions `0..=p` through its sequence's table.
    pub block_tables: Vec<u32>,
    /// Slots per KV block.
    pub block_tokens: u32,
    /// Batch rows whose logits are wanted, in output order.
    pub logit_rows: Vec<u32>,
    /// `(token, row)`: token `token` of the batch is the one drawn for row `row` of the last
    /// closed draw set ([`Backend::close_draws`]), which the host may not have seen yet; its
    /// entry in `tokens` is a placeholder. This lets a decode step be queued before the previous
    /// one's draws come back.
    pub fed: Vec<(u32, u32)>,
}

impl BatchPlan {
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// The KV slot of position `pos` of sequence `seq` (the caller has checked the table).
    #[inline]
    pub fn slot_of(&self, seq: &SeqSpan, pos: usize) -> usize {
        let bt = self.block_tokens as usize;
        self.block_tables[seq.table_offset as usize + pos / bt] as usize * bt + pos % bt
    }
}

/// What a stretch of queued device work depends on besides the contents of device buffers: the
/// sizes it was queued for and the generation of the model's activation buffers (bumped whenever
/// they are reallocated, so their addresses change). Two forwards with equal keys queue the same
/// launches on the same buffers, so a backend may record the first and replay it
/// ([`Backend::replayable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplayKey {
    pub n_tokens: usize,
    pub n_logit_rows: usize,
    /// The wanted rows are the batch's first `n_logit_rows` rows in order (a decode step's), so
    /// the LM head reads them where they are, without a gather.
    pub logit_rows_in_order: bool,
    pub buffers_generation: u64,
}

/// A layer's attention weights as [`Backend::attention_add`] takes them: the RMSNorm before it,
/// the q, k, v and output projections, q, k and v's biases.
pub struct AttnWeights<'a, W> {
    pub norm: &'a W,
    pub q: &'a W,
    pub k: &'a W,
    pub v: &'a W,
    pub o: &'a W,
    pub bq: Option<&'a W>,
    pub bk: Option<&'a W>,
    pub bv: Option<&'a W>,
}

/// The intermediates of [`Backend::attention_add`]: the normalized rows, q, k and v, the
/// attention's output, the output projection's.
pub struct AttnBuffers<'a, A> {
    pub xn: &'a mut A,
    pub q: &'a mut A,
    pub k: &'a mut A,
    pub v: &'a mut A,
    pub out: &'a mut A,
    pub proj: &'a mut A,
}

/// The intermediates of [`Backend::mlp_add`]: the normalized rows (width `n_cols(gate)`), gate
/// and up's outputs and SwiGLU's (width `n_rows(gate)`), the down projection's (width `n_rows(down)`).
pub struct MlpBuffers<'a, A> {
    pub xn: &'a mut A,
    pub gate: &'a mut A,
    pub up: &'a mut A,
    pub ffn: &'a mut A,
    pub proj: &'a mut A,
}

/// A compute device. All methods take `&mut self` so a backend may hold a stream, scratch
/// space and handles without interior locking; the model is driven by one thread at a time.
pub trait Backend: Send + 'static {
    /// A tensor in device memory: a quantized matrix, or an f32 vector (norm weight, bias).
    type Weight: Send;
    /// An activation buffer of `capacity_rows` rows of `width` float32.
    type Act: Send;
    /// The KV cache of every layer, as [`KvLayout`] says.
    type KvCache: Send;
    /// A [`BatchPlan`] in device memory.
    type Batch: Send;

    /// "cpu", "cuda:0", ...
    fn device(&self) -> String;

    /// Uploads one tensor. Errors when its type cannot be computed with on this device.
    fn load_weight(&mut self, src: &TensorSource) -> Result<Self::Weight, BackendError>;

    /// The one type that projections taking the same input together (see
    /// [`prepare_group`](Self::prepare_group)), of `types`, are to be uploaded as: where a
    /// backend runs such a group as one launch only when their types agree, and the types it
    /// names hold the others' values exactly. `None` (the default): each keeps its own type.
    fn group_type(&self, types: &[GgmlType]) -> Option<GgmlType> {
        let _ = types;
        None
    }

    /// Uploads one tensor converted to `ty`, the type [`group_type`](Self::group_type) named for
    /// its group, which may be its own (then as [`load_weight`](Self::load_weight)). The default
    /// takes only the tensor's own type.
    fn load_weight_as(&mut self, src: &TensorSource, ty: GgmlType) -> Result<Self::Weight, BackendError> {
        if ty != src.ggml_type() {
            return Err(BackendError::Invalid(format!("{}: this backend does not convert {} to {ty}", src.name(), src.ggml_type())));
        }
        self.load_weight(src)
    }

    /// A buffer of `capacity_rows` rows of `width` floats. Contents unspecified.
    fn alloc_act(&mut self, capacity_rows: usize, width: usize) -> Result<Self::Act, BackendError>;

    fn alloc_kv_cache(&mut self, layout: &KvLayout) -> Result<Self::KvCache, BackendError>;

    /// The matrices a decode step reads, in the order it reads them (per layer q, k, v, o, gate,
    /// up, down; then the LM head), and per layer the index in `read_order` of the first one read
    /// after its attention (its o). A backend whose kernels leave memory idle may have its cache
    /// fetch weights ahead of their use (CUDA: L2, see cuda/prefetch.rs). Called once, after the
    /// weights are loaded and before the first forward; the default ignores it.
    fn plan_weight_prefetch(&mut self, read_order: &[&Self::Weight], after_attention: &[usize]) -> Result<(), BackendError> {
        let _ = (read_order, after_attention);
        Ok(())
    }

    /// Copies the plan to the device; valid until the next call.
    fn upload_batch(&mut self, plan: &BatchPlan) -> Result<Self::Batch, BackendError>;

    /// `out[t] = dequantize(table row tokens[t])` for every token of the batch.
    fn embed(&mut self, table: &Self::Weight, batch: &Self::Batch, out: &mut Self::Act) -> Result<(), BackendError>;

    /// `out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight` for the first `n_rows` rows.
    fn rms_norm(
        &mut self,
        x: &Self::Act,
        weight: &Self::Weight,
        eps: f32,
        n_rows: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;

    /// `out[t][r] = Σ_c w[r][c] · x[t][c] + bias[r]` for the first `n_rows` rows of `x`.
    /// `x` has width `n_cols(w)`, `out` width `n_rows(w)`.
    fn matmul(
        &mut self,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        x: &Self::Act,
        n_rows: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;

    /// Several projections of one input, `outs[i] = w_i x (+ bias_i)` (q/k/v; gate/up). A
    /// backend that converts `x` before multiplying (CUDA's f16 GEMM) converts it once.
    fn matmuls<const N: usize>(
        &mut self,
        x: &Self::Act,
        n_rows: usize,
        projections: [(&Self::Weight, Option<&Self::Weight>, &mut Self::Act); N],
    ) -> Result<(), BackendError> {
        for (w, bias, out) in projections {
            self.matmul(w, bias, x, n_rows, out)?;
        }
        Ok(())
    }

    /// Told once, at load, that `weights` take the same input together (`matmuls`,
    /// `norm_matmuls`), so that a backend running them as one launch can size what that needs.
    fn prepare_group(&mut self, weights: &[&Self::Weight]) -> Result<(), BackendError> {
        let _ = weights;
        Ok(())
    }

    /// Told once, at load, of each layer's FFN weights (gate, up, down), so that a backend running
    /// the block as one launch can compile and size what that needs.
    fn prepare_mlp(&mut self, weights: [&Self::Weight; 3]) -> Result<(), BackendError> {
        let _ = weights;
        Ok(())
    }

    /// [`matmuls`](Self::matmuls) of `rms_norm(x)` ([`rms_norm`](Self::rms_norm) with `norm` and
    /// `eps`): the normalization before q/k/v, gate/up and the LM head. `xn` receives the
    /// normalized rows where the backend needs them in memory; CUDA normalizes inside the
    /// projection kernels of a few rows and leaves it alone.
    #[allow(clippy::too_many_arguments)]
    fn norm_matmuls<const N: usize>(
        &mut self,
        x: &Self::Act,
        norm: &Self::Weight,
        eps: f32,
        n_rows: usize,
        xn: &mut Self::Act,
        projections: [(&Self::Weight, Option<&Self::Weight>, &mut Self::Act); N],
    ) -> Result<(), BackendError> {
        self.rms_norm(x, norm, eps, n_rows, xn)?;
        self.matmuls(xn, n_rows, projections)
    }

    /// `acc += w · (silu(gate) * up)`: SwiGLU and the down projection into the residual stream.
    /// `ffn` (width `n_cols(w)`) and `scratch` (width `n_rows(w)`) hold intermediates where
    /// the backend needs them.
    #[allow(clippy::too_many_arguments)]
    fn swiglu_matmul_add(
        &mut self,
        gate: &Self::Act,
        up: &Self::Act,
        w: &Self::Weight,
        n_rows: usize,
        ffn: &mut Self::Act,
        scratch: &mut Self::Act,
        acc: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.swiglu(gate, up, n_rows, ffn)?;
        self.matmul_add(w, ffn, n_rows, scratch, acc)
    }

    /// The attention block, `x += o · attention(rope(q), rope(k), v)` with `q = w.q · x̂ + w.bq`
    /// (k and v likewise) and `x̂ = rms_norm(x)` (`w.norm`, `eps`):
    /// [`norm_matmuls`](Self::norm_matmuls) of q, k and v, then
    /// [`rope_attention_matmul_add`](Self::rope_attention_matmul_add). `bufs` hold the
    /// intermediates where the backend needs them; CUDA's decode attention reads q, k and v (and
    /// adds their biases) straight from a stacked q/k/v GEMM's output.
    #[allow(clippy::too_many_arguments)]
    fn attention_add(
        &mut self,
        x: &mut Self::Act,
        w: AttnWeights<'_, Self::Weight>,
        eps: f32,
        n_rows: usize,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::Batch,
        rope: (&RopeParams, &RopeParams),
        params: &AttnParams,
        bufs: AttnBuffers<'_, Self::Act>,
    ) -> Result<(), BackendError> {
        let projections = [(w.q, w.bq, &mut *bufs.q), (w.k, w.bk, &mut *bufs.k), (w.v, w.bv, &mut *bufs.v)];
        self.norm_matmuls(x, w.norm, eps, n_rows, bufs.xn, projections)?;
        self.rope_attention_matmul_add(bufs.q, bufs.k, bufs.v, cache, layer, batch, rope, params, bufs.out, w.o, n_rows, bufs.proj, x)
    }

    /// The MLP block, `x += down · (silu(gate · x̂) * (up · x̂))` with `x̂ = rms_norm(x)` (`norm`,
    /// `eps`): [`norm_matmuls`](Self::norm_matmuls) of gate and up, then
    /// [`swiglu_matmul_add`](Self::swiglu_matmul_add). `bufs` hold the intermediates where the
    /// backend needs them; CUDA's stacked gate/up GEMM feeds SwiGLU straight from its output.
    fn mlp_add(
        &mut self,
        x: &mut Self::Act,
        norm: &Self::Weight,
        eps: f32,
        n_rows: usize,
        [gate, up, down]: [&Self::Weight; 3],
        bufs: MlpBuffers<'_, Self::Act>,
    ) -> Result<(), BackendError> {
        self.norm_matmuls(x, norm, eps, n_rows, bufs.xn, [(gate, None, &mut *bufs.gate), (up, None, &mut *bufs.up)])?;
        self.swiglu_matmul_add(bufs.gate, bufs.up, down, n_rows, bufs.ffn, bufs.proj, x)
    }

    /// `acc[t][r] += Σ_c w[r][c] · x[t][c]`: a projection added into the residual stream.
    /// `scratch` (width `n_rows(w)`) holds the product on backends that do not add in place;
    /// CUDA adds in the projection's own kernel and leaves it alone.
    fn matmul_add(&mut self, w: &Self::Weight, x: &Self::Act, n_rows: usize, scratch: &mut Self::Act, acc: &mut Self::Act) -> Result<(), BackendError> {
        self.matmul(w, None, x, n_rows, scratch)?;
        self.add_assign(acc, scratch, n_rows)
    }

    /// Rotates every head of every batch token in place, by the token's position.
    fn rope(&mut self, x: &mut Self::Act, batch: &Self::Batch, params: &RopeParams) -> Result<(), BackendError>;

    /// [`rope`](Self::rope) on a layer's queries and keys (which differ only in their head
    /// counts); a GPU backend rotates both in one launch.
    fn rope_qk(
        &mut self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        batch: &Self::Batch,
        q_params: &RopeParams,
        k_params: &RopeParams,
    ) -> Result<(), BackendError> {
        self.rope(q, batch, q_params)?;
        self.rope(k, batch, k_params)
    }

    /// Appends the batch's `k`, `v` rows (`[n_tokens][n_kv_heads*head_dim]`, already rotated) to
    /// layer `layer` of the cache at each token's slot, then computes causal attention of each
    /// query row (`[n_tokens][n_heads*head_dim]`, rotated) over its own sequence's cache up to
    /// and including its own position, scale `1/sqrt(head_dim)`. `out` is `[n_tokens][n_heads*head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::Batch,
        params: &AttnParams,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;

    /// [`rope_qk`](Self::rope_qk) on `q` and `k`, then [`attention`](Self::attention): a layer's
    /// attention with rotary position embeddings. Afterwards `q` and `k` may hold the rotated
    /// queries and keys or not (CUDA rotates the keys straight into the cache, in the launch
    /// that writes it, and in a decode step rotates both inside the attention kernel).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &mut self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &Self::Act,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::Batch,
        rope: (&RopeParams, &RopeParams),
        params: &AttnParams,
        out: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.rope_qk(q, k, batch, rope.0, rope.1)?;
        self.attention(q, k, v, cache, layer, batch, params, out)
    }

    /// [`rope_attention`](Self::rope_attention) into `out`, then [`matmul_add`](Self::matmul_add)
    /// of `wo` times it: a layer's attention added into the residual stream `acc`. CUDA writes
    /// `out` as the f16 its GEMM reads when nothing else reads it, and leaves `out` alone then.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention_matmul_add(
        &mut self,
        q: &mut Self::Act,
        k: &mut Self::Act,
        v: &Self::Act,
        cache: &mut Self::KvCache,
        layer: usize,
        batch: &Self::Batch,
        rope: (&RopeParams, &RopeParams),
        params: &AttnParams,
        out: &mut Self::Act,
        wo: &Self::Weight,
        n_rows: usize,
        scratch: &mut Self::Act,
        acc: &mut Self::Act,
    ) -> Result<(), BackendError> {
        self.rope_attention(q, k, v, cache, layer, batch, rope, params, out)?;
        self.matmul_add(wo, out, n_rows, scratch, acc)
    }

    /// `out = silu(gate) * up` element-wise over the first `n_rows` rows.
    fn swiglu(&mut self, gate: &Self::Act, up: &Self::Act, n_rows: usize, out: &mut Self::Act) -> Result<(), BackendError>;

    /// `x += y` over the first `n_rows` rows (the residual connection).
    fn add_assign(&mut self, x: &mut Self::Act, y: &Self::Act, n_rows: usize) -> Result<(), BackendError>;

    /// `out[i] = x[logit_rows[first + i]]` for `i < count`: picks the rows whose logits are
    /// wanted (all tokens, or each sequence's last), a chunk at a time.
    fn gather_rows(
        &mut self,
        x: &Self::Act,
        batch: &Self::Batch,
        first: usize,
        count: usize,
        out: &mut Self::Act,
    ) -> Result<(), BackendError>;

    /// Copies the first `n_rows` rows of `x` to the host, row-major, into `out`
    /// (`n_rows * width` floats). Synchronizes.
    fn read_rows(&mut self, x: &Self::Act, n_rows: usize, out: &mut [f32]) -> Result<(), BackendError>;

    /// A `[n_rows][width]` float32 buffer on this device that outlives the backend's own buffers
    /// (the host, unless the backend has a device of its own).
    fn alloc_owned_rows(&mut self, n_rows: usize, width: usize) -> Result<OwnedRows, BackendError> {
        let n = n_rows.checked_mul(width).ok_or_else(|| BackendError::Invalid(format!("{n_rows} x {width} rows overflow")))?;
        Ok(OwnedRows::Host(vec![0f32; n]))
    }

    /// Copies the first `n_rows` rows of `x` (`width` floats each) into `dst` from row `dst_row`.
    fn copy_rows(&mut self, x: &Self::Act, n_rows: usize, width: usize, dst: &mut OwnedRows, dst_row: usize) -> Result<(), BackendError> {
        match dst {
            OwnedRows::Host(v) => {
                let range = dst_row * width..(dst_row + n_rows) * width;
                let out = v.get_mut(range).ok_or_else(|| BackendError::Invalid("copy_rows past the end of its destination".into()))?;
                self.read_rows(x, n_rows, out)
            }
            OwnedRows::Cuda(_) => Err(BackendError::Invalid(format!("{} cannot copy rows into a CUDA buffer", self.device()))),
        }
    }

    /// Queues a draw from each of the first `specs.len()` rows of `logits` (`[rows][vocab]`) as
    /// [`crate::sampling`] defines the draw; they become rows `first_row..` of the draw set being
    /// queued (`first_row == 0` starts a new one). Only the chosen tokens (and log-probabilities
    /// when asked) reach the host, through [`Backend::take_draws`] once the set is closed.
    fn queue_draws(&mut self, logits: &Self::Act, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), BackendError>;

    /// Ends the draw set being queued, of `rows` rows. Its tokens can feed the next batch
    /// ([`BatchPlan::fed`]) before the host has seen them. At most two closed sets may await
    /// [`Backend::take_draws`].
    fn close_draws(&mut self, rows: usize) -> Result<(), BackendError>;

    /// Waits for the oldest closed draw set not yet taken and appends its results to `out`, in
    /// row order. A row whose logits are broken (NaN, +inf, all -inf) gets its own error; the
    /// others are still drawn.
    fn take_draws(&mut self, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError>;

    /// Whether queued work runs while the host goes on (a GPU), so that the host can prepare the
    /// next step meanwhile; on the CPU the host is the device.
    fn queues_work(&self) -> bool {
        false
    }

    /// Runs `ops`, which queue device work, or, when an earlier call with the same `key` was
    /// recorded, replays that recording instead of calling `ops` (CUDA: a graph, which removes
    /// the per-launch overhead that dominates a decode step). `key: None` always runs `ops`.
    /// `ops` must queue the same work for the same key and must not read results back.
    /// The default (CPU) just runs `ops`.
    fn replayable(
        &mut self,
        key: Option<ReplayKey>,
        ops: impl FnOnce(&mut Self) -> Result<(), BackendError>,
    ) -> Result<(), BackendError>
    where
        Self: Sized,
    {
        let _ = key;
        ops(self)
    }
}
