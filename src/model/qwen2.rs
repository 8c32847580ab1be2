//! The Qwen2 / Llama decoder forward pass, written once against [`Backend`].
//!
//! Per layer: `h = x + attn(rms_norm(x))`, `x = h + mlp(rms_norm(h))` with
//! `attn` = grouped-query causal attention over the KV cache (RoPE on q and k, q/k/v biases when
//! the file has them) and `mlp(x) = down(silu(gate(x)) * up(x))`; then the final norm and the LM
//! head (`output.weight`, or `token_embd.weight` when tied).

use std::sync::Arc;

use super::config::rope_style;
use super::kv_cache::SlotTable;
use super::weights::{load_weights, Weights};
use super::{LanguageModel, LogitsFor, ModelConfig, ModelError, SeqTokens};
use crate::backend::{AttnParams, Backend, BatchPlan, KvLayout, ReplayKey, RopeParams, SeqSpan};
use crate::gguf::GgufFile;

/// Logit rows computed per LM-head pass: bounds the device buffer of logits
/// (`LOGIT_CHUNK_ROWS * vocab` floats) however long a prefill asking for every row is.
const LOGIT_CHUNK_ROWS: usize = 64;

/// Options fixed at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Token slots of the KV pool shared by all sequences; `None`: the context length.
    pub kv_cache_tokens: Option<usize>,
    /// Most sequences one forward may hold (a hint a GPU backend may size graphs by).
    pub max_batch: usize,
    /// CPU: multiply dequantized weight rows by float32 activations (`quant::matmul_reference`)
    /// instead of quantizing activations to 8 bits. Slower; for logit comparisons.
    pub exact_matmul: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { kv_cache_tokens: None, max_batch: 64, exact_matmul: false }
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
    slots: SlotTable,
    buffers: Option<Buffers<B>>,
    /// Bumped whenever `buffers` is reallocated (see [`ReplayKey`]).
    buffers_generation: u64,
    rope: RopeParams,
    rope_k: RopeParams,
    attn: AttnParams,
    /// Keeps the mapped file alive as long as a backend may compute from it.
    _file: Arc<GgufFile>,
}

