//! Decoding ids back to bytes and text: byte-level tokens through the inverse GPT-2 byte map,
//! added tokens as their literal text, and a streaming decoder that never splits a character.

use super::byte_level::{byte_to_char_table, char_to_byte};
use super::vocab::{Piece, Vocab};
use super::{Tokenizer, TokenizerError};

/// The bytes each id decodes to when special tokens are kept, precomputed so decoding is a
/// concatenation (`TokenType::piece` says which rule applies).
pub fn token_bytes_table(vocab: &Vocab) -> Vec<Box<[u8]>> {
    let table = byte_to_char_table();
    let byte_level = |tok: &str| -> Box<[u8]> {
        let bytes: Option<Vec<u8>> = tok.chars().map(|c| char_to_byte(c, &table)).collect();
        // A token with characters outside the byte map is kept as its own UTF-8 text, as HF's
        // ByteLevel decoder does; no real byte-level vocabulary has one.
        bytes.map(Vec::into_boxed_slice).unwrap_or_else(|| tok.as_bytes().into())
    };
    vocab
        .tokens()
        .iter()
        .zip(vocab.types())
        .map(|(tok, ty)| match ty.piece() {
            Piece::ByteLevel => byte_level(tok),
            Piece::Byte => match parse_byte_token(tok) {
                Some(b) => Box::new([b]),
                None => byte_level(tok),
            },
            // Added tokens hold literal text, not byte-level characters (llama.cpp does the same;
            // HF would push them through the byte map, which is the identity for ASCII).
            Piece::Text | Piece::SpecialText => tok.as_bytes().into(),
            Piece::Nothing => Box::new([]),
        })
        .collect()
}

/// `<0x0A>` -> 0x0A: the form of BYTE tokens (llama.cpp `token_to_byte`).
pub(super) fn parse_byte_token(tok: &str) -> Option<u8> {
    let hex = tok.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Streams text out of ids as they are generated: `push` returns only complete characters and
/// holds back a trailing partial UTF-8 sequence until the bytes that finish it arrive. The
/// concatenation of every `push` and the final `flush` equals `Tokenizer::decode` of all ids.
pub struct IncrementalDecoder {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> IncrementalDecoder {
        IncrementalDecoder { tokenizer, skip_special_tokens, pending: Vec::new() }
    }

    /// Adds one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let bytes = self.tokenizer.token_bytes_for_decode(id, self.skip_special_tokens)?;
        self.pending.extend_from_slice(bytes);
        Ok(self.take_complete())
    }

    /// Adds several ids; returns the text they complete.
    pub fn push_many(&mut self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut out = String::new();
        for &id in ids {
            out.push_str(&self.push(id)?);
        }
        Ok(out)
    }

    /// Ends the stream: a trailing incomplete sequence becomes U+FFFD, as in `decode`.
    pub fn flush(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: from_utf8 just validated this prefix.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""));
                    match e.error_len() {
                        // Could still become a character: keep it for the next push.
                        None => {
                            start += valid;
                            break;
                        }
                        // Can never become one: same replacement as from_utf8_lossy.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
