use std::path::PathBuf;

use thiserror::Error;

/// Everything that can be wrong with a GGUF file. Messages name the byte offset or the tensor.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file: magic bytes are {found:02x?} (expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("GGUF version {version} is not supported (ferrite reads versions 2 and 3){hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    #[error("file truncated at byte {offset}: reading {what} needs {needed} bytes, {available} remain")]
    Truncated { offset: u64, what: String, needed: u64, available: u64 },
    #[error("at byte {offset}: {what} count {count} is impossible: the remaining {remaining} bytes cannot hold it")]
    CountTooLarge { offset: u64, what: String, count: u64, remaining: u64 },
    #[error("at byte {offset}: {what} is not valid UTF-8")]
    InvalidUtf8 { offset: u64, what: String },
    #[error("at byte {offset}: metadata key {key:?} has unknown value type id {type_id}")]
    UnknownValueType { offset: u64, key: String, type_id: u32 },
    #[error("at byte {offset}: metadata key {key:?}: arrays nested deeper than {max_depth} levels")]
    NestingTooDeep { offset: u64, key: String, max_depth: usize },
    #[error("at byte {offset}: metadata key {key:?}: {problem}")]
    BadValue { offset: u64, key: String, problem: String },
    #[error("duplicate metadata key {key:?} (at byte {offset})")]
    DuplicateKey { offset: u64, key: String },
    #[error("general.alignment must be a non-zero power of two, got {value}")]
    BadAlignment { value: u64 },
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongValueType { key: String, expected: &'static str, found: &'static str },
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor { tensor: String, problem: String },
    #[error("duplicate tensor name {tensor:?}")]
    DuplicateTensor { tensor: String },
    #[error("tensor {tensor:?}: unknown ggml type id {type_id}")]
    UnknownTensorType { tensor: String, type_id: u32 },
    #[error("tensor {tensor:?}: data [{start}, {end}) lies past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds { tensor: String, start: u64, end: u64, file_len: u64 },
    #[error("no tensor named {0:?}")]
    NoSuchTensor(String),
    #[error("no metadata key {0:?}")]
    NoSuchKey(String),
}