impl<B: Backend> TransformerModel<B> {
    pub fn load(file: Arc<GgufFile>, mut backend: B, options: LoadOptions) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(&file)?;
        let weights = load_weights(&file, &config, &mut backend)?;
        let capacity_tokens = options.kv_cache_tokens.unwrap_or(config.context_length);
        if capacity_tokens == 0 {
            return Err(ModelError::Invalid("kv_cache_tokens must be at least 1".into()));
        }
        if options.max_batch == 0 {
            return Err(ModelError::Invalid("max_batch must be at least 1".into()));
        }
        let kv = backend.alloc_kv_cache(&KvLayout {
            n_layers: config.n_layers,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
            capacity_tokens,
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
            slots: SlotTable::new(capacity_tokens, config.context_length),
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
            _file: file,
        })
    }

    pub fn options(&self) -> LoadOptions {
        self.options
    }

    pub fn kv_capacity_tokens(&self) -> usize {
        self.slots.capacity_tokens()
    }

    /// Validates the batch against the sequences and lays it out for the backend.
    fn plan(&self, batch: &[SeqTokens<'_>], logits_for: LogitsFor) -> Result<BatchPlan, ModelError> {
        if batch.len() > self.options.max_batch {
            return Err(ModelError::Invalid(format!(
                "{} sequences in one forward exceed max_batch = {}",
                batch.len(),
                self.options.max_batch
            )));
        }
        let n_tokens: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let mut plan = BatchPlan {
            tokens: Vec::with_capacity(n_tokens),
            positions: Vec::with_capacity(n_tokens),
            token_seq: Vec::with_capacity(n_tokens),
            seqs: Vec::with_capacity(batch.len()),
            logit_rows: Vec::new(),
        };
        for (i, s) in batch.iter().enumerate() {
            if batch[..i].iter().any(|o| o.seq_id == s.seq_id) {
                return Err(ModelError::Invalid(format!("sequence {} appears twice in one batch", s.seq_id)));
            }
            if s.tokens.is_empty() {
                return Err(ModelError::Invalid(format!("sequence {} has no new tokens", s.seq_id)));
            }
            if let Some(&id) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                return Err(ModelError::BadTokenId { id, vocab_size: self.config.vocab_size });
            }
            let state = self.slots.check_room(s.seq_id, s.tokens.len())?;
            let first = plan.tokens.len() as u32;
            plan.seqs.push(SeqSpan {
                first_token: first,
                n_new: s.tokens.len() as u32,
                n_past: state.len as u32,
                kv_start: state.kv_start as u32,
            });
            for (j, &t) in s.tokens.iter().enumerate() {
                plan.tokens.push(t);
                plan.positions.push((state.len + j) as u32);
                plan.token_seq.push(i as u32);
            }
            if logits_for == LogitsFor::LastToken {
                plan.logit_rows.push(first + s.tokens.len() as u32 - 1);
            }
        }
        if logits_for == LogitsFor::AllTokens {
            plan.logit_rows = (0..n_tokens as u32).collect();
        }
        Ok(plan)
    }

    fn run(&mut self, plan: &BatchPlan) -> Result<Vec<f32>, ModelError> {
        let n = plan.n_tokens();
        if self.buffers.as_ref().map_or(true, |buf| buf.capacity_rows < n) {
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
        let key = one_chunk.then_some(ReplayKey { n_tokens: n, n_logit_rows: n_out, buffers_generation: self.buffers_generation });
        b.replayable(key, |b| {
            layers.hidden_states(b, buf, kv, &batch, n)?;
            if one_chunk {
                layers.logits_chunk(b, buf, &batch, 0, n_out)?;
            }
            Ok(())
        })?;
        let vocab = c.vocab_size;
        let mut out = vec![0f32; n_out * vocab];
        if one_chunk {
            b.read_rows(&buf.logits, n_out, &mut out)?;
            return Ok(out);
        }
        let mut first = 0;
        while first < n_out {
            let count = (n_out - first).min(LOGIT_CHUNK_ROWS);
            layers.logits_chunk(b, buf, &batch, first, count)?;
            b.read_rows(&buf.logits, count, &mut out[first * vocab..(first + count) * vocab])?;
            first += count;
        }
        Ok(out)
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
    fn hidden_states(&self, b: &mut B, buf: &mut Buffers<B>, kv: &mut B::KvCache, batch: &B::Batch, n: usize) -> Result<(), ModelError> {
        let (c, w) = (self.config, self.weights);
        b.embed(&w.token_embd, batch, &mut buf.x)?;
        for (layer, lw) in w.layers.iter().enumerate() {
            // Attention block.
            b.rms_norm(&buf.x, &lw.attn_norm, c.rms_norm_eps, n, &mut buf.xn)?;
            b.matmul(&lw.wq, lw.bq.as_ref(), &buf.xn, n, &mut buf.q)?;
            b.matmul(&lw.wk, lw.bk.as_ref(), &buf.xn, n, &mut buf.k)?;
            b.matmul(&lw.wv, lw.bv.as_ref(), &buf.xn, n, &mut buf.v)?;
            b.rope(&mut buf.q, batch, self.rope)?;
            b.rope(&mut buf.k, batch, self.rope_k)?;
            b.attention(&buf.q, &buf.k, &buf.v, kv, layer, batch, self.attn, &mut buf.attn)?;
            b.matmul(&lw.wo, None, &buf.attn, n, &mut buf.proj)?;
            b.add_assign(&mut buf.x, &buf.proj, n)?;
            // MLP block.
            b.rms_norm(&buf.x, &lw.ffn_norm, c.rms_norm_eps, n, &mut buf.xn)?;
            b.matmul(&lw.ffn_gate, None, &buf.xn, n, &mut buf.gate)?;
            b.matmul(&lw.ffn_up, None, &buf.xn, n, &mut buf.up)?;
            b.swiglu(&buf.gate, &buf.up, n, &mut buf.ffn)?;
            b.matmul(&lw.ffn_down, None, &buf.ffn, n, &mut buf.proj)?;
            b.add_assign(&mut buf.x, &buf.proj, n)?;
        }
        Ok(())
    }

    /// Logits of the wanted rows `first..first + count` into `buf.logits`: final norm, LM head.
    fn logits_chunk(&self, b: &mut B, buf: &mut Buffers<B>, batch: &B::Batch, first: usize, count: usize) -> Result<(), ModelError> {
        b.gather_rows(&buf.x, batch, first, count, &mut buf.picked)?;
        b.rms_norm(&buf.picked, &self.weights.output_norm, self.config.rms_norm_eps, count, &mut buf.picked_norm)?;
        b.matmul(self.weights.lm_head(), None, &buf.picked_norm, count, &mut buf.logits)
    }
}

impl<B: Backend> LanguageModel for TransformerModel<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> String {
        self.backend.device()
    }

    fn new_sequence(&mut self, max_tokens: usize) -> Result<usize, ModelError> {
        self.slots.allocate(max_tokens)
    }

    fn free_sequence(&mut self, seq_id: usize) -> Result<(), ModelError> {
        self.slots.release(seq_id)
    }

    fn sequence_len(&self, seq_id: usize) -> Result<usize, ModelError> {
        Ok(self.slots.get(seq_id)?.len)
    }

    fn forward(&mut self, batch: &[SeqTokens<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let plan = self.plan(batch, logits_for)?;
        let logits = self.run(&plan)?;
        // Only a forward that completed extends the sequences; a failed one leaves their
        // lengths as they were (the slots it wrote are overwritten next time).
        for s in batch {
            self.slots.advance(s.seq_id, s.tokens.len())?;
        }
        Ok(logits)
    }
}
