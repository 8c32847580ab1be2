//! `ferrite.Generator`: generate from one prompt or a batch, or stream one, over the model's
//! engine. A thin layer: it checks every prompt first, submits them (at most `max_batch` in
//! flight), and waits on them with the GIL released, driving the engine when no other thread does.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::Instant;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use super::engine::{prompt_ids, tools_json, CallArgs, PyEngine, PyRequest, PyRequestOutput};
use super::model::PyModel;
use super::results::PyGenerationResult;
use super::tokenizer::PyTokenizer;
use crate::engine::check_request;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGenerator>()?;
    m.add_class::<PyTextStream>()?;
    Ok(())
}

/// The prompts of a call, and whether the call was for a list (so it returns a list).
fn parse_prompts(py: Python<'_>, engine: &PyEngine, prompt: &Bound<'_, PyAny>, tools: Option<&serde_json::Value>) -> PyResult<(Vec<Vec<u32>>, bool)> {
    let (tok, vocab) = (engine.tok(), engine.vocab_size());
    let is_list = prompt.is_instance_of::<PyList>() || prompt.is_instance_of::<PyTuple>();
    if !is_list {
        return Ok((vec![prompt_ids(py, tok, vocab, prompt, tools)?], false));
    }
    let first = prompt.get_item(0).map_err(|_| PyValueError::new_err("no prompts given (empty list)"))?;
    // A list of dicts is one conversation and a list of ints one tokenized prompt; a list of
    // str, conversations or token lists is a batch.
    if first.is_instance_of::<PyDict>() || first.extract::<i64>().is_ok() {
        return Ok((vec![prompt_ids(py, tok, vocab, prompt, tools)?], false));
    }
    let mut out = Vec::new();
    for p in prompt.try_iter()? {
        out.push(prompt_ids(py, tok, vocab, &p?, tools)?);
    }
    Ok((out, true))
}

