//! The Unicode classes the split regexes use (`\p{L}`, `\p{N}`, `\s`), taken from regex-syntax's
//! tables so the hand-written scanner classifies every character exactly as the regex engine
//! would (std's `char` methods follow a different Unicode version and `is_alphabetic` is not L).

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CharClass {
    Letter = 0,
    Number = 1,
    Whitespace = 2,
    /// Anything else: punctuation, symbols, emoji, marks, controls that are not whitespace.
    Other = 3,
}

/// Code points below this are classified by a flat table; the rest (rare astral planes beyond
/// the supplementary ideographic plane) by binary search.
const TABLE_LEN: usize = 0x3_0000;

struct Classes {
    table: Vec<u8>,
    /// Sorted, non-overlapping (start, end inclusive, class) for code points >= TABLE_LEN.
    high: Vec<(u32, u32, CharClass)>,
}

fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    // The patterns are constants known to parse; an empty class would only make the scanner
    // disagree with the regex, which the unit tests compare against.
    let Ok(hir) = regex_syntax::parse(pattern) else { return vec![] };
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect(),
        _ => vec![],
    }
}

fn classes() -> &'static Classes {
    static CLASSES: OnceLock<Classes> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let mut table = vec![CharClass::Other as u8; TABLE_LEN];
        let mut high = vec![];
        // Disjoint classes in Unicode, so the order of filling does not matter.
        for (pattern, class) in [(r"\p{L}", CharClass::Letter), (r"\p{N}", CharClass::Number), (r"\s", CharClass::Whitespace)] {
            for (start, end) in ranges(pattern) {
                for cp in start..=end.min(TABLE_LEN as u32 - 1) {
                    table[cp as usize] = class as u8;
                }
                if end >= TABLE_LEN as u32 {
                    high.push((start.max(TABLE_LEN as u32), end, class));
                }
            }
        }
        high.sort_unstable_by_key(|r| r.0);
        Classes { table, high }
    })
}

#[inline]
pub fn classify(c: char) -> CharClass {
    let cp = c as u32;
    let cls = classes();
    if (cp as usize) < TABLE_LEN {
        match cls.table[cp as usize] {
            0 => CharClass::Letter,
            1 => CharClass::Number,
            2 => CharClass::Whitespace,
            _ => CharClass::Other,
        }
    } else {
        match cls.high.binary_search_by(|&(s, e, _)| {
            if e < cp {
                std::cmp::Ordering::Less
            } else if s > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => cls.high[i].2,
            Err(_) => CharClass::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks() {
        assert_eq!(classify('a'), CharClass::Letter);
        assert_eq!(classify('中'), CharClass::Letter);
        assert_eq!(classify('٣'), CharClass::Number);
        assert_eq!(classify('½'), CharClass::Number);
        assert_eq!(classify('\u{3000}'), CharClass::Whitespace);
        assert_eq!(classify('\u{85}'), CharClass::Whitespace);
        assert_eq!(classify('\u{301}'), CharClass::Other);
        assert_eq!(classify('🦀'), CharClass::Other);
        assert_eq!(classify('\u{30000}'), CharClass::Letter); // CJK extension G
        assert_eq!(classify('\u{E0001}'), CharClass::Other);
    }
}
