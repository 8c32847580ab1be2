//! `ferrite.Generator`: batched generation and streaming over a `Model` and a `Tokenizer`.
//!
//! The loop itself is `crate::generate::BatchDecode`; this module turns Python prompts into token
//! ids, steps the loop with the GIL released (one `forward` per step, so Ctrl-C is seen between
//! steps), drives the optional progress bar, and wraps results.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::model::PyModel;
use super::sampling::token_id;
use super::tokenizer::PyTokenizer;
use crate::generate::{BatchDecode, GenerateError, GenerateOptions, Generation, Piece};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGenerator>()?;
    m.add_class::<PyGenerationResult>()?;
    m.add_class::<PyTimings>()?;
    m.add_class::<PyTextStream>()?;
    Ok(())
}

/// Wall-clock timings of one generation. In a batch, steps are shared: ``prefill_s`` is the whole
/// batch's prefill and ``decode_s`` runs from the end of prefill until this sequence finished, so
/// the rates are this sequence's own throughput. ``decode_tokens`` counts the tokens fed through
/// decode steps (every generated token but the last, which is never fed back).
#[pyclass(name = "Timings", module = "ferrite", frozen, get_all)]
#[derive(Clone)]
pub struct PyTimings {
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub decode_tok_s: f64,
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 }
}

#[pymethods]
impl PyTimings {
    /// The timings as a plain dict (for JSON).
    ///
    /// >>> result.timings.as_dict()["decode_tok_s"]
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("prefill_tokens", self.prefill_tokens)?;
        d.set_item("prefill_s", self.prefill_s)?;
        d.set_item("prefill_tok_s", self.prefill_tok_s)?;
        d.set_item("decode_tokens", self.decode_tokens)?;
        d.set_item("decode_s", self.decode_s)?;
        d.set_item("decode_tok_s", self.decode_tok_s)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Timings(prefill {} tok in {:.3} s = {:.1} tok/s, decode {} tok in {:.3} s = {:.1} tok/s)",
            self.prefill_tokens, self.prefill_s, self.prefill_tok_s, self.decode_tokens, self.decode_s, self.decode_tok_s
        )
    }
}

/// One finished generation. ``finish_reason`` is ``"eos"`` (the tokenizer's end-of-generation
/// token), ``"stop"`` (a stop string or stop token id) or ``"length"`` (``max_tokens`` or the
/// context length). ``token_ids`` includes the token that ended it; ``text`` excludes that
/// token's text and any stop string. ``seed`` is the seed actually used.
#[pyclass(name = "GenerationResult", module = "ferrite", frozen, get_all)]
pub struct PyGenerationResult {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_token_ids: Vec<u32>,
    pub finish_reason: &'static str,
    pub timings: Py<PyTimings>,
    pub seed: u64,
}

#[pymethods]
impl PyGenerationResult {
    fn __repr__(&self) -> String {
        let mut preview: String = self.text.chars().take(60).collect();
        if preview.len() < self.text.len() {
            preview.push('…');
        }
        format!(
            "GenerationResult(text={:?}, {} tokens, finish_reason={:?})",
            preview,
            self.token_ids.len(),
            self.finish_reason
        )
    }
}

fn wrap_result(py: Python<'_>, g: Generation, seed: u64) -> PyResult<PyGenerationResult> {
    let t = g.timings;
    let timings = PyTimings {
        prefill_tokens: t.prefill_tokens,
        prefill_s: t.prefill_s,
        prefill_tok_s: rate(t.prefill_tokens, t.prefill_s),
        decode_tokens: t.decode_tokens,
        decode_s: t.decode_s,
        decode_tok_s: rate(t.decode_tokens, t.decode_s),
    };
    Ok(PyGenerationResult {
        text: g.text,
        token_ids: g.token_ids,
        prompt_token_ids: g.prompt_token_ids,
        finish_reason: g.finish_reason.as_str(),
        timings: Py::new(py, timings)?,
        seed,
    })
}

/// Renders one conversation (a list of ``{"role", "content"}`` dicts) with the model's chat
/// template and a generation prompt.
fn render_chat(py: Python<'_>, tok: &Tokenizer, messages: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    let dumped: String = py.import("json")?.call_method1("dumps", (messages,))?.extract().map_err(|_| {
        PyTypeError::new_err("chat messages must be JSON-serializable dicts with \"role\" and \"content\"")
    })?;
    let json: Vec<serde_json::Value> = serde_json::from_str(&dumped)
        .map_err(|e| PyTypeError::new_err(format!("chat messages must be a list of dicts: {e}")))?;
    for (i, m) in json.iter().enumerate() {
        if !m.is_object() || m.get("role").and_then(|r| r.as_str()).is_none() {
            return Err(PyTypeError::new_err(format!("chat message {i} must be a dict with a string \"role\"")));
        }
    }
    let text = py.detach(|| tok.apply_chat_template(&json, true, None))?;
    Ok(py.detach(|| tok.encode(&text, true, true))?)
}

