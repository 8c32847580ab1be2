use thiserror::Error;

use crate::backend::BackendError;
use crate::gguf::GgufError;
use crate::quant::QuantError;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error("architecture {0:?} is not supported (ferrite runs qwen2 and llama)")]
    UnknownArchitecture(String),
    #[error("missing metadata key {0:?}")]
    MissingKey(String),
    #[error("missing tensor {0:?}")]
    MissingTensor(String),
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor { tensor: String, problem: String },
    #[error("a sequence of {needed} tokens exceeds the context length of {context_length}")]
    ContextLength { needed: usize, context_length: usize },
    #[error("KV cache full: {needed} more blocks of {block_tokens} tokens are needed but {free} of {total} are free (free sequences or load with a larger kv_cache_tokens)")]
    KvCacheFull { needed: usize, free: usize, total: usize, block_tokens: usize },
    #[error("no sequence with id {0}")]
    NoSuchSequence(usize),
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    BadTokenId { id: u32, vocab_size: usize },
    #[error("{0}")]
    Invalid(String),
    /// The device failed, or refused what it was given.
    #[error(transparent)]
    Backend(BackendError),
}

impl From<BackendError> for ModelError {
    fn from(e: BackendError) -> ModelError {
        match e {
            // One error per mistake whichever layer finds it.
            BackendError::Quant(q) => ModelError::Quant(q),
            BackendError::BadTokenId { id, vocab_size } => ModelError::BadTokenId { id, vocab_size },
            BackendError::BadTensor { tensor, problem } => ModelError::BadTensor { tensor, problem },
            other => ModelError::Backend(other),
        }
    }
}
