//! Added tokens (GGUF CONTROL and USER_DEFINED): matched as whole tokens in raw text before
//! normalization and pre-tokenization, leftmost-longest, as HF's AddedVocabulary does.
//!
//! CONTROL tokens are the original tokenizer's special tokens: matched only with `parse_special`.
//! USER_DEFINED tokens are added but not special (Qwen's `<tool_call>`): always matched, as both
//! HF `tokenizers` (non-special added tokens ignore `encode_special_tokens`) and llama.cpp do.

use aho_corasick::{AhoCorasick, MatchKind};

use super::vocab::{TokenType, Vocab};
use super::TokenizerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'t> {
    Text(&'t str),
    Token(u32),
}

struct Matcher {
    automaton: AhoCorasick,
    ids: Vec<u32>,
}

impl Matcher {
    fn build(entries: Vec<(&str, u32)>) -> Result<Option<Matcher>, TokenizerError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(entries.iter().map(|(s, _)| s))
            .map_err(|e| TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.tokens",
                reason: format!("building the added-token matcher: {e}"),
            })?;
        Ok(Some(Matcher { automaton, ids: entries.iter().map(|&(_, id)| id).collect() }))
    }
}

pub struct AddedTokens {
    /// CONTROL and USER_DEFINED.
    all: Option<Matcher>,
    /// USER_DEFINED only.
    user_defined: Option<Matcher>,
}

impl AddedTokens {
    pub fn new(vocab: &Vocab) -> Result<AddedTokens, TokenizerError> {
        let mut all = vec![];
        let mut user = vec![];
        for (id, (tok, ty)) in vocab.tokens().iter().zip(vocab.types()).enumerate() {
            if tok.is_empty() {
                continue;
            }
            match ty {
                TokenType::Control => all.push((tok.as_str(), id as u32)),
                TokenType::UserDefined => {
                    all.push((tok.as_str(), id as u32));
                    user.push((tok.as_str(), id as u32));
                }
                _ => {}
            }
        }
        Ok(AddedTokens { all: Matcher::build(all)?, user_defined: Matcher::build(user)? })
    }

    /// Splits `text` into plain-text runs and added tokens, in order.
    pub fn split<'t>(&self, text: &'t str, parse_special: bool, mut seg: impl FnMut(Segment<'t>)) {
        let matcher = if parse_special { &self.all } else { &self.user_defined };
        let Some(m) = matcher else {
            if !text.is_empty() {
                seg(Segment::Text(text));
            }
            return;
        };
        let mut last = 0;
        for hit in m.automaton.find_iter(text) {
            if hit.start() > last {
                seg(Segment::Text(&text[last..hit.start()]));
            }
            seg(Segment::Token(m.ids[hit.pattern().as_usize()]));
            last = hit.end();
        }
        if last < text.len() {
            seg(Segment::Text(&text[last..]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        let toks = ["a", "<|im_start|>", "<|im", "<tool_call>", "b"].map(String::from).to_vec();
        let types = vec![TokenType::Normal, TokenType::Control, TokenType::Control, TokenType::UserDefined, TokenType::Normal];
        Vocab::new(toks, types).unwrap()
    }

    fn segs(text: &str, parse_special: bool) -> Vec<Segment<'_>> {
        let added = AddedTokens::new(&vocab()).unwrap();
        let mut out = vec![];
        added.split(text, parse_special, |s| out.push(s));
        out
    }

    #[test]
    fn longest_match_and_user_defined_always() {
        assert_eq!(
            segs("x<|im_start|>y<tool_call>", true),
            [Segment::Text("x"), Segment::Token(1), Segment::Text("y"), Segment::Token(3)]
        );
        assert_eq!(segs("x<|im_start|>y<tool_call>", false), [Segment::Text("x<|im_start|>y"), Segment::Token(3)]);
        assert_eq!(segs("", true), []);
    }
}