/// Progress of a batch: tqdm when installed, else a plain line on stderr (redrawn in place only
/// on a terminal). Counts finished sequences and generated tokens from the first step; the rate
/// is over the time since the first token.
struct Progress<'py> {
    bar: Option<Bound<'py, PyAny>>,
    total: usize,
    shown_finished: usize,
    /// When the first token arrived, and how many had by then.
    first_token: Option<(Instant, usize)>,
    last_line: Instant,
    terminal: bool,
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
        let now = Instant::now();
        Progress { bar: bar.ok(), total, shown_finished: 0, first_token: None, last_line: now, terminal: std::io::stderr().is_terminal() }
    }

    fn update(&mut self, finished: usize, generated: usize) -> PyResult<()> {
        if generated > 0 && self.first_token.is_none() {
            self.first_token = Some((Instant::now(), generated));
        }
        let rate = match self.first_token {
            Some((t, at_first)) if t.elapsed().as_secs_f64() > 0.05 => (generated - at_first) as f64 / t.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        if let Some(bar) = &self.bar {
            if finished > self.shown_finished {
                bar.call_method1("update", (finished - self.shown_finished,))?;
            }
            if self.last_line.elapsed().as_secs_f64() > 0.1 || finished == self.total {
                self.last_line = Instant::now();
                bar.call_method1("set_postfix_str", (format!("{generated} tok, {rate:.1} tok/s"),))?;
            }
        } else {
            let every = if self.terminal { 0.2 } else { 5.0 };
            let done = finished == self.total;
            if self.last_line.elapsed().as_secs_f64() > every || (done && finished > self.shown_finished) {
                self.last_line = Instant::now();
                let line = format!("generate: {finished}/{} sequences, {generated} tokens, {rate:.1} tok/s", self.total);
                if self.terminal {
                    eprint!("\r{line}");
                    if done {
                        eprintln!();
                    }
                } else {
                    eprintln!("{line}");
                }
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

/// Text generation with a ``Model`` and its ``Tokenizer``, over the model's engine.
///
/// ``generate`` takes a prompt in any of these forms and returns a ``GenerationResult`` (or a
/// list of them, in order, for a list of prompts):
///
/// - a str: raw text, encoded as is (special tokens written in it are parsed);
/// - a list of ``{"role", "content"}`` dicts: one conversation, rendered with the model's chat
///   template and a generation prompt;
/// - a list of ints: token ids;
/// - a list of any of the above: a batch, generated together (continuous batching: finished
///   sequences leave at once and waiting ones take their place).
///
/// Sampling applies penalties, then temperature, top-k, top-p and min-p, then a seeded draw
/// (``temperature=0`` is greedy); the draws happen on the model's device. Defaults are
/// llama.cpp's. Every prompt of a call uses the same ``seed``, and a request draws the same
/// tokens alone or in any batch; ``seed=None`` takes one from the clock (reported as
/// ``result.seed``). Generation stops at the tokenizer's end-of-generation tokens (unless
/// ``ignore_eos``), ``stop_token_ids``, ``stop`` strings, or after ``max_tokens`` new tokens.
/// ``logprobs=k`` adds the chosen tokens' log-probabilities (and the k best, for k >= 1).
///
/// >>> import ferrite
/// >>> gen = ferrite.Generator.from_gguf(ferrite.fetch_test_model())
/// >>> r = gen.generate([{"role": "user", "content": "Say hi"}], max_tokens=16, temperature=0)
/// >>> r.finish_reason, r.text
/// ('eos', 'Hi! How can I assist you today?')
/// >>> for piece in gen.stream("def fib(n):", max_tokens=32, temperature=0):
/// ...     print(piece, end="", flush=True)
#[pyclass(name = "Generator", module = "ferrite", frozen)]
pub struct PyGenerator {
    model: Py<PyModel>,
    engine: Py<PyEngine>,
    max_batch: usize,
}

/// The sampling keyword arguments of `generate` and `stream`, collected.
macro_rules! call_args {
    ($max_tokens:expr, $temperature:expr, $top_k:expr, $top_p:expr, $min_p:expr, $rep:expr, $presence:expr,
     $frequency:expr, $seed:expr, $stop:expr, $stop_ids:expr, $logprobs:expr, $ignore_eos:expr) => {
        CallArgs {
            max_tokens: $max_tokens,
            temperature: $temperature,
            top_k: $top_k,
            top_p: $top_p,
            min_p: $min_p,
            repetition_penalty: $rep,
            presence_penalty: $presence,
            frequency_penalty: $frequency,
            seed: $seed,
            stop: $stop,
            stop_token_ids: $stop_ids,
            logprobs: $logprobs,
            ignore_eos: $ignore_eos,
        }
    };
}

impl PyGenerator {
    /// Every prompt of a call as a checked request template and token ids.
    fn prepare(
        &self,
        py: Python<'_>,
        prompt: &Bound<'_, PyAny>,
        args: CallArgs<'_>,
        tools: Option<Bound<'_, PyAny>>,
    ) -> PyResult<(Vec<crate::engine::Request>, bool)> {
        let engine = self.engine.get();
        let template = args.template(engine.vocab_size())?;
        let tools = tools_json(py, tools.as_ref())?;
        let (prompts, is_list) = parse_prompts(py, engine, prompt, tools.as_ref())?;
        let limits = engine.shared().limits();
        let mut reqs = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.into_iter().enumerate() {
            let req = template.request(p, engine.tok());
            // Checked all up front: a bad prompt fails the call before any work starts.
            check_request(&req, &limits).map_err(|e| {
                let err: PyErr = e.into();
                if is_list {
                    let msg = format!("prompt {i}: {}", err.value(py));
                    PyErr::from_type(err.get_type(py), msg)
                } else {
                    err
                }
            })?;
            reqs.push(req);
        }
        Ok((reqs, is_list))
    }
}

#[pymethods]
impl PyGenerator {
    /// ``max_batch``: sequences of this generator's calls running together at most (default:
    /// the model's ``max_batch``; larger is an error); further prompts of a call wait and start
    /// as others finish.
    #[new]
    #[pyo3(signature = (model, tokenizer, *, max_batch = None))]
    fn new(model: Bound<'_, PyModel>, tokenizer: Bound<'_, PyTokenizer>, max_batch: Option<i64>) -> PyResult<Self> {
        let py = model.py();
        let engine = PyEngine::build(model.clone(), tokenizer)?;
        let model_max = engine.shared().limits().max_batch;
        let max_batch = match max_batch {
            None => model_max,
            Some(n) if n < 1 => return Err(PyValueError::new_err(format!("max_batch = {n}: expected at least 1"))),
            Some(n) if n as usize > model_max => {
                return Err(PyValueError::new_err(format!(
                    "max_batch = {n} exceeds the model's max_batch = {model_max} (load the model with a larger max_batch)"
                )))
            }
            Some(n) => n as usize,
        };
        Ok(PyGenerator { model: model.unbind(), engine: Py::new(py, engine)?, max_batch })
    }

    /// Loads a model and its tokenizer from one GGUF file: ``Model.load(path, device=device,
    /// **load_options)`` and ``Tokenizer.from_gguf(path)`` in one call.
    ///
    /// >>> gen = ferrite.Generator.from_gguf("model.gguf")                 # device="auto"
    /// >>> gen = ferrite.Generator.from_gguf("model.gguf", device="cpu", kv_cache_tokens=8192)
    #[staticmethod]
    #[pyo3(signature = (path, *, device = "auto", max_batch = 64, kv_cache_tokens = None, exact_matmul = false,
        max_step_tokens = None, prefix_caching = true, threads = None, kv_cache_dtype = "float32"))]
    #[allow(clippy::too_many_arguments)]
    fn from_gguf(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        device: &str,
        max_batch: i64,
        kv_cache_tokens: Option<i64>,
        exact_matmul: bool,
        max_step_tokens: Option<i64>,
        prefix_caching: bool,
        threads: Option<i64>,
        kv_cache_dtype: &str,
    ) -> PyResult<PyGenerator> {
        let file = super::model::open_file(py, path)?;
        let model = Bound::new(
            py,
            PyModel::load_file(py, file.clone(), device, max_batch, kv_cache_tokens, exact_matmul, max_step_tokens, prefix_caching, threads, kv_cache_dtype)?,
        )?;
        let tok = py.detach(|| crate::tokenizer::Tokenizer::from_gguf(&file))?;
        let tokenizer = Bound::new(py, PyTokenizer::new(tok))?;
        PyGenerator::new(model, tokenizer, None)
    }

    /// The model this generator runs.
    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    /// The engine it submits to (shared with every other user of the model).
    #[getter]
    fn engine(&self, py: Python<'_>) -> Py<PyEngine> {
        self.engine.clone_ref(py)
    }

    #[getter]
    fn tokenizer(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.engine.bind(py).getattr("tokenizer")?.unbind())
    }

    #[getter]
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Generates from one prompt or a batch; see the class docstring for prompt forms.
    ///
    /// >>> results = gen.generate(["1, 2, 3,", "a, b, c,"], max_tokens=8, temperature=0, progress=True)
    /// >>> [r.text for r in results]
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, stop = None,
        stop_token_ids = None, logprobs = None, ignore_eos = false, tools = None, progress = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        max_tokens: i64,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        repetition_penalty: f64,
        presence_penalty: f64,
        frequency_penalty: f64,
        seed: Option<u64>,
        stop: Option<Bound<'py, PyAny>>,
        stop_token_ids: Option<Vec<i64>>,
        logprobs: Option<i64>,
        ignore_eos: bool,
        tools: Option<Bound<'py, PyAny>>,
        progress: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = call_args!(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
            frequency_penalty, seed, stop, stop_token_ids, logprobs, ignore_eos);
        let (reqs, is_list) = self.prepare(py, prompt, args, tools)?;
        let n = reqs.len();
        let engine = self.engine.get();
        let mut queue: VecDeque<(usize, crate::engine::Request)> = reqs.into_iter().enumerate().collect();
        let mut in_flight: Vec<(usize, PyRequest)> = Vec::new();
        let mut results: Vec<Option<PyGenerationResult>> = (0..n).map(|_| None).collect();
        let mut bar = progress.then(|| Progress::new(py, n));
        let mut generated = 0usize;
        let mut finished = 0usize;
        let outcome: PyResult<()> = (|| {
            loop {
                while in_flight.len() < self.max_batch {
                    let Some((i, req)) = queue.pop_front() else { break };
                    in_flight.push((i, engine.submit_request(req)?));
                }
                let Some((_, first)) = in_flight.first() else { break };
                // Wait on the oldest request in flight (driving the engine), then collect what
                // every request got.
                if let Some(out) = first.next_output(py, Some(0.5))? {
                    generated += out.token_ids.len();
                }
                let mut k = 0;
                while k < in_flight.len() {
                    let (i, r) = &in_flight[k];
                    if k > 0 {
                        generated += r.poll_count();
                    }
                    if r.is_finished() {
                        // Outputs not yet taken are in the result; the request can go.
                        results[*i] = Some(r.generation_result()?);
                        in_flight.remove(k);
                        finished += 1;
                    } else {
                        k += 1;
                    }
                }
                if let Some(b) = &mut bar {
                    b.update(finished, generated)?;
                }
            }
            Ok(())
        })();
        if let Some(b) = &bar {
            let _ = b.close();
        }
        if let Err(e) = outcome {
            // Ctrl-C or a failure: stop what this call started, at once.
            for (_, r) in &in_flight {
                r.cancel_now();
            }
            return Err(e);
        }
        let results: Vec<PyGenerationResult> = results.into_iter().map(|r| r.expect("every request finished")).collect();
        if is_list {
            Ok(PyList::new(py, results)?.into_any())
        } else {
            let only = results.into_iter().next().ok_or_else(|| PyValueError::new_err("no prompt given"))?;
            Ok(Bound::new(py, only)?.into_any())
        }
    }

    /// Streams the generation of ONE prompt as text pieces. Pieces are whole characters and never
    /// contain any part of a stop string (text that could start one is held back until it cannot).
    /// After the iterator is exhausted, its ``result`` is the ``GenerationResult``;
    /// ``last_output`` is the ``RequestOutput`` behind the latest piece (with its logprobs).
    ///
    /// >>> it = gen.stream([{"role": "user", "content": "Write a haiku"}], max_tokens=64)
    /// >>> text = "".join(it); it.result.finish_reason
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, stop = None,
        stop_token_ids = None, logprobs = None, ignore_eos = false, tools = None))]
    #[allow(clippy::too_many_arguments)]
    fn stream<'py>(
        &self,
        py: Python<'py>,
        prompt: &Bound<'py, PyAny>,
        max_tokens: i64,
        temperature: f64,
        top_k: i64,
        top_p: f64,
        min_p: f64,
        repetition_penalty: f64,
        presence_penalty: f64,
        frequency_penalty: f64,
        seed: Option<u64>,
        stop: Option<Bound<'py, PyAny>>,
        stop_token_ids: Option<Vec<i64>>,
        logprobs: Option<i64>,
        ignore_eos: bool,
        tools: Option<Bound<'py, PyAny>>,
    ) -> PyResult<PyTextStream> {
        let args = call_args!(max_tokens, temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty,
            frequency_penalty, seed, stop, stop_token_ids, logprobs, ignore_eos);
        let (reqs, is_list) = self.prepare(py, prompt, args, tools)?;
        if is_list {
            return Err(PyTypeError::new_err(
                "stream() takes one prompt (a str, a conversation, or token ids); use generate() for a batch",
            ));
        }
        let req = reqs.into_iter().next().ok_or_else(|| PyValueError::new_err("no prompt given"))?;
        let logprobs = req.logprobs;
        let request = self.engine.get().submit_request(req)?;
        Ok(PyTextStream { request: Some(request), result: None, last: None, logprobs })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Generator(device={:?}, max_batch={})", self.model.get().device_name(py), self.max_batch)
    }
}

