//! The vocabulary: token strings, their GGUF token types, and the reverse map.

use rustc_hash::FxHashMap;

use super::TokenizerError;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    /// Special tokens of the original tokenizer (`special: true`): chat markers, end of text, FIM.
    Control,
    /// Added tokens that are not special in the original tokenizer (e.g. Qwen's `<tool_call>`).
    UserDefined,
    /// Padding slots that round the vocabulary up to the embedding size.
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_code(code: i64) -> Option<TokenType> {
        Some(match code {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// Whether the token's text is literal text rather than GPT-2 byte-level characters.
    pub fn is_added(self) -> bool {
        matches!(self, TokenType::Control | TokenType::UserDefined)
    }

    /// What the token decodes to: llama.cpp's `token_to_piece` for BPE vocabularies, the one
    /// table `decode` and the incremental decoder both read.
    pub fn piece(self) -> Piece {
        match self {
            TokenType::Normal => Piece::ByteLevel,
            TokenType::Byte => Piece::Byte,
            TokenType::UserDefined => Piece::Text,
            TokenType::Control | TokenType::Unknown => Piece::SpecialText,
            // Padding slots (Qwen2.5's [PAD151665]...) and untyped entries are not text.
            TokenType::Unused | TokenType::Undefined => Piece::Nothing,
        }
    }
}

/// How a token's vocabulary entry becomes bytes when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// GPT-2 byte-level characters mapped back to bytes.
    ByteLevel,
    /// A `<0xNN>` entry stands for that one byte.
    Byte,
    /// The entry's literal text, always.
    Text,
    /// The entry's literal text, unless special tokens are skipped.
    SpecialText,
    /// No bytes at all.
    Nothing,
}

pub struct Vocab {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    ids: FxHashMap<String, u32>,
}

impl Vocab {
    pub fn new(tokens: Vec<String>, types: Vec<TokenType>) -> Result<Vocab, TokenizerError> {
        if tokens.is_empty() {
            return Err(TokenizerError::InvalidMetadata { key: "tokenizer.ggml.tokens", reason: "empty".into() });
        }
        if tokens.len() > u32::MAX as usize {
            return Err(TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.tokens",
                reason: format!("{} tokens do not fit u32 ids", tokens.len()),
            });
        }
        if types.len() != tokens.len() {
            return Err(TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.token_type",
                reason: format!("{} entries for {} tokens", types.len(), tokens.len()),
            });
        }
        let mut ids = FxHashMap::default();
        ids.reserve(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            // On duplicates the first id wins, as in llama.cpp; HF would keep the last. Real
            // vocabularies have none (the test checks the round trip of every id).
            ids.entry(t.clone()).or_insert(id as u32);
        }
        Ok(Vocab { tokens, types, ids })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    pub fn id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
    pub fn types(&self) -> &[TokenType] {
        &self.types
    }
}
