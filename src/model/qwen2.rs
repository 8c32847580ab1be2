//! The Qwen2 / Llama decoder forward pass, written once against [`Backend`].
//!
//! Per layer: `h = x + attn(rms_norm(x))`, `x = h + mlp(rms_norm(h))` with
//! `attn` = grouped-query causal attention over the KV cache (RoPE on q and k, q/k/v biases when
//! the file has them) and `mlp(x) = down(silu(gate(x)) * up(x))`; then the final norm and the LM
//! head (`output.weight`, or `token_embd.weight` when tied).

use std::sync::Arc;

use super::config::rope_style;
use super::weights::{load_weights, Weights};
use super::{FedToken, KvPool, LanguageModel, LogitsFor, ModelConfig, ModelError, RowSample, SeqChunk};
use crate::backend::{AttnBuffers, AttnParams, AttnWeights, Backend, BackendError, BatchPlan, KvDtype, KvLayout, MlpBuffers, ReplayKey, RopeParams, SeqSpan};
use crate::gguf::GgufFile;
use crate::sampling::{Sampled, SamplingError};

/// Logit rows computed per LM-head pass: bounds the device buffer of logits
/// (`LOGIT_CHUNK_ROWS * vocab` floats) however long a prefill asking for every row is.
const LOGIT_CHUNK_ROWS: usize = 256;

/// Positions per KV block: small enough that a sequence wastes little of its last block, large
/// enough that block tables stay short and attention reads contiguous runs of keys.
pub const KV_BLOCK_TOKENS: usize = 16;

/// Options fixed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Token slots of the KV pool shared by all sequences (rounded up to whole blocks of
    /// [`KV_BLOCK_TOKENS`]); `None`: the context length.
    pub kv_cache_tokens: Option<usize>,
    /// Most sequences one forward may hold (a hint a GPU backend may size graphs by).
    pub max_batch: usize,
    /// CPU: multiply dequantized weight rows by float32 activations (`quant::matmul_reference`)
    /// instead of quantizing activations to 8 bits. Slower; for logit comparisons.
    pub exact_matmul: bool,
    /// CPU: threads for every op; `None`: the physical cores (or `RAYON_NUM_THREADS`).
    pub threads: Option<usize>,
    /// What the KV cache stores its keys and values as.
    pub kv_cache_dtype: KvDtype,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { kv_cache_tokens: None, max_batch: 64, exact_matmul: false, threads: None, kv_cache_dtype: KvDtype::F32 }
    }
}

/// Activation buffers, sized for the largest batch seen so far and reused.
struct Buffers<B: Backend> {
    capacity_rows: usize,
    x: B::Act,
    xn: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    attn: B::Act,
    proj: B::Act,
    gate: B::Act,
    up: B::Act,
    ffn: B::Act,
    picked: B::Act,
    picked_norm: B::Act,
    logits: B::Act,
}

impl<B: Backend> Buffers<B> {
    fn new(backend: &mut B, c: &ModelConfig, rows: usize) -> Result<Self, ModelError> {
        let q_width = c.n_heads * c.head_dim;
        let kv_width = c.n_kv_heads * c.head_dim;
        let logit_rows = rows.min(LOGIT_CHUNK_ROWS);
        Ok(Buffers {
            capacity_rows: rows,
            x: backend.alloc_act(rows, c.hidden_size)?,
            xn: backend.alloc_act(rows, c.hidden_size)?,
            q: backend.alloc_act(rows, q_width)?,
            k: backend.alloc_act(rows, kv_width)?,
            v: backend.alloc_act(rows, kv_width)?,
            attn: backend.alloc_act(rows, q_width)?,
            proj: backend.alloc_act(rows, c.hidden_size)?,
            gate: backend.alloc_act(rows, c.ffn_size)?,
            up: backend.alloc_act(rows, c.ffn_size)?,
            ffn: backend.alloc_act(rows, c.ffn_size)?,
            picked: backend.alloc_act(logit_rows, c.hidden_size)?,
            picked_norm: backend.alloc_act(logit_rows, c.hidden_size)?,
            logits: backend.alloc_act(logit_rows, c.vocab_size)?,
        })
    }
}