/// One prompt: a str (raw text), a list of message dicts (a conversation), or a list of ints.
fn one_prompt(py: Python<'_>, tok: &Tokenizer, vocab_size: usize, p: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(s) = p.cast::<PyString>() {
        let text: String = s.extract()?;
        return Ok(py.detach(|| tok.encode(&text, true, true))?);
    }
    if p.is_instance_of::<PyList>() || p.is_instance_of::<PyTuple>() {
        let first = p.get_item(0).ok();
        match first {
            Some(f) if f.is_instance_of::<PyDict>() => return render_chat(py, tok, p),
            Some(_) => {
                let ids: Vec<i64> = p.extract().map_err(|_| {
                    PyTypeError::new_err("a prompt list must hold message dicts or token ids (ints)")
                })?;
                return ids.into_iter().map(|t| token_id(t, vocab_size)).collect();
            }
            None => return Err(PyValueError::new_err("prompt is an empty list")),
        }
    }
    Err(PyTypeError::new_err(format!(
        "a prompt must be a str, a list of chat message dicts, or a list of token ids, not {}",
        p.get_type().name()?
    )))
}

/// The prompts of a call, and whether the call was for a list (so it returns a list).
fn parse_prompts(py: Python<'_>, tok: &Tokenizer, vocab_size: usize, prompt: &Bound<'_, PyAny>) -> PyResult<(Vec<Vec<u32>>, bool)> {
    let is_list = prompt.is_instance_of::<PyList>() || prompt.is_instance_of::<PyTuple>();
    if !is_list {
        return Ok((vec![one_prompt(py, tok, vocab_size, prompt)?], false));
    }
    let first = prompt
        .get_item(0)
        .map_err(|_| PyValueError::new_err("no prompts given (empty list)"))?;
    // A list of dicts is one conversation and a list of ints one tokenized prompt; a list of
    // str, conversations or token lists is a batch.
    if first.is_instance_of::<PyDict>() || first.extract::<i64>().is_ok() {
        return Ok((vec![one_prompt(py, tok, vocab_size, prompt)?], false));
    }
    let mut out = Vec::new();
    for p in prompt.try_iter()? {
        out.push(one_prompt(py, tok, vocab_size, &p?)?);
    }
    Ok((out, true))
}

fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.as_secs().wrapping_mul(1_000_000_007) ^ now.subsec_nanos() as u64
}

/// Everything a `generate`/`stream` call shares, checked.
struct CallOptions {
    options: GenerateOptions,
    seed: u64,
}

#[allow(clippy::too_many_arguments)]
fn call_options(
    tok: &Tokenizer,
    max_batch: usize,
    vocab_size: usize,
    max_tokens: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    seed: Option<u64>,
    stop: Option<&Bound<'_, PyAny>>,
    stop_token_ids: Vec<i64>,
) -> PyResult<CallOptions> {
    let seed = seed.unwrap_or_else(clock_seed);
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        seed,
    };
    sampling.validate()?;
    let stop_strings: Vec<String> = match stop {
        None => Vec::new(),
        Some(s) if s.is_instance_of::<PyString>() => vec![s.extract()?],
        Some(s) => s.extract().map_err(|_| PyTypeError::new_err("stop must be a str or a list of str"))?,
    };
    let stop_token_ids = stop_token_ids.into_iter().map(|t| token_id(t, vocab_size)).collect::<PyResult<Vec<u32>>>()?;
    Ok(CallOptions {
        options: GenerateOptions {
            sampling,
            max_tokens,
            stop_strings,
            stop_token_ids,
            eog_token_ids: tok.eog_ids().to_vec(),
            max_batch,
        },
        seed,
    })
}

/// A progress bar over finished sequences: tqdm when installed, else one stderr line.
struct Progress<'py> {
    bar: Option<Bound<'py, PyAny>>,
    total: usize,
    shown_finished: usize,
    started: std::time::Instant,
    last_line: std::time::Instant,
}

impl<'py> Progress<'py> {
    fn new(py: Python<'py>, total: usize) -> Self {
        let bar = py.import("tqdm.auto").and_then(|m| {
            let kwargs = PyDict::new(py);
            kwargs.set_item("total", total)?;
            kwargs.set_item("desc", "generate")?;
            kwargs.set_item("unit", "seq")?;
            m.getattr("tqdm")?.call((), Some(&kwargs))
        });
        let now = std::time::Instant::now();
        Progress { bar: bar.ok(), total, shown_finished: 0, started: now, last_line: now }
    }

