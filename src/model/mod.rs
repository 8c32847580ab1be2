//! The model: a description read from GGUF metadata, weights by GGUF tensor name, and the
//! forward pass written once against a backend. `LanguageModel` is the object-safe face that the
//! generator and the Python bindings use, whatever the backend.

pub mod config;
mod error;
pub mod qwen2;
pub mod weights;

use std::sync::Arc;

pub use error::ModelError;
pub use qwen2::{LoadOptions, TransformerModel};

use crate::backend::{with_backend, Backend, BackendOptions, Device, KernelNeeds, WithBackend};
use crate::gguf::GgufFile;
use crate::sampling::{SampleSpec, Sampled, SamplingError};

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

/// New tokens of one sequence in a forward batch, and where its KV cache lives.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// The new tokens: they take positions `n_past..n_past + tokens.len()`.
    pub tokens: &'a [u32],
    /// Tokens of the sequence already in its KV blocks.
    pub n_past: usize,
    /// The sequence's KV blocks in order; they must hold `n_past + tokens.len()` positions.
    pub block_table: &'a [u32],
}

/// Which rows of logits `forward` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// One row per input token, in batch order.
    AllTokens,
    /// One row per sequence: its last new token.
    LastToken,
}

/// A draw wanted from the logits of one sequence's last new token.
#[derive(Debug, Clone, Copy)]
pub struct RowSample<'a> {
    /// Index of the sequence in the forward's batch.
    pub seq: usize,
    pub spec: SampleSpec<'a>,
}

/// A token of a queued forward that is the draw of the forward queued before it
/// ([`LanguageModel::queue_forward_sample`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FedToken {
    /// Index of the sequence in the batch; its one new token is the drawn one.
    pub seq: usize,
    /// Row of that draw among the previous forward's `samples`.
    pub draw: usize,
}

/// The KV pool's geometry: `n_blocks` blocks of `block_tokens` positions, shared by every
/// sequence. Who owns which block is the caller's business (the engine's block manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvPool {
    pub n_blocks: usize,
    pub block_tokens: usize,
}

/// A loaded model with its KV pool, on some backend. It keeps no per-sequence state: every
/// forward names each sequence's blocks.
pub trait LanguageModel: Send {
    fn config(&self) -> &ModelConfig;

    /// "cpu", "cuda:0", ...
    fn device(&self) -> String;

    fn kv_pool(&self) -> KvPool;

    /// Most sequences one forward may hold.
    fn max_batch(&self) -> usize;

    /// Runs the new tokens of every sequence in `batch` through the model in one pass, writing
    /// their keys and values into the sequences' blocks. Returns row-major float32 logits,
    /// `[rows][vocab_size]`, rows as `logits_for` says.
    fn forward(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError>;

    /// Like `forward`, but the logits stay on the device that computed them (a buffer of their
    /// own, for handing to other GPU libraries without a copy).
    fn forward_rows(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<crate::backend::OwnedRows, ModelError>;

    /// Whether [`LanguageModel::queue_forward_sample`] returns before the device has computed
    /// (a GPU), so that the caller can prepare the next step meanwhile.
    fn queues_work(&self) -> bool;

    /// Like `forward`, but instead of returning logits, draws one token from the logits of the
    /// last new token of each sequence named in `samples` (on the device that computed them).
    /// Queues the forward and its draws and returns; [`LanguageModel::take_draws`] waits for them
    /// (one result per entry of `samples`, in order: a row whose logits are broken gets its own
    /// error, a failure of the forward itself is the `Err`). Sequences named in `fed` have one
    /// new token, the token drawn for row `draw` of the forward queued just before this one (its
    /// id in `batch` is ignored), so a decode step can be queued before the host has seen the
    /// draws it continues from. At most two queued forwards may await `take_draws`.
    fn queue_forward_sample(&mut self, batch: &[SeqChunk<'_>], samples: &[RowSample<'_>], fed: &[FedToken]) -> Result<(), ModelError>;

    /// The draws of the oldest queued forward not yet taken, one per entry of its `samples`.
    fn take_draws(&mut self) -> Result<Vec<Result<Sampled, SamplingError>>, ModelError>;
}

/// Loads the model in `file` onto `device` ("auto", "cpu", "cuda", "cuda:N") with default
/// [`LoadOptions`].
pub fn load_model(file: Arc<GgufFile>, device: &str) -> Result<Box<dyn LanguageModel>, ModelError> {
    load_model_with(file, device, LoadOptions::default())
}

/// The matrix types and head width of the model in `file`, as far as the file says them (a file
/// the loader will reject still gives what it can: the loader reports the problem), and the KV
/// cache type the options ask for.
fn kernel_needs(file: &GgufFile, options: &LoadOptions) -> KernelNeeds {
    let needs = file.tensors().iter().filter(|t| t.dims.len() >= 2).fold(KernelNeeds::default(), |n, t| n.with_matrix_type(t.ggml_type));
    needs.with_head_dim(ModelConfig::from_gguf(file).map_or(0, |c| c.head_dim)).with_kv_dtype(options.kv_cache_dtype)
}

/// Loads the model in `file` onto `device`: makes the backend, reads the config, uploads the
/// weights and allocates the KV pool.
pub fn load_model_with(file: Arc<GgufFile>, device: &str, options: LoadOptions) -> Result<Box<dyn LanguageModel>, ModelError> {
    struct Load {
        file: Arc<GgufFile>,
        options: LoadOptions,
    }
    impl WithBackend for Load {
        type Output = Result<Box<dyn LanguageModel>, ModelError>;
        fn run<B: Backend>(self, backend: B) -> Self::Output {
            Ok(Box::new(TransformerModel::load(self.file, backend, self.options)?))
        }
    }
    let device = Device::parse(device)?;
    let backend_options = BackendOptions { exact_matmul: options.exact_matmul, threads: options.threads, needs: kernel_needs(&file, &options) };
    with_backend(device, backend_options, Load { file, options })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::writer::GgufWriter;
    use crate::quant::GgmlType;

    /// Matrices count, vectors do not; a file without a model config gives no head width.
    #[test]
    fn kernel_needs_are_the_files_matrix_types() {
        let bytes = GgufWriter::new()
            .tensor("a.weight", &[32, 2], GgmlType::Q8_0, vec![0; 2 * 34])
            .tensor("b.weight", &[256, 1], GgmlType::Q6_K, vec![0; 210])
            .tensor("norm.weight", &[4], GgmlType::F16, vec![0; 8])
            .to_bytes();
        let file = GgufFile::from_bytes(bytes).unwrap();
        let needs = kernel_needs(&file, &LoadOptions::default());
        assert_eq!(needs.matrix_types().collect::<Vec<_>>(), vec![GgmlType::Q8_0, GgmlType::Q6_K]);
        assert_eq!(needs.head_dim, 0);
    }
}