/// A decoder-only transformer on backend `B`, with its KV pool.
pub struct TransformerModel<B: Backend> {
    config: ModelConfig,
    options: LoadOptions,
    backend: B,
    weights: Weights<B>,
    kv: B::KvCache,
    pool: KvPool,
    buffers: Option<Buffers<B>>,
    /// Bumped whenever `buffers` is reallocated (see [`ReplayKey`]).
    buffers_generation: u64,
    rope: RopeParams,
    rope_k: RopeParams,
    attn: AttnParams,
    /// Forwards queued by `queue_forward_sample` whose draws are not yet taken.
    draws_in_flight: usize,
    /// Rows of the last queued forward's draws, which the next may be fed from (0 after any
    /// other forward).
    feedable_rows: usize,
    /// Keeps the mapped file alive as long as a backend may compute from it.
    _file: Arc<GgufFile>,
}

impl<B: Backend> TransformerModel<B> {
    pub fn load(file: Arc<GgufFile>, mut backend: B, options: LoadOptions) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = load_weights(&file, &config, &mut backend)?;
        let mut read_order: Vec<&B::Weight> = Vec::with_capacity(7 * weights.layers.len() + 1);
        let mut after_attention = Vec::with_capacity(weights.layers.len());
        for l in &weights.layers {
            read_order.extend([&l.wq, &l.wk, &l.wv]);
            after_attention.push(read_order.len());
            read_order.extend([&l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down]);
        }
        read_order.push(weights.lm_head());
        backend.plan_weight_prefetch(&read_order, &after_attention)?;
        let capacity_tokens = options.kv_cache_tokens.unwrap_or(config.context_length);
        if capacity_tokens == 0 {
            return Err(ModelError::Invalid("kv_cache_tokens must be at least 1".into()));
        }
        if options.max_batch == 0 {
            return Err(ModelError::Invalid("max_batch must be at least 1".into()));
        }
        let pool = KvPool { n_blocks: capacity_tokens.div_ceil(KV_BLOCK_TOKENS), block_tokens: KV_BLOCK_TOKENS };
        if u32::try_from(pool.n_blocks * pool.block_tokens).is_err() {
            return Err(ModelError::Invalid(format!("kv_cache_tokens = {capacity_tokens} exceeds the 32-bit slot indices")));
        }
        let kv = backend.alloc_kv_cache(&KvLayout {
            n_layers: config.n_layers,
            n_heads: config.n_heads,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            n_blocks: pool.n_blocks,
            block_tokens: pool.block_tokens,
            dtype: options.kv_cache_dtype,
        })?;
        let rope = RopeParams {
            style: rope_style(&config.arch),
            n_heads: config.n_heads,
            head_dim: config.head_dim,
            freq_base: config.rope_freq_base,
            scale: config.rope_scale,
        };
        let rope_k = RopeParams { n_heads: config.n_kv_heads, ..rope };
        let attn = AttnParams { n_heads: config.n_heads, n_kv_heads: config.n_kv_heads, head_dim: config.head_dim };
        Ok(TransformerModel {
            pool,
            config,
            options,
            backend,
            weights,
            kv,
            buffers: None,
            buffers_generation: 0,
            rope,
            rope_k,
            attn,
            draws_in_flight: 0,
            feedable_rows: 0,
            _file: file,
        })
    }

    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// Validates the batch and lays it out for the backend; `logit_rows` are batch rows.
    fn plan(&self, batch: &[SeqChunk<'_>], fed: &[FedToken], logit_rows: impl FnOnce(&[SeqSpan]) -> Vec<u32>) -> Result<BatchPlan, ModelError> {
        if batch.len() > self.options.max_batch {
            return Err(ModelError::Invalid(format!(
                "{} sequences in one forward exceed max_batch = {}",
                batch.len(),
                self.options.max_batch
            )));
        }
        let n_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let bt = self.pool.block_tokens;
        let mut plan = BatchPlan {
            tokens: Vec::with_capacity(n_tokens),
            positions: Vec::with_capacity(n_tokens),
            token_seq: Vec::with_capacity(n_tokens),
            slots: Vec::with_capacity(n_tokens),
            seqs: Vec::with_capacity(batch.len()),
            block_tables: Vec::with_capacity(batch.iter().map(|s| s.block_table.len()).sum()),
            block_tokens: bt as u32,
            logit_rows: Vec::new(),
            fed: Vec::with_capacity(fed.len()),
        };
        let mut fed_seq = vec![None; batch.len()];
        for f in fed {
            let slot = fed_seq.get_mut(f.seq).ok_or_else(|| ModelError::Invalid(format!("a fed token for sequence {} of a batch of {}", f.seq, batch.len())))?;
            if f.draw >= self.feedable_rows || slot.replace(f.draw).is_some() {
                return Err(ModelError::Invalid(format!(
                    "sequence {} fed from draw row {} (the last queued forward drew {} rows; one fed token a sequence)",
                    f.seq, f.draw, self.feedable_rows
                )));
            }
        }
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(ModelError::Invalid(format!("sequence {i} of the batch has no new tokens")));
            }
            if let Some(draw) = fed_seq[i] {
                if s.tokens.len() != 1 {
                    return Err(ModelError::Invalid(format!("sequence {i} is fed a drawn token but has {} new tokens", s.tokens.len())));
                }
                plan.fed.push((plan.tokens.len() as u32, draw as u32));
            } else if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(ModelError::BadTokenId { id, vocab_size: self.config.vocab_size });
            }
            let end = s.n_past + s.tokens.len();
            if end > self.config.context_length {
                return Err(ModelError::ContextLength { needed: end, context_length: self.config.context_length });
            }
            if s.block_table.len() * bt < end {
                return Err(ModelError::Invalid(format!(
                    "sequence {i} of the batch needs {end} KV positions but its {} blocks hold {}",
                    s.block_table.len(),
                    s.block_table.len() * bt
                )));
            }
            if let Some(&b) = s.block_table.iter().find(|&&b| b as usize >= self.pool.n_blocks) {
                return Err(ModelError::Invalid(format!("KV block {b} of a pool of {} blocks", self.pool.n_blocks)));
            }
            let span = SeqSpan {
                first_token: plan.tokens.len() as u32,
                n_new: s.tokens.len() as u32,
                n_past: s.n_past as u32,
                table_offset: plan.block_tables.len() as u32,
            };
            plan.block_tables.extend_from_slice(s.block_table);
            for (j, &t) in s.tokens.iter().enumerate() {
                let pos = s.n_past + j;
                // A fed token's id is written on the device; 0 holds its place.
                plan.tokens.push(if fed_seq[i].is_some() { 0 } else { t });
                plan.positions.push(pos as u32);
                plan.token_seq.push(i as u32);
                plan.slots.push(plan.slot_of(&span, pos) as u32);
            }
            plan.seqs.push(span);
        }
        plan.logit_rows = logit_rows(&plan.seqs);
        Ok(plan)
    }

    /// Runs the forward pass of `plan`, then hands each chunk of at most [`LOGIT_CHUNK_ROWS`]
    /// wanted rows of logits (still on the device) to `take(backend, logits, first, count)`.
    fn run(
        &mut self,
        plan: &BatchPlan,
        mut take: impl FnMut(&mut B, &B::Act, usize, usize) -> Result<(), BackendError>,
    ) -> Result<(), ModelError> {
        let n = plan.n_tokens();
        if self.buffers.as_ref().is_none_or(|buf| buf.capacity_rows < n) {
            // Drop the old buffers first so a GPU backend can reuse their memory.
            self.buffers = None;
            self.buffers = Some(Buffers::new(&mut self.backend, &self.config, n)?);
            self.buffers_generation += 1;
        }
        let Some(buf) = self.buffers.as_mut() else { unreachable!("allocated above") };
        let (c, w, kv, b) = (&self.config, &self.weights, &mut self.kv, &mut self.backend);
        let layers = Layers { config: c, weights: w, rope: &self.rope, rope_k: &self.rope_k, attn: &self.attn };
        let batch = b.upload_batch(plan)?;

        // Only the wanted rows go through the final norm and the LM head, a chunk at a time.
        let n_out = plan.logit_rows.len();
        let one_chunk = n_out <= LOGIT_CHUNK_ROWS;
        // The same sizes on the same buffers queue the same work: a decode step can be replayed.
        let in_order = plan.logit_rows.iter().enumerate().all(|(i, &r)| r as usize == i);
        let key = one_chunk.then_some(ReplayKey { n_tokens: n, n_logit_rows: n_out, logit_rows_in_order: in_order, buffers_generation: self.buffers_generation });
        b.replayable(key, |b| {
            layers.hidden_states(b, buf, kv, &batch, n)?;
            if one_chunk && n_out > 0 {
                layers.logits_chunk(b, buf, &batch, 0, n_out, in_order)?;
            }
            Ok(())
        })?;
        if one_chunk {
            return if n_out > 0 { Ok(take(b, &buf.logits, 0, n_out)?) } else { Ok(()) };
        }
        let mut first = 0;
        while first < n_out {
            let count = (n_out - first).min(LOGIT_CHUNK_ROWS);
            layers.logits_chunk(b, buf, &batch, first, count, false)?;
            take(b, &buf.logits, first, count)?;
            first += count;
        }
        Ok(())
    }
}

