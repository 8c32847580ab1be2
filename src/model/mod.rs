//! The model: a description read from GGUF metadata, weights by GGUF tensor name, and the
//! forward pass written once against a backend. `LanguageModel` is the object-safe face that the
//! generator and the Python bindings use, whatever the backend.

pub mod config;
mod error;
pub mod kv_cache;
pub mod qwen2;
pub mod weights;

use std::sync::Arc;

pub use error::ModelError;
pub use qwen2::{LoadOptions, TransformerModel};

use crate::gguf::GgufFile;

/// Hyperparameters read from `{arch}.*` GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `general.architecture`: "qwen2" or "llama".
    pub arch: String,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub ffn_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_freq_base: f32,
    /// Linear RoPE scaling factor (`rope.scaling.factor` with type "linear"); 1.0 when absent.
    pub rope_scale: f32,
    pub rms_norm_eps: f32,
    /// `output.weight` absent: the LM head reuses `token_embd.weight`.
    pub tied_embeddings: bool,
}

/// New tokens of one sequence in a forward batch. Their positions continue from the tokens the
/// sequence already holds in its KV cache.
#[derive(Debug, Clone, Copy)]
pub struct SeqTokens<'a> {
    pub seq_id: usize,
    pub tokens: &'a [u32],
}

/// Which rows of logits `forward` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// One row per input token, in batch order.
    AllTokens,
    /// One row per sequence: its last new token.
    LastToken,
}

/// A loaded model with its KV cache, on some backend.
pub trait LanguageModel: Send {
    fn config(&self) -> &ModelConfig;

    /// "cpu", "cuda:0", ...
    fn device(&self) -> String;

    /// Reserves KV-cache room for a new sequence of up to `max_tokens` tokens (at most the
    /// context length); returns its id.
    fn new_sequence(&mut self, max_tokens: usize) -> Result<usize, ModelError>;

    /// Releases a sequence's KV cache.
    fn free_sequence(&mut self, seq_id: usize) -> Result<(), ModelError>;

    /// Tokens the sequence holds in its KV cache.
    fn sequence_len(&self, seq_id: usize) -> Result<usize, ModelError>;

    /// Runs the new tokens of every sequence in `batch` through the model in one pass, appending
    /// them to the sequences' KV caches. Returns row-major float32 logits,
    /// `[rows][vocab_size]`, rows as `logits_for` says.
    fn forward(&mut self, batch: &[SeqTokens<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError>;
}

/// Loads the model in `file` onto `device` ("cpu", "cuda", "cuda:N") with default [`LoadOptions`].
pub fn load_model(file: Arc<GgufFile>, device: &str) -> Result<Box<dyn LanguageModel>, ModelError> {
    load_model_with(file, device, LoadOptions::default())
}

/// Loads the model in `file` onto `device`: picks the backend, reads the config, uploads the
/// weights and allocates the KV pool.
pub fn load_model_with(
    file: Arc<GgufFile>,
    device: &str,
    options: LoadOptions,
) -> Result<Box<dyn LanguageModel>, ModelError> {
    match device {
        "cpu" => {
            let backend = crate::backend::cpu::CpuBackend::new().with_exact_matmul(options.exact_matmul);
            Ok(Box::new(TransformerModel::load(file, backend, options)?))
        }
        d if d.starts_with("cuda") => {
            let backend = crate::backend::cuda::CudaBackend::new(d)?;
            Ok(Box::new(TransformerModel::load(file, backend, options)?))
        }
        other => Err(ModelError::Invalid(format!("unknown device {other:?} (expected \"cpu\", \"cuda\" or \"cuda:N\")"))),
    }
}
