//! The model's tokenizer as the loop's text source: its streaming decoder per sequence.

use super::{Detokenize, GenerateError};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

impl Detokenize for Tokenizer {
    type State = IncrementalDecoder;

    /// Special (control) tokens that are not end-of-generation are left out of the text, as vLLM
    /// and HF `generate` do by default: a stray `<|im_start|>` is markup, not output.
    fn start(&self) -> IncrementalDecoder {
        self.decoder(true)
    }

    fn push(&self, state: &mut IncrementalDecoder, token: u32) -> Result<String, GenerateError> {
        Ok(state.push(token)?)
    }

    fn finish(&self, state: &mut IncrementalDecoder) -> String {
        state.flush()
    }
}
