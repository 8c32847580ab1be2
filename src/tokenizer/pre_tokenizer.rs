//! Pre-tokenization: the regex that splits text into words before BPE, one per
//! `tokenizer.ggml.pre` value. Merges never cross these boundaries, so the regex must be exactly
//! the original tokenizer's.

use fancy_regex::Regex;

use super::char_class::{classify, CharClass};
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

    /// Calls `word` for each pre-token of `text`, in order; the pieces tile `text` exactly.
    /// Qwen2 and Llama 3 use a hand-written scanner equivalent to their regex (about 10x faster
    /// than the backtracking engine; the unit tests compare the two on random text); GPT-2 uses
    /// the regex.
    pub fn split<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) -> Result<(), TokenizerError> {
        match self.kind {
            PreTokenizerKind::Qwen2 => scan(text, 1, &mut word),
            PreTokenizerKind::Llama3 => scan(text, 3, &mut word),
            PreTokenizerKind::Gpt2 => return self.split_with_regex(text, word),
        }
        Ok(())
    }

    /// The same split by the regex engine: GPT-2's path, and the oracle the scanner is tested on.
    pub fn split_with_regex<'t>(&self, text: &'t str, mut word: impl FnMut(&'t str)) -> Result<(), TokenizerError> {
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

/// Qwen2's split (`max_digits` 1) or Llama 3's (`max_digits` 3), alternative by alternative as
/// the regex engine tries them (leftmost alternative that matches at the current position).
fn scan<'t>(text: &'t str, max_digits: usize, word: &mut impl FnMut(&'t str)) {
    let mut i = 0;
    while i < text.len() {
        let end = match_at(text, i, max_digits);
        word(&text[i..end]);
        i = end;
    }
}

#[inline]
fn char_at(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

/// End (byte offset) of the pre-token starting at byte `i`.
fn match_at(text: &str, i: usize, max_digits: usize) -> usize {
    let Some(c) = char_at(text, i) else { return text.len() };
    let class = classify(c);
    let after = i + c.len_utf8();
    let next = char_at(text, after);
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == '\'' {
        if let Some(len) = contraction(&text[after..]) {
            return after + len;
        }
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if class == CharClass::Letter {
        return skip_while(text, after, |cl, _| cl == CharClass::Letter);
    }
    if class != CharClass::Number && c != '\r' && c != '\n' {
        if let Some(n) = next.filter(|&n| classify(n) == CharClass::Letter) {
            return skip_while(text, after + n.len_utf8(), |cl, _| cl == CharClass::Letter);
        }
    }
    // \p{N} (Llama 3: \p{N}{1,3})
    if class == CharClass::Number {
        let mut end = after;
        for _ in 1..max_digits {
            match char_at(text, end) {
                Some(d) if classify(d) == CharClass::Number => end += d.len_utf8(),
                _ => break,
            }
        }
        return end;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let others_from = if class == CharClass::Other {
        Some(after)
    } else if c == ' ' {
        next.filter(|&n| classify(n) == CharClass::Other).map(|n| after + n.len_utf8())
    } else {
        None
    };
    if let Some(from) = others_from {
        let end = skip_while(text, from, |cl, _| cl == CharClass::Other);
        return skip_while(text, end, |_, ch| ch == '\r' || ch == '\n');
    }
    // Only whitespace is left. \s*[\r\n]+ : up to and including the run's last line break.
    let run_end = skip_while(text, i, |cl, _| cl == CharClass::Whitespace);
    let run = &text[i..run_end];
    if let Some(p) = run.rfind(['\r', '\n']) {
        return i + p + 1;
    }
    // \s+(?!\S) : the run, less its last character when a non-space follows.
    if run_end == text.len() {
        return run_end;
    }
    let last_start = run.char_indices().next_back().map_or(0, |(p, _)| p);
    if last_start > 0 {
        return i + last_start;
    }
    // \s+
    run_end
}

fn skip_while(text: &str, from: usize, keep: impl Fn(CharClass, char) -> bool) -> usize {
    let mut end = from;
    for ch in text[from..].chars() {
        if !keep(classify(ch), ch) {
            break;
        }
        end += ch.len_utf8();
    }
    end
}

/// Byte length of a case-insensitive contraction suffix after an apostrophe. Unicode simple
/// case folding adds U+017F (long s) to "s", as the regex engine does.
fn contraction(rest: &str) -> Option<usize> {
    let mut it = rest.chars();
    let a = it.next()?;
    let b = it.next();
    let is = |c: char, lower: char| c.to_ascii_lowercase() == lower && c.is_ascii();
    let s = |c: char| is(c, 's') || c == '\u{17F}';
    if s(a) {
        return Some(a.len_utf8());
    }
    if is(a, 't') || is(a, 'm') || is(a, 'd') {
        return Some(1);
    }
    match (a, b) {
        (a, Some(b)) if is(a, 'r') && is(b, 'e') => Some(2),
        (a, Some(b)) if is(a, 'v') && is(b, 'e') => Some(2),
        (a, Some(b)) if is(a, 'l') && is(b, 'l') => Some(2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scanner must split exactly like the regex it replaces.
    #[test]
    fn scanner_matches_regex_on_random_text() {
        let alphabet: Vec<char> = "aZé中ス한ا1٣½ \t\n\r\u{3000}\u{85}\u{a0}'sStTrReEvVmMlLdDſ.,!?(🦀\u{301}\u{200b}_-#\u{2028}\u{30000}\u{e0001}"
            .chars()
            .collect();
        let mut state = 0x9E3779B97F4A7C15u64;
        for kind in [PreTokenizerKind::Qwen2, PreTokenizerKind::Llama3] {
            let p = PreTokenizer::new(kind).unwrap();
            for _ in 0..20_000 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let len = (state >> 58) as usize;
                let text: String = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        alphabet[(state >> 33) as usize % alphabet.len()]
                    })
                    .collect();
                let (mut fast, mut slow) = (vec![], vec![]);
                p.split(&text, |w| fast.push(w)).unwrap();
                p.split_with_regex(&text, |w| slow.push(w)).unwrap();
                assert_eq!(fast, slow, "{kind:?} on {text:?}");
            }
        }
    }

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
