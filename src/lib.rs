//! ferrite: GGUF files, ggml block formats, byte-level BPE and Qwen2-family inference.
//!
//! The core modules know nothing of Python; `python` (behind the `python` feature) is the only
//! place pyo3 appears.

pub mod backend;
pub mod engine;
pub mod gguf;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod tokenizer;

#[cfg(feature = "python")]
mod python;