    fn update(&mut self, finished: usize, generated: usize) -> PyResult<()> {
        let rate = generated as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            if finished > self.shown_finished {
                bar.call_method1("update", (finished - self.shown_finished,))?;
            }
            bar.call_method1("set_postfix_str", (format!("{generated} tok, {rate:.1} tok/s"),))?;
        } else if self.last_line.elapsed().as_secs_f64() > 0.2 || finished == self.total {
            self.last_line = std::time::Instant::now();
            eprint!("\rgenerate: {finished}/{} sequences, {generated} tokens, {rate:.1} tok/s", self.total);
            if finished == self.total {
                eprintln!();
            }
        }
        self.shown_finished = finished;
        Ok(())
    }

    fn close(&self) -> PyResult<()> {
        if let Some(bar) = &self.bar {
            bar.call_method0("close")?;
        }
        Ok(())
    }
}

/// Text generation with a ``Model`` and its ``Tokenizer``.
///
/// ``generate`` takes a prompt in any of these forms and returns a ``GenerationResult`` (or a
/// list of them, in order, for a list of prompts):
///
/// - a str: raw text, encoded as is (special tokens written in it are parsed);
/// - a list of ``{"role", "content"}`` dicts: one conversation, rendered with the model's chat
///   template and a generation prompt;
/// - a list of ints: token ids;
/// - a list of any of the above: a batch, decoded together (one ``forward`` per step for all
///   sequences still running; finished ones leave the batch and free their KV cache).
///
/// Sampling applies penalties, then temperature, top-k, top-p and min-p, then a seeded draw
/// (``temperature=0`` is greedy). Defaults are llama.cpp's. Every prompt of a call uses the same
/// ``seed``, so a prompt gets the same tokens in a batch as alone; ``seed=None`` takes one from the
/// clock (reported as ``result.seed``). Generation stops at the tokenizer's end-of-generation
/// tokens, ``stop_token_ids``, ``stop`` strings, or after ``max_tokens`` new tokens.
///
/// >>> import ferrite
/// >>> path = ferrite.fetch_test_model()
/// >>> gen = ferrite.Generator(ferrite.Model.load(path), ferrite.Tokenizer.from_gguf(path))
/// >>> r = gen.generate([{"role": "user", "content": "Say hi"}], max_tokens=16, temperature=0)
/// >>> r.finish_reason, r.text
/// ('eos', 'Hi! How can I assist you today?')
/// >>> for piece in gen.stream("def fib(n):", max_tokens=32, temperature=0):
/// ...     print(piece, end="", flush=True)
#[pyclass(name = "Generator", module = "ferrite", frozen)]
pub struct PyGenerator {
    model: Py<PyModel>,
    tokenizer: Tokenizer,
    vocab_size: usize,
    context_length: usize,
    max_batch: usize,
}

