//! GPT-2's reversible byte <-> unicode mapping: every byte gets a printable character so that
//! vocabulary entries are text, and any byte sequence (even invalid UTF-8) is representable.

/// The character standing for each byte. Printable Latin-1 bytes map to themselves; the other 68
/// bytes (controls, space, 0x7F-0xA0, 0xAD) map to U+0100.. in byte order, as GPT-2 defined it.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_unprintable = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            next_unprintable += 1;
            0xFF + next_unprintable
        };
        // Every value is below U+0200, a valid scalar value.
        table[b as usize] = char::from_u32(c).unwrap_or('\u{FFFD}');
    }
    table
}

/// The byte each mapped character stands for; `None` for characters outside the mapping.
pub fn char_to_byte(c: char, table: &[char; 256]) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x200 {
        // The table is a bijection onto a subset of U+0000..U+01FF; a linear scan happens only at
        // load time (decoder tables are precomputed per token).
        table.iter().position(|&t| t == c).map(|b| b as u8)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_is_a_bijection_with_gpt2_landmarks() {
        let t = byte_to_char_table();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'\t' as usize], 'ĉ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[0], 'Ā');
        let mut seen = std::collections::HashSet::new();
        for b in 0..256usize {
            assert!(seen.insert(t[b]));
            assert_eq!(char_to_byte(t[b], &t), Some(b as u8));
        }
        assert_eq!(char_to_byte('€', &t), None);
    }
}