/// The forward pass proper, borrowed from the model so that it can run inside
/// [`Backend::replayable`] while the model's buffers and KV cache are lent to it.
struct Layers<'a, B: Backend> {
    config: &'a ModelConfig,
    weights: &'a Weights<B>,
    rope: &'a RopeParams,
    rope_k: &'a RopeParams,
    attn: &'a AttnParams,
}

impl<B: Backend> Layers<'_, B> {
    /// Embedding and every decoder layer: `buf.x` becomes the final hidden states.
    fn hidden_states(&self, b: &mut B, buf: &mut Buffers<B>, kv: &mut B::KvCache, batch: &B::Batch, n: usize) -> Result<(), BackendError> {
        let (c, w) = (self.config, self.weights);
        b.embed(&w.token_embd, batch, &mut buf.x)?;
        for (layer, lw) in w.layers.iter().enumerate() {
            // Attention block.
            let w_attn = AttnWeights { norm: &lw.attn_norm, q: &lw.wq, k: &lw.wk, v: &lw.wv, o: &lw.wo, bq: lw.bq.as_ref(), bk: lw.bk.as_ref(), bv: lw.bv.as_ref() };
            let attn = AttnBuffers { xn: &mut buf.xn, q: &mut buf.q, k: &mut buf.k, v: &mut buf.v, out: &mut buf.attn, proj: &mut buf.proj };
            b.attention_add(&mut buf.x, w_attn, c.rms_norm_eps, n, kv, layer, batch, (self.rope, self.rope_k), self.attn, attn)?;
            // MLP block.
            let mlp = MlpBuffers { xn: &mut buf.xn, gate: &mut buf.gate, up: &mut buf.up, ffn: &mut buf.ffn, proj: &mut buf.proj };
            b.mlp_add(&mut buf.x, &lw.ffn_norm, c.rms_norm_eps, n, [&lw.ffn_gate, &lw.ffn_up, &lw.ffn_down], mlp)?;
        }
        Ok(())
    }

    /// Logits of the wanted rows `first..first + count` into `buf.logits`: final norm, LM head.
    /// `in_order`: they are x's rows `0..count` (every row of a decode step), read in place.
    fn logits_chunk(&self, b: &mut B, buf: &mut Buffers<B>, batch: &B::Batch, first: usize, count: usize, in_order: bool) -> Result<(), BackendError> {
        let (norm, eps) = (&self.weights.output_norm, self.config.rms_norm_eps);
        let picked = if in_order && first == 0 {
            &buf.x
        } else {
            b.gather_rows(&buf.x, batch, first, count, &mut buf.picked)?;
            &buf.picked
        };
        b.norm_matmuls(picked, norm, eps, count, &mut buf.picked_norm, [(self.weights.lm_head(), None, &mut buf.logits)])
    }
}

