//! Byte-level BPE tokenizer from GGUF metadata.