/// The iterator ``Generator.stream`` returns: yields text pieces; ``result`` is the
/// ``GenerationResult`` once it is exhausted (``None`` before). Abandoning it early (or
/// ``close()``) cancels the request and frees its KV room.
#[pyclass(name = "TextStream", module = "ferrite")]
pub struct PyTextStream {
    request: Option<PyRequest>,
    result: Option<PyGenerationResult>,
    last: Option<Py<PyRequestOutput>>,
    logprobs: Option<usize>,
}

#[pymethods]
impl PyTextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        loop {
            let Some(req) = self.request.as_ref() else { return Ok(None) };
            match req.next_output(py, None) {
                Ok(Some(out)) => {
                    let text = out.text.clone();
                    self.last = Some(Py::new(py, PyRequestOutput::from_output(out, self.logprobs))?);
                    if !text.is_empty() {
                        return Ok(Some(text));
                    }
                }
                Ok(None) => {
                    self.result = Some(req.generation_result()?);
                    self.request = None;
                    return Ok(None);
                }
                Err(e) => {
                    req.cancel_now();
                    self.request = None;
                    return Err(e);
                }
            }
        }
    }

    /// The ``GenerationResult``, once the stream is exhausted; ``None`` before.
    #[getter]
    fn result(&self) -> Option<PyGenerationResult> {
        self.result.clone()
    }

    /// The ``RequestOutput`` behind the latest piece (its tokens and log-probabilities).
    #[getter]
    fn last_output(&self, py: Python<'_>) -> Option<Py<PyRequestOutput>> {
        self.last.as_ref().map(|o| o.clone_ref(py))
    }

    /// Stops generating and frees the KV room (also done when the iterator is dropped).
    fn close(&mut self) {
        if let Some(req) = self.request.take() {
            req.cancel_now();
        }
    }
}
