use std::path::PathBuf;

use thiserror::Error;

/// Everything that can be wrong with a GGUF file. Messages name the byte offset or the tensor.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file: it starts with {}, not b\"GGUF\"{}", bytes_literal(found), magic_hint(found))]
    BadMagic { found: [u8; 4] },
    /// An error in the file at `path` (from `GgufFile::open`), so a message names the file.
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<GgufError> },
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

impl GgufError {
    /// The error itself, without the file it was found in.
    pub fn without_path(&self) -> &GgufError {
        match self {
            GgufError::InFile { source, .. } => source.without_path(),
            other => other,
        }
    }
}

/// Bytes the way Python writes a bytes literal (`b"\x7fELF"`), so a person can read them.
pub fn bytes_literal(bytes: &[u8]) -> String {
    let mut out = String::from("b\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

/// What a few well-known first bytes mean.
fn magic_hint(found: &[u8; 4]) -> &'static str {
    match found {
        // The pre-GGUF llama.cpp formats (ggml, ggmf, ggjt, ggla), magic stored as a little-endian u32.
        b"lmgg" | b"fmgg" | b"tjgg" | b"algg" => " (a llama.cpp file from before GGUF, 2023: convert it again)",
        [0x7f, b'E', b'L', b'F'] => " (an executable or shared library)",
        [b'P', b'K', 3, 4] => " (a zip archive, e.g. a PyTorch checkpoint)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_magic_is_shown_as_a_bytes_literal() {
        assert_eq!(bytes_literal(b"\x7fELF"), r#"b"\x7fELF""#);
        assert_eq!(bytes_literal(b"a\"\\\n"), r#"b"a\"\\\n""#);
        let e = GgufError::BadMagic { found: *b"# fe" };
        assert_eq!(e.to_string(), r##"not a GGUF file: it starts with b"# fe", not b"GGUF""##);
        let wrapped = GgufError::InFile { path: "x/y.gguf".into(), source: Box::new(e) };
        assert_eq!(wrapped.to_string(), r##"x/y.gguf: not a GGUF file: it starts with b"# fe", not b"GGUF""##);
        assert!(matches!(wrapped.without_path(), GgufError::BadMagic { .. }));
    }
}
