//! Pre-tokenization: the regex that splits text into words before BPE, one per
//! `tokenizer.ggml.pre` value. Merges never cross these boundaries, so the regex must be exactly
//! the original tokenizer's.

use fancy_regex::Regex;

use super::TokenizerError;

/// Qwen2's split regex, verbatim from the original `tokenizer.json` (single digits; letters may
/// take one leading non-letter; case-insensitive contractions).
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's: Qwen2's with digits in runs of one to three.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's original (case-sensitive contractions, a leading space joins the next word).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values ferrite implements. `default` is deliberately absent: llama.cpp's
/// "default" is a chain of four regexes, not GPT-2's, and guessing would change ids silently.
pub const KNOWN_NAMES: &[&str] = &["qwen2", "deepseek-r1-qwen", "llama-bpe", "gpt2"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    Qwen2,
    Llama3,
    Gpt2,
}

impl PreTokenizerKind {
    pub fn from_name(name: &str) -> Result<PreTokenizerKind, TokenizerError> {
        Ok(match name {
            "qwen2" | "deepseek-r1-qwen" => PreTokenizerKind::Qwen2,
            "llama-bpe" => PreTokenizerKind::Llama3,
            "gpt2" => PreTokenizerKind::Gpt2,
            other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
        })
    }

    pub fn pattern(self) -> &'static str {
        match self {
            PreTokenizerKind::Qwen2 => QWEN2,
            PreTokenizerKind::Llama3 => LLAMA3,
            PreTokenizerKind::Gpt2 => GPT2,
        }
    }

    /// Llama 3's tokenizer.json sets `ignore_merges`: a word that is a vocabulary entry is taken
    /// whole.
    pub fn ignores_merges(self) -> bool {
        self == PreTokenizerKind::Llama3
    }

    /// Only Qwen2's tokenizer.json declares an NFC normalizer; Llama 3's and GPT-2's have none.
    pub fn normalizes_nfc(self) -> bool {
        self == PreTokenizerKind::Qwen2
    }
}

pub struct PreTokenizer {
    kind: PreTokenizerKind,
    regex: Regex,
}

impl PreTokenizer {
    pub fn new(kind: PreTokenizerKind) -> Result<PreTokenizer, TokenizerError> {
        let regex = fancy_regex::RegexBuilder::new(kind.pattern())
            .build()
            .map_err(|e| TokenizerError::PreTokenizer { offset: 0, reason: format!("compiling the regex: {e}") })?;
        Ok(PreTokenizer { kind, regex })
    }

    pub fn kind(&self) -> PreTokenizerKind {
        self.kind
    }

    /// Calls `word` for each pre-token of `text`, in order. The pieces tile `text` exactly:
    /// every alternative ends in a catch-all (`\s+` or a single non-space), so no byte is dropped.
    pub fn split<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) -> Result<(), TokenizerError> {
        let mut covered = 0usize;
        for m in self.regex.find_iter(text) {
            let m = m.map_err(|e| TokenizerError::PreTokenizer { offset: covered, reason: e.to_string() })?;
            if m.start() != covered {
                // A gap would mean bytes silently dropped from the encoding; cannot happen with
                // these patterns, but never let it pass unnoticed.
                return Err(TokenizerError::PreTokenizer {
                    offset: covered,
                    reason: format!("the regex skipped bytes {}..{}", covered, m.start()),
                });
            }
            word(m.as_str());
            covered = m.end();
        }
        if covered != text.len() {
            return Err(TokenizerError::PreTokenizer {
                offset: covered,
                reason: "the regex left a tail unmatched".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(kind: PreTokenizerKind, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(kind).unwrap();
        let mut out = vec![];
        p.split(text, |w| out.push(w.to_string())).unwrap();
        out
    }

    #[test]
    fn qwen2_splits_digits_singly_and_keeps_contractions() {
        assert_eq!(words(PreTokenizerKind::Qwen2, "I'LL pay 1234!"), ["I", "'LL", " pay", " ", "1", "2", "3", "4", "!"]);
        assert_eq!(words(PreTokenizerKind::Qwen2, "a  \n\n b"), ["a", "  \n\n", " b"]);
        assert_eq!(words(PreTokenizerKind::Qwen2, "x   y"), ["x", "  ", " y"]);
    }

    #[test]
    fn llama3_groups_digits_in_threes() {
        assert_eq!(words(PreTokenizerKind::Llama3, "1234567"), ["123", "456", "7"]);
    }

    #[test]
    fn gpt2_space_joins_numbers() {
        assert_eq!(words(PreTokenizerKind::Gpt2, "a 1234 I'LL"), ["a", " 1234", " I", "'", "LL"]);
    }

    #[test]
    fn unknown_name_is_an_error() {
        assert!(matches!(PreTokenizerKind::from_name("default"), Err(TokenizerError::UnsupportedPreTokenizer(_))));
        assert!(matches!(PreTokenizerKind::from_name("falcon"), Err(TokenizerError::UnsupportedPreTokenizer(_))));
    }
}