#[pymethods]
impl PyGenerator {
    /// ``max_batch``: sequences decoded together at most (no more than the ``Model``'s own
    /// ``max_batch``, 64 by default); further prompts of a call wait and start as others finish.
    #[new]
    #[pyo3(signature = (model, tokenizer, *, max_batch = 64))]
    fn new(model: Bound<'_, PyModel>, tokenizer: Bound<'_, PyTokenizer>, max_batch: usize) -> PyResult<Self> {
        if max_batch == 0 {
            return Err(PyValueError::new_err("max_batch must be at least 1"));
        }
        let tok = tokenizer.get().tokenizer().clone();
        let (vocab_size, context_length) = model.get().with_model(|m| (m.config().vocab_size, m.config().context_length));
        if tok.vocab_size() > vocab_size {
            return Err(PyValueError::new_err(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab_size}: they are not from the same model",
                tok.vocab_size()
            )));
        }
        Ok(PyGenerator { model: model.unbind(), tokenizer: tok, vocab_size, context_length, max_batch })
    }

    /// The model this generator runs.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    /// Generates from one prompt or a batch; see the class docstring for prompt forms.
    ///
    /// >>> results = gen.generate(["1, 2, 3,", "a, b, c,"], max_tokens=8, temperature=0, progress=True)
    /// >>> [r.text for r in results]
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, stop = None,
        stop_token_ids = Vec::new(), progress = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<u64>,
        stop: Option<&Bound<'py, PyAny>>,
        stop_token_ids: Vec<i64>,
        progress: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let call = call_options(
            &self.tokenizer,
            self.max_batch,
            self.vocab_size,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop,
            stop_token_ids,
        )?;
        let (prompts, is_list) = parse_prompts(py, &self.tokenizer, self.vocab_size, prompt)?;
        let mut batch = BatchDecode::new(prompts, call.options, &self.tokenizer, self.vocab_size, self.context_length)?;
        let mut bar = progress.then(|| Progress::new(py, batch.len()));
        let model = self.model.get();
        let tok = &self.tokenizer;
        while !batch.is_done() {
            let stepped = py.detach(|| model.with_model(|m| batch.step(m, tok)));
            let checked = stepped.map_err(PyErr::from).and_then(|_| py.check_signals()).and_then(|_| match &mut bar {
                Some(b) => b.update(batch.finished_count(), batch.generated_count()),
                None => Ok(()),
            });
            if let Err(e) = checked {
                py.detach(|| model.with_model(|m| batch.release(m)));
                if let Some(b) = &bar {
                    let _ = b.close();
                }
                return Err(e);
            }
        }
        if let Some(b) = &bar {
            b.close()?;
        }
        let results = batch
            .into_generations()
            .into_iter()
            .map(|g| Py::new(py, wrap_result(py, g, call.seed)?))
            .collect::<PyResult<Vec<_>>>()?;
        if is_list {
            Ok(PyList::new(py, results)?.into_any())
        } else {
            let only = results.into_iter().next().ok_or_else(|| PyValueError::new_err("no prompt given"))?;
            Ok(only.into_bound(py).into_any())
        }
    }

    /// Streams the generation of ONE prompt as text pieces. Pieces are whole characters and never
    /// contain any part of a stop string (text that could start one is held back until it cannot).
    /// After the iterator is exhausted, its ``result`` is the ``GenerationResult``.
    ///
    /// >>> it = gen.stream([{"role": "user", "content": "Write a haiku"}], max_tokens=64)
    /// >>> text = "".join(it); it.result.finish_reason
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, stop = None,
        stop_token_ids = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        max_tokens: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: Option<u64>,
        stop: Option<&Bound<'_, PyAny>>,
        stop_token_ids: Vec<i64>,
    ) -> PyResult<PyTextStream> {
        let call = call_options(
            &self.tokenizer,
            self.max_batch,
            self.vocab_size,
            max_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
            stop,
            stop_token_ids,
        )?;
        let (prompts, is_list) = parse_prompts(py, &self.tokenizer, self.vocab_size, prompt)?;
        if is_list {
            return Err(PyTypeError::new_err(
                "stream() takes one prompt (a str, a conversation, or token ids); use generate() for a batch",
            ));
        }
        let batch = BatchDecode::new(prompts, call.options, &self.tokenizer, self.vocab_size, self.context_length)?;
        Ok(PyTextStream {
            model: self.model.clone_ref(py),
            tokenizer: self.tokenizer.clone(),
            batch: Some(batch),
            pending: VecDeque::new(),
            result: None,
            seed: call.seed,
        })
    }

    fn __repr__(&self) -> String {
        let device = self.model.get().with_model(|m| m.device());
        format!("Generator(device={device:?}, vocab_size={})", self.vocab_size)
    }
}

/// The iterator ``Generator.stream`` returns: yields text pieces; ``result`` is the
/// ``GenerationResult`` once it is exhausted (``None`` before). Abandoning it early frees the
/// sequence's KV cache.
#[pyclass(name = "TextStream", module = "ferrite")]
pub struct PyTextStream {
    model: Py<PyModel>,
    tokenizer: Tokenizer,
    batch: Option<BatchDecode<Tokenizer>>,
    pending: VecDeque<String>,
    result: Option<Py<PyGenerationResult>>,
    seed: u64,
}

#[pymethods]
impl PyTextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            if let Some(piece) = self.pending.pop_front() {
                return Ok(Some(piece));
            }
            let Some(batch) = self.batch.as_mut() else {
                return Ok(None);
            };
            if batch.is_done() {
                let Some(batch) = self.batch.take() else { return Ok(None) };
                if let Some(g) = batch.into_generations().into_iter().next() {
                    self.result = Some(Py::new(py, wrap_result(py, g, self.seed)?)?);
                }
                return Ok(None);
            }
            let model = self.model.get();
            let tok = &self.tokenizer;
            let stepped: Result<Vec<Piece>, GenerateError> = py.detach(|| model.with_model(|m| batch.step(m, tok)));
            match stepped.map_err(PyErr::from).and_then(|p| py.check_signals().map(|_| p)) {
                Ok(pieces) => self.pending.extend(pieces.into_iter().map(|(_, text)| text)),
                Err(e) => {
                    py.detach(|| model.with_model(|m| batch.release(m)));
                    self.batch = None;
                    return Err(e);
                }
            }
        }
    }

    /// The ``GenerationResult``, once the stream is exhausted; ``None`` before.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<PyGenerationResult>> {
        self.result.as_ref().map(|r| r.clone_ref(py))
    }

    /// Stops generating and frees the KV cache (also done when the iterator is dropped).
    fn close(&mut self, py: Python<'_>) {
        if let Some(mut batch) = self.batch.take() {
            let model = self.model.get();
            py.detach(|| model.with_model(|m| batch.release(m)));
        }
    }
}

impl Drop for PyTextStream {
    fn drop(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            self.model.get().with_model(|m| batch.release(m));
        }
    }
}
