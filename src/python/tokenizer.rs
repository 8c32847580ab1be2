//! `Tokenizer` and `IncrementalDecoder` for Python.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::errors::raise;
use super::gguf::PyGgufFile;
use crate::gguf::GgufFile;
use crate::tokenizer::{IncrementalDecoder, Tokenizer, TokenizerError};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyIncrementalDecoder>()?;
    Ok(())
}

/// The GGUF's own byte-level BPE tokenizer (vocabulary, merges, special tokens, chat template).
///
/// >>> import ferrite
/// >>> tok = ferrite.Tokenizer.from_gguf(ferrite.fetch_test_model())
/// >>> tok.decode(tok.encode("Hello, world!"))
/// 'Hello, world!'
#[pyclass(name = "Tokenizer", module = "ferrite", frozen)]
pub struct PyTokenizer {
    tokenizer: Tokenizer,
}

impl PyTokenizer {
    pub fn new(tokenizer: Tokenizer) -> PyTokenizer {
        PyTokenizer { tokenizer }
    }
    /// The Rust tokenizer (cheap to clone), for other bindings such as the generator.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// A Python int as a token id; anything outside u32 is an invalid id named in the error.
fn to_id(tok: &Tokenizer, id: i64) -> Result<u32, TokenizerError> {
    u32::try_from(id).map_err(|_| TokenizerError::InvalidId { id: id as u64, vocab_size: tok.vocab_size() })
        .and_then(|id| if (id as usize) < tok.vocab_size() { Ok(id) } else { Err(tok.invalid_id(id as u64)) })
}

fn to_ids(tok: &Tokenizer, ids: &[i64]) -> PyResult<Vec<u32>> {
    ids.iter()
        .map(|&id| {
            to_id(tok, id).map_err(|e| match e {
                // Negative ids would print as huge unsigned values; name them as given.
                TokenizerError::InvalidId { .. } => raise(
                    "InvalidTokenError",
                    format!("token id {id} is out of range (vocabulary size {})", tok.vocab_size()),
                ),
                other => other.into(),
            })
        })
        .collect()
}

fn py_opt(id: Option<u32>) -> String {
    id.map_or_else(|| "None".to_string(), |i| i.to_string())
}

fn to_json(py: Python<'_>, value: &Bound<'_, PyAny>, what: &str) -> PyResult<serde_json::Value> {
    let dumped = py
        .import("json")?
        .call_method1("dumps", (value,))
        .map_err(|e| raise("TokenizerError", format!("{what} must be JSON-serializable (dicts, lists, str, numbers): {e}")))?;
    let text: String = dumped.extract()?;
    serde_json::from_str(&text).map_err(|e| raise("TokenizerError", format!("{what}: {e}")))
}

#[pymethods]
impl PyTokenizer {
    /// Builds the tokenizer from a GGUF file: a path (str or os.PathLike) or an open
    /// `ferrite.GgufFile`. Raises TokenizerError for a tokenizer ferrite does not implement
    /// (non-"gpt2" model, unknown `tokenizer.ggml.pre`).
    ///
    /// >>> tok = ferrite.Tokenizer.from_gguf("model.gguf")
    /// >>> tok = ferrite.Tokenizer.from_gguf(ferrite.GgufFile("model.gguf"))
    #[staticmethod]
    fn from_gguf(py: Python<'_>, source: &Bound<'_, PyAny>) -> PyResult<PyTokenizer> {
        let file: Arc<GgufFile> = if let Ok(g) = source.cast::<PyGgufFile>() {
            g.get().file()?
        } else {
            let path: PathBuf = source.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err(format!(
                    "Tokenizer.from_gguf takes a path or a ferrite.GgufFile, not {}",
                    source.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
            Arc::new(py.detach(|| GgufFile::open(&path))?)
        };
        let tokenizer = py
            .detach(|| Tokenizer::from_gguf(&file))
            .map_err(|e| super::gguf::naming_file(py, file.path(), e.into()))?;
        Ok(PyTokenizer { tokenizer })
    }

    /// Text to token ids. Defaults match HF/transformers' `encode`: special tokens written in
    /// the text (`<|im_start|>`) are parsed (`parse_special=False` encodes them as plain text);
    /// `add_special_tokens` adds BOS/EOS only where the GGUF asks (never for Qwen2).
    ///
    /// >>> tok.encode("<|im_start|>user\nhi")
    /// [151644, 872, 198, 6023]
    #[pyo3(signature = (text, add_special_tokens = true, parse_special = true))]
    fn encode(&self, py: Python<'_>, text: String, add_special_tokens: bool, parse_special: bool) -> PyResult<Vec<u32>> {
        Ok(py.detach(|| self.tokenizer.encode(&text, add_special_tokens, parse_special))?)
    }

    /// `encode` for many texts, in parallel on all cores with the GIL released.
    ///
    /// >>> tok.encode_batch(["hello", "world"])
    /// [[14990], [14615]]
    #[pyo3(signature = (texts, add_special_tokens = true, parse_special = true))]
    fn encode_batch(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        add_special_tokens: bool,
        parse_special: bool,
    ) -> PyResult<Vec<Vec<u32>>> {
        Ok(py.detach(|| self.tokenizer.encode_batch(&texts, add_special_tokens, parse_special))?)
    }

    /// Token ids to text. Ids that end mid-character decode to U+FFFD there, as in HF
    /// `tokenizers` (use `decode_bytes` for the exact bytes). Each GGUF token type decodes as
    /// llama.cpp decodes it: UNUSED padding slots (`[PAD151665]`) give no text; CONTROL tokens
    /// such as `<|im_end|>` give their text unless `skip_special_tokens`; USER_DEFINED ones
    /// always do. An id outside the vocabulary raises TokenizerError.
    ///
    /// >>> tok.decode([151644, 872, 198, 6023])
    /// '<|im_start|>user\nhi'
    /// >>> tok.decode([151644, 872, 198, 6023], skip_special_tokens=True)
    /// 'user\nhi'
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode(&self, py: Python<'_>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let ids = to_ids(&self.tokenizer, &ids)?;
        Ok(py.detach(|| self.tokenizer.decode(&ids, skip_special_tokens))?)
    }

    /// The exact bytes the ids stand for (lossless, may be invalid UTF-8).
    ///
    /// >>> tok.decode_bytes(tok.encode("é")[:1])
    /// b'\xc3\xa9'
    #[pyo3(signature = (ids, skip_special_tokens = false))]
    fn decode_bytes<'py>(&self, py: Python<'py>, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<Bound<'py, PyBytes>> {
        let ids = to_ids(&self.tokenizer, &ids)?;
        let bytes = self.tokenizer.decode_bytes(&ids, skip_special_tokens)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// The vocabulary entry for an id, in its byte-level form (a space is "Ġ").
    ///
    /// >>> tok.id_to_token(14990)
    /// 'hello'
    fn id_to_token(&self, id: i64) -> PyResult<String> {
        let id = to_ids(&self.tokenizer, &[id])?[0];
        Ok(self.tokenizer.id_to_token(id)?.to_string())
    }

    /// The id of a vocabulary entry (byte-level form), or None.
    ///
    /// >>> tok.token_to_id("<|im_end|>")
    /// 151645
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Whether the id is a special (CONTROL) token, e.g. `<|im_end|>`.
    ///
    /// >>> tok.is_special(151645)
    /// True
    fn is_special(&self, id: i64) -> PyResult<bool> {
        let id = to_ids(&self.tokenizer, &[id])?[0];
        Ok(self.tokenizer.is_special(id))
    }

    /// Number of ids, padding slots included (151936 for Qwen2.5).
    ///
    /// >>> tok.vocab_size
    /// 151936
    #[getter]
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn __len__(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// Beginning-of-sequence id, or None. `>>> tok.bos_id` -> 151643
    #[getter]
    fn bos_id(&self) -> Option<u32> {
        self.tokenizer.bos_id()
    }

    /// End-of-sequence id, or None. `>>> tok.eos_id` -> 151645
    #[getter]
    fn eos_id(&self) -> Option<u32> {
        self.tokenizer.eos_id()
    }

    /// Padding id, or None. `>>> tok.pad_id` -> 151643
    #[getter]
    fn pad_id(&self) -> Option<u32> {
        self.tokenizer.pad_id()
    }

    /// Ids that end generation (eos, eot/eom, `<|im_end|>`, `<|endoftext|>` ...), sorted.
    ///
    /// >>> tok.eog_ids
    /// [151643, 151645]
    #[getter]
    fn eog_ids(&self) -> Vec<u32> {
        self.tokenizer.eog_ids().to_vec()
    }

    /// Whether `encode(add_special_tokens=True)` prepends BOS (`tokenizer.ggml.add_bos_token`).
    #[getter]
    fn add_bos(&self) -> bool {
        self.tokenizer.add_bos()
    }

    /// The GGUF's `tokenizer.chat_template` source, or None.
    #[getter]
    fn chat_template(&self) -> Option<String> {
        self.tokenizer.chat_template().map(str::to_string)
    }

    /// The pre-tokenizer in use ("qwen2", "llama-bpe" or "gpt2").
    #[getter]
    fn pre_tokenizer(&self) -> &'static str {
        match self.tokenizer.pre_tokenizer() {
            crate::tokenizer::PreTokenizerKind::Qwen2 => "qwen2",
            crate::tokenizer::PreTokenizerKind::Llama3 => "llama-bpe",
            crate::tokenizer::PreTokenizerKind::Gpt2 => "gpt2",
        }
    }

    /// Renders the GGUF's chat template like transformers' `apply_chat_template(tokenize=False)`.
    /// `messages`: list of dicts (`role`, `content`, optionally `tool_calls`); `tools`: list of
    /// JSON-schema dicts. Encode the result with `encode(text)` (special tokens parsed).
    ///
    /// >>> tok.apply_chat_template([{"role": "user", "content": "hi"}])
    /// '<|im_start|>system\nYou are Qwen, ...<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
    #[pyo3(signature = (messages, add_generation_prompt = true, tools = None))]
    fn apply_chat_template(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        add_generation_prompt: bool,
        tools: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let messages = match to_json(py, messages, "messages")? {
            serde_json::Value::Array(items) => items,
            other => return Err(raise("TokenizerError", format!("messages must be a list of dicts, got {other}"))),
        };
        let tools = tools.filter(|t| !t.is_none()).map(|t| to_json(py, t, "tools")).transpose()?;
        Ok(py.detach(|| self.tokenizer.apply_chat_template(&messages, add_generation_prompt, tools.as_ref()))?)
    }

    /// A streaming decoder: `push(id)` returns only complete characters, `flush()` the rest.
    ///
    /// >>> d = tok.decoder()
    /// >>> "".join(d.push(i) for i in tok.encode("naïve 🤖")) + d.flush()
    /// 'naïve 🤖'
    #[pyo3(signature = (skip_special_tokens = false))]
    fn decoder(&self, skip_special_tokens: bool) -> PyIncrementalDecoder {
        PyIncrementalDecoder { decoder: self.tokenizer.decoder(skip_special_tokens) }
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(vocab_size={}, pre={:?}, bos_id={}, eos_id={}, eog_ids={:?}, chat_template={})",
            self.tokenizer.vocab_size(),
            self.pre_tokenizer(),
            py_opt(self.tokenizer.bos_id()),
            py_opt(self.tokenizer.eos_id()),
            self.tokenizer.eog_ids(),
            if self.tokenizer.chat_template().is_some() { "True" } else { "False" },
        )
    }
}

/// Streams text out of generated ids without ever splitting a UTF-8 character.
///
/// >>> d = tok.decoder()
/// >>> [d.push(i) for i in tok.encode("€")] + [d.flush()]
/// ['€', '']
#[pyclass(name = "IncrementalDecoder", module = "ferrite")]
pub struct PyIncrementalDecoder {
    decoder: IncrementalDecoder,
}

#[pymethods]
impl PyIncrementalDecoder {
    /// Adds one id; returns the newly completed text (may be "" while a character is partial).
    ///
    /// >>> d.push(151645)
    /// '<|im_end|>'
    fn push(&mut self, id: i64) -> PyResult<String> {
        let id = to_ids(self.decoder_tokenizer(), &[id])?[0];
        Ok(self.decoder.push(id)?)
    }

    /// Ends the stream; a trailing partial character becomes U+FFFD. The decoder can be reused.
    ///
    /// >>> d.flush()
    /// ''
    fn flush(&mut self) -> String {
        self.decoder.flush()
    }

    /// Bytes held back waiting for the rest of a character.
    ///
    /// >>> d.pending
    /// b''
    #[getter]
    fn pending<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.decoder.pending_bytes())
    }

    fn __repr__(&self) -> String {
        format!("IncrementalDecoder(pending_bytes={})", self.decoder.pending_bytes().len())
    }
}

impl PyIncrementalDecoder {
    fn decoder_tokenizer(&self) -> &Tokenizer {
        self.decoder.tokenizer()
    }
}
