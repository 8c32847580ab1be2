//! Byte-level BPE tokenizer built from a GGUF's own `tokenizer.ggml.*` metadata.
//!
//! Encoding: added tokens are split out of the raw text (special.rs), each remaining run is NFC
//! normalized (normalizer.rs), split into words by the `tokenizer.ggml.pre` regex
//! (pre_tokenizer.rs), and each word's UTF-8 bytes are merged by rank (bpe.rs).
//! Decoding concatenates each id's bytes (decoder.rs). docs/TOKENIZER.md records the choices.

mod bpe;
mod byte_level;
mod char_class;
mod chat_template;
mod decoder;
mod error;
mod normalizer;
mod pre_tokenizer;
mod special;
mod vocab;

use std::sync::Arc;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde_json::Value as Json;

use crate::gguf::GgufFile;
pub use chat_template::ChatMessage;
pub use decoder::IncrementalDecoder;
pub use error::TokenizerError;
pub use pre_tokenizer::PreTokenizerKind;
pub use vocab::TokenType;

use bpe::Bpe;
use chat_template::{ChatTemplate, TemplateTokens};
use pre_tokenizer::PreTokenizer;
use special::{AddedTokens, Segment};
use vocab::Vocab;

/// A tokenizer; cheap to clone (shared state behind an `Arc`) and `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    vocab: Vocab,
    bpe: Bpe,
    pre: PreTokenizer,
    added: AddedTokens,
    token_bytes: Vec<Box<[u8]>>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    eog_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    chat_template_source: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.inner.pre.kind())
            .field("bos_id", &self.inner.bos_id)
            .field("eos_id", &self.inner.eos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata. Errors (never falls back) when the
    /// model is not byte-level BPE or the pre-tokenizer is unknown.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model = file.get_str("tokenizer.ggml.model")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let pre_name = file.get_str("tokenizer.ggml.pre")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.pre"))?;
        let pre_kind = PreTokenizerKind::from_name(pre_name)?;

        let tokens = string_array(file, "tokenizer.ggml.tokens")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.tokens"))?;
        let types = match file.get_array("tokenizer.ggml.token_type")? {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_i64().and_then(TokenType::from_code).ok_or_else(|| TokenizerError::InvalidMetadata {
                        key: "tokenizer.ggml.token_type",
                        reason: format!("entry {i} is {v:?}, not a token type code 0..=6"),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            // Without types nothing is special; every token is ordinary byte-level text.
            None => vec![TokenType::Normal; tokens.len()],
        };
        let merges = string_array(file, "tokenizer.ggml.merges")?.ok_or(TokenizerError::MissingKey("tokenizer.ggml.merges"))?;
        let vocab = Vocab::new(tokens, types)?;

        let id_key = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            match file.get_u64(key)? {
                None => Ok(None),
                Some(id) if (id as usize) < vocab.len() => Ok(Some(id as u32)),
                Some(id) => Err(TokenizerError::InvalidMetadata {
                    key,
                    reason: format!("id {id} is outside the vocabulary of {}", vocab.len()),
                }),
            }
        };
        let bos_id = id_key("tokenizer.ggml.bos_token_id")?;
        let eos_id = id_key("tokenizer.ggml.eos_token_id")?;
        let pad_id = id_key("tokenizer.ggml.padding_token_id")?;
        let eot_id = id_key("tokenizer.ggml.eot_token_id")?;
        let eom_id = id_key("tokenizer.ggml.eom_token_id")?;
        let add_bos = file.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        let add_eos = file.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let chat_template_source = file.get_str("tokenizer.chat_template")?.map(str::to_string);

        Tokenizer::build(
            vocab,
            &merges,
            pre_kind,
            Specials { bos_id, eos_id, pad_id, eot_id, eom_id, add_bos, add_eos },
            chat_template_source,
        )
    }

    fn build(
        vocab: Vocab,
        merges: &[String],
        pre_kind: PreTokenizerKind,
        specials: Specials,
        chat_template_source: Option<String>,
    ) -> Result<Tokenizer, TokenizerError> {
        let table = byte_level::byte_to_char_table();
        let mut byte_ids = [0u32; 256];
        for (b, c) in table.iter().enumerate() {
            byte_ids[b] = vocab.id(&c.to_string()).ok_or_else(|| TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.tokens",
                reason: format!("byte 0x{b:02X} has no token {c:?}; not a byte-level BPE vocabulary"),
            })?;
        }
        let mut merge_map = FxHashMap::default();
        merge_map.reserve(merges.len());
        for (rank, merge) in merges.iter().enumerate() {
            let bad = |reason: String| TokenizerError::BadMerge { index: rank, merge: merge.clone(), reason };
            let (l, r) = merge.split_once(' ').ok_or_else(|| bad("not two tokens separated by a space".into()))?;
            let lid = vocab.id(l).ok_or_else(|| bad(format!("{l:?} is not in the vocabulary")))?;
            let rid = vocab.id(r).ok_or_else(|| bad(format!("{r:?} is not in the vocabulary")))?;
            let merged = format!("{l}{r}");
            let mid = vocab.id(&merged).ok_or_else(|| bad(format!("the result {merged:?} is not in the vocabulary")))?;
            // A repeated pair keeps its first (lowest) rank.
            merge_map.entry((lid, rid)).or_insert((rank as u32, mid));
        }
        let token_bytes = decoder::token_bytes_table(&vocab);
        let whole_words = pre_kind.ignores_merges().then(|| {
            let mut m = FxHashMap::default();
            for (id, ty) in vocab.types().iter().enumerate() {
                if matches!(ty, TokenType::Normal) {
                    m.entry(token_bytes[id].to_vec()).or_insert(id as u32);
                }
            }
            m
        });
        let bpe = Bpe::new(byte_ids, merge_map, whole_words);
        let pre = PreTokenizer::new(pre_kind)?;
        let added = AddedTokens::new(&vocab)?;

        let mut eog_ids = vec![];
        for id in [specials.eos_id, specials.eot_id, specials.eom_id].into_iter().flatten() {
            eog_ids.push(id);
        }
        // Chat models end turns with these even where eos names another token (llama.cpp's list).
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>"] {
            if let Some(id) = vocab.id(name) {
                if vocab.token_type(id).is_some_and(TokenType::is_added) {
                    eog_ids.push(id);
                }
            }
        }
        eog_ids.sort_unstable();
        eog_ids.dedup();

        let chat_template = chat_template_source.as_deref().map(ChatTemplate::new).transpose()?;
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                vocab,
                bpe,
                pre,
                added,
                token_bytes,
                bos_id: specials.bos_id,
                eos_id: specials.eos_id,
                pad_id: specials.pad_id,
                add_bos: specials.add_bos,
                add_eos: specials.add_eos,
                eog_ids,
                chat_template,
                chat_template_source,
            }),
        })
    }

    /// Text to ids. `add_special_tokens` prepends BOS / appends EOS where the GGUF asks for it
    /// (`add_bos_token` / `add_eos_token`; both false for Qwen2). `parse_special` matches
    /// CONTROL tokens written in the text (`<|im_start|>`); when false they are encoded as plain
    /// text. USER_DEFINED tokens are always matched (see special.rs).
    pub fn encode(&self, text: &str, add_special_tokens: bool, parse_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let inner = &*self.inner;
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_special_tokens && inner.add_bos {
            if let Some(bos) = inner.bos_id {
                ids.push(bos);
            }
        }
        let mut result = Ok(());
        inner.added.split(text, parse_special, |seg| {
            if result.is_err() {
                return;
            }
            match seg {
                Segment::Token(id) => ids.push(id),
                Segment::Text(run) => result = self.encode_run(run, &mut ids),
            }
        });
        result?;
        if add_special_tokens && inner.add_eos {
            if let Some(eos) = inner.eos_id {
                ids.push(eos);
            }
        }
        Ok(ids)
    }

    fn encode_run(&self, run: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let normalized = if self.inner.pre.kind().normalizes_nfc() {
            normalizer::nfc(run)
        } else {
            std::borrow::Cow::Borrowed(run)
        };
        let bpe = &self.inner.bpe;
        self.inner.pre.split(&normalized, |word| bpe.encode_word(word.as_bytes(), ids))
    }

    /// `encode` over many texts in parallel (rayon), results in input order.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
        parse_special: bool,
    ) -> Result<Vec<Vec<u32>>, TokenizerError> {
        texts.par_iter().map(|t| self.encode(t.as_ref(), add_special_tokens, parse_special)).collect()
    }

    /// The exact bytes `ids` stand for (may be invalid UTF-8, e.g. when cut mid-character).
    pub fn decode_bytes(&self, ids: &[u32], skip_special_tokens: bool) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_bytes_for_decode(id, skip_special_tokens)?);
        }
        Ok(out)
    }

    /// Ids to text. Invalid UTF-8 (ids that end mid-character) becomes U+FFFD, as in HF
    /// `tokenizers`; `decode_bytes` is the lossless form. Each token type decodes as llama.cpp
    /// decodes it (`TokenType::piece`): UNUSED padding slots give no text; CONTROL (and UNKNOWN)
    /// tokens give their text unless `skip_special_tokens`; USER_DEFINED ones always do, as HF
    /// skips only `special` tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        let bytes = self.decode_bytes(ids, skip_special_tokens)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn token_bytes_for_decode(&self, id: u32, skip_special_tokens: bool) -> Result<&[u8], TokenizerError> {
        let inner = &*self.inner;
        let bytes = inner.token_bytes.get(id as usize).ok_or(self.invalid_id(id as u64))?;
        if skip_special_tokens && inner.vocab.token_type(id).map(TokenType::piece) == Some(vocab::Piece::SpecialText) {
            return Ok(&[]);
        }
        Ok(bytes)
    }

    /// A streaming decoder for generation (see `IncrementalDecoder`).
    pub fn decoder(&self, skip_special_tokens: bool) -> IncrementalDecoder {
        IncrementalDecoder::new(self.clone(), skip_special_tokens)
    }

    pub fn invalid_id(&self, id: u64) -> TokenizerError {
        TokenizerError::InvalidId { id, vocab_size: self.vocab_size() }
    }

    /// The vocabulary entry (byte-level form, e.g. "Ġhello") of `id`.
    pub fn id_to_token(&self, id: u32) -> Result<&str, TokenizerError> {
        self.inner.vocab.token(id).ok_or(self.invalid_id(id as u64))
    }
    /// The id of a vocabulary entry in its byte-level form, or `None`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.id(token)
    }
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }
    pub fn token_type(&self, id: u32) -> Result<TokenType, TokenizerError> {
        self.inner.vocab.token_type(id).ok_or(self.invalid_id(id as u64))
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos_id
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos_id
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad_id
    }
    /// Whether `encode(.., add_special_tokens=true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }
    /// Ids that end generation: eos, eot/eom when the GGUF names them, and the chat end markers
    /// present in the vocabulary (`<|im_end|>`, `<|endoftext|>`, ...). Sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.inner.eog_ids
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.inner.eog_ids.binary_search(&id).is_ok()
    }
    /// Whether `id` is a CONTROL token (the original tokenizer's special tokens).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.vocab.token_type(id) == Some(TokenType::Control)
    }
    pub fn pre_tokenizer(&self) -> PreTokenizerKind {
        self.inner.pre.kind()
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template_source.as_deref()
    }

    /// Renders the GGUF's chat template for `messages` (JSON objects with at least `role`;
    /// `content`, `tool_calls`, ... as the template expects). `tools`: a JSON list of function
    /// schemas. The result is text; encode it with `parse_special = true`.
    pub fn apply_chat_template(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tools: Option<&Json>,
    ) -> Result<String, TokenizerError> {
        let template = self.inner.chat_template.as_ref().ok_or(TokenizerError::NoChatTemplate)?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.vocab.token(i)).map(str::to_string);
        let tokens = TemplateTokens {
            bos_token: name(self.inner.bos_id),
            eos_token: name(self.inner.eos_id),
            pad_token: name(self.inner.pad_id),
        };
        template.render(messages, add_generation_prompt, tools, &tokens)
    }

    /// `apply_chat_template` for plain role/content messages.
    pub fn apply_chat_template_messages(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let json: Vec<Json> = messages.iter().map(ChatMessage::to_json).collect();
        self.apply_chat_template(&json, add_generation_prompt, None)
    }
}

struct Specials {
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    eot_id: Option<u32>,
    eom_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

fn string_array(file: &GgufFile, key: &'static str) -> Result<Option<Vec<String>>, TokenizerError> {
    let Some(items) = file.get_array(key)? else { return Ok(None) };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().map(str::to_string).ok_or_else(|| TokenizerError::InvalidMetadata {
                key,
                reason: format!("entry {i} is a {}, not a string", v.value_type().name()),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests;
