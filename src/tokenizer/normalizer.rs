//! NFC normalization of text runs before pre-tokenization, as Qwen2's original tokenizer.json
//! declares (`"normalizer": {"type": "NFC"}`). llama.cpp skips this step; HF does not, and HF is
//! what the model was trained with.

use std::borrow::Cow;

use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

pub fn nfc(text: &str) -> Cow<'_, str> {
    // The quick check answers Yes for almost all real text (ASCII always), avoiding a copy.
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}
