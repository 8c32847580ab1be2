//! The tokenizer layer's error enum.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error("the GGUF has no tokenizer: metadata key {0} is missing")]
    MissingKey(&'static str),
    #[error("tokenizer metadata {key} is invalid: {reason}")]
    InvalidMetadata { key: &'static str, reason: String },
    #[error("tokenizer.ggml.model = {0:?} is not supported (ferrite implements byte-level BPE, \"gpt2\", only)")]
    UnsupportedModel(String),
    #[error(
        "tokenizer.ggml.pre = {0:?} is not supported (known: {known}); \
         refusing to guess a pre-tokenizer because a wrong one silently changes token ids",
        known = super::pre_tokenizer::KNOWN_NAMES.join(", ")
    )]
    UnsupportedPreTokenizer(String),
    #[error("pre-tokenizer regex failed at byte {offset} of a text segment: {reason}")]
    PreTokenizer { offset: usize, reason: String },
    #[error("merge #{index} {merge:?}: {reason}")]
    BadMerge { index: usize, merge: String, reason: String },
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    InvalidId { id: u64, vocab_size: usize },
    #[error("the GGUF has no tokenizer.chat_template")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
    #[error("chat messages: {0}")]
    BadMessages(String),
}