impl<B: Backend> LanguageModel for TransformerModel<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> String {
        self.backend.device()
    }

    fn kv_pool(&self) -> KvPool {
        self.pool
    }

    fn max_batch(&self) -> usize {
        self.options.max_batch
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let plan = self.plan(batch, &[], |seqs| match logits_for {
            LogitsFor::AllTokens => (0..seqs.iter().map(|s| s.n_new).sum::<u32>()).collect(),
            LogitsFor::LastToken => seqs.iter().map(|s| s.first_token + s.n_new - 1).collect(),
        })?;
        let vocab = self.config.vocab_size;
        self.feedable_rows = 0;
        let mut out = vec![0f32; plan.logit_rows.len() * vocab];
        self.run(&plan, |b, logits, first, count| b.read_rows(logits, count, &mut out[first * vocab..(first + count) * vocab]))?;
        Ok(out)
    }

    fn forward_rows(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<crate::backend::OwnedRows, ModelError> {
        let plan = self.plan(batch, &[], |seqs| match logits_for {
            LogitsFor::AllTokens => (0..seqs.iter().map(|s| s.n_new).sum::<u32>()).collect(),
            LogitsFor::LastToken => seqs.iter().map(|s| s.first_token + s.n_new - 1).collect(),
        })?;
        let vocab = self.config.vocab_size;
        self.feedable_rows = 0;
        let mut out = self.backend.alloc_owned_rows(plan.logit_rows.len(), vocab)?;
        self.run(&plan, |b, logits, first, count| b.copy_rows(logits, count, vocab, &mut out, first))?;
        Ok(out)
    }

    fn queues_work(&self) -> bool {
        self.backend.queues_work()
    }

    fn queue_forward_sample(&mut self, batch: &[SeqChunk<'_>], samples: &[RowSample<'_>], fed: &[FedToken]) -> Result<(), ModelError> {
        if self.draws_in_flight >= crate::backend::draws::MAX_CLOSED_SETS {
            return Err(ModelError::Invalid(format!("{} queued forwards already await take_draws", self.draws_in_flight)));
        }
        if let Some(r) = samples.iter().find(|r| r.seq >= batch.len()) {
            return Err(ModelError::Invalid(format!("a draw for sequence {} of a batch of {}", r.seq, batch.len())));
        }
        let plan = self.plan(batch, fed, |seqs| samples.iter().map(|r| seqs[r.seq].first_token + seqs[r.seq].n_new - 1).collect())?;
        let specs: Vec<_> = samples.iter().map(|r| r.spec).collect();
        self.feedable_rows = 0;
        self.run(&plan, |b, logits, first, count| b.queue_draws(logits, &specs[first..first + count], first))?;
        self.backend.close_draws(specs.len())?;
        self.draws_in_flight += 1;
        self.feedable_rows = specs.len();
        Ok(())
    }

    fn take_draws(&mut self) -> Result<Vec<Result<Sampled, SamplingError>>, ModelError> {
        if self.draws_in_flight == 0 {
            return Err(ModelError::Invalid("take_draws without a queued forward".into()));
        }
        self.draws_in_flight -= 1;
        let mut out = Vec::new();
        self.backend.take_draws(&mut out)?;
        Ok(out)
    }
}
