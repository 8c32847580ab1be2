//! `ferrite.Engine`, `ferrite.Request`, `ferrite.RequestOutput`: the engine's Python face
//! (docs/ENGINE_API.md), and the prompt and request conversions the Generator shares.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use super::model::PyModel;
use super::results::PyGenerationResult;
use super::sampling::token_id;
use super::tokenizer::PyTokenizer;
use crate::engine::shared::{Next, SharedEngine};
use crate::engine::{EngineStats, Request, RequestOutput};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEngine>()?;
    m.add_class::<PyRequest>()?;
    m.add_class::<PyRequestOutput>()?;
    Ok(())
}

/// One conversation (a list of ``{"role", "content", ...}`` dicts) rendered with the model's
/// chat template and a generation prompt, then encoded.
fn render_chat(py: Python<'_>, tok: &Tokenizer, messages: &Bound<'_, PyAny>, tools: Option<&serde_json::Value>) -> PyResult<Vec<u32>> {
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
    let text = py.detach(|| tok.apply_chat_template(&json, true, tools))?;
    Ok(py.detach(|| tok.encode(&text, true, true))?)
}

/// One prompt: a str (raw text), a list of message dicts (a conversation), or a list of ints.
pub(crate) fn prompt_ids(
    py: Python<'_>,
    tok: &Tokenizer,
    vocab_size: usize,
    p: &Bound<'_, PyAny>,
    tools: Option<&serde_json::Value>,
) -> PyResult<Vec<u32>> {
    if let Ok(s) = p.cast::<PyString>() {
        let text: String = s.extract()?;
        return Ok(py.detach(|| tok.encode(&text, true, true))?);
    }
    if p.is_instance_of::<PyList>() || p.is_instance_of::<PyTuple>() {
        return match p.get_item(0).ok() {
            Some(f) if f.is_instance_of::<PyDict>() => render_chat(py, tok, p, tools),
            Some(_) => {
                let ids: Vec<i64> = p
                    .extract()
                    .map_err(|_| PyTypeError::new_err("a prompt list must hold message dicts or token ids (ints)"))?;
                ids.into_iter().map(|t| token_id(t, vocab_size)).collect()
            }
            None => Err(PyValueError::new_err("prompt is an empty list")),
        };
    }
    Err(PyTypeError::new_err(format!(
        "a prompt must be a str, a list of chat message dicts, or a list of token ids, not {}",
        p.get_type().name()?
    )))
}

/// `tools` for the chat template, as JSON.
pub(crate) fn tools_json(py: Python<'_>, tools: Option<&Bound<'_, PyAny>>) -> PyResult<Option<serde_json::Value>> {
    let Some(t) = tools.filter(|t| !t.is_none()) else { return Ok(None) };
    let dumped: String = py
        .import("json")?
        .call_method1("dumps", (t,))
        .map_err(|e| PyTypeError::new_err(format!("tools must be JSON-serializable: {e}")))?
        .extract()?;
    Ok(Some(serde_json::from_str(&dumped).map_err(|e| PyTypeError::new_err(format!("tools: {e}")))?))
}

fn clock_seed() -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    now.as_secs().wrapping_mul(1_000_000_007) ^ now.subsec_nanos() as u64
}

/// The sampling and stopping arguments every generating call takes, as Python passed them.
pub(crate) struct CallArgs<'py> {
    pub max_tokens: i64,
    pub temperature: f64,
    pub top_k: i64,
    pub top_p: f64,
    pub min_p: f64,
    pub repetition_penalty: f64,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    pub seed: Option<u64>,
    pub stop: Option<Bound<'py, PyAny>>,
    pub stop_token_ids: Option<Vec<i64>>,
    pub logprobs: Option<i64>,
    pub ignore_eos: bool,
}

/// A request template: everything but the prompt, checked.
#[derive(Clone)]
pub(crate) struct Template {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub logprobs: Option<usize>,
    pub ignore_eos: bool,
}

impl CallArgs<'_> {
    pub fn template(&self, vocab_size: usize) -> PyResult<Template> {
        let nonneg = |name: &str, v: i64| {
            usize::try_from(v).map_err(|_| super::errors::raise("SamplingParameterError", format!("{name} = {v} is invalid: expected an integer >= 0")))
        };
        let max_tokens = nonneg("max_tokens", self.max_tokens)?;
        let top_k = nonneg("top_k", self.top_k)?;
        let logprobs = self.logprobs.map(|k| nonneg("logprobs", k)).transpose()?;
        let sampling = SamplingParams {
            temperature: self.temperature as f32,
            top_k,
            top_p: self.top_p as f32,
            min_p: self.min_p as f32,
            repetition_penalty: self.repetition_penalty as f32,
            presence_penalty: self.presence_penalty as f32,
            frequency_penalty: self.frequency_penalty as f32,
            seed: self.seed.unwrap_or_else(clock_seed),
        };
        sampling.validate()?;
        let stop_strings: Vec<String> = match &self.stop {
            None => Vec::new(),
            Some(s) if s.is_none() => Vec::new(),
            Some(s) if s.is_instance_of::<PyString>() => vec![s.extract()?],
            Some(s) => s.extract().map_err(|_| PyTypeError::new_err("stop must be a str or a list of str"))?,
        };
        let stop_token_ids = self
            .stop_token_ids
            .iter()
            .flatten()
            .map(|&t| token_id(t, vocab_size))
            .collect::<PyResult<Vec<u32>>>()?;
        Ok(Template { sampling, max_tokens, stop_strings, stop_token_ids, logprobs, ignore_eos: self.ignore_eos })
    }
}

impl Template {
    pub fn request(&self, prompt: Vec<u32>, tok: &Tokenizer) -> Request {
        Request {
            prompt,
            sampling: self.sampling.clone(),
            max_tokens: self.max_tokens,
            stop_strings: self.stop_strings.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            eog_token_ids: tok.eog_ids().to_vec(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            // Special (control) tokens that are not end-of-generation are left out of the text,
            // as vLLM and HF `generate` do by default: a stray `<|im_start|>` is markup.
            decoder: Box::new(tok.decoder(true)),
        }
    }
}

/// The engine's counters as a dict.
pub(crate) fn stats_dict<'py>(py: Python<'py>, s: &EngineStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("running", s.running)?;
    d.set_item("waiting", s.waiting)?;
    d.set_item("kv_blocks_total", s.kv_blocks_total)?;
    d.set_item("kv_blocks_used", s.kv_blocks_used)?;
    d.set_item("kv_block_tokens", s.kv_block_tokens)?;
    d.set_item("kv_tokens_used", s.kv_blocks_used * s.kv_block_tokens)?;
    d.set_item("steps", s.steps)?;
    d.set_item("last_step_s", s.last_step_s)?;
    d.set_item("step_s_total", s.step_s_total)?;
    d.set_item("prompt_tokens", s.prompt_tokens)?;
    d.set_item("cached_prompt_tokens", s.cached_prompt_tokens)?;
    d.set_item("generated_tokens", s.generated_tokens)?;
    d.set_item("preemptions", s.preemptions)?;
    d.set_item("requests_finished", s.requests_finished)?;
    Ok(d)
}

/// What one engine step produced for one request: the tokens drawn (normally one), the text
/// that became final (whole characters, never part of a stop string), their log-probabilities
/// when asked for, and, on the last output, ``finish_reason`` (``"eos"``, ``"stop"``,
/// ``"length"``, ``"cancelled"`` or ``"error"``, with ``error`` saying why).
///
/// >>> out = req.next()
/// >>> out.token_ids, out.text, out.finish_reason
#[pyclass(name = "RequestOutput", module = "ferrite", frozen, get_all)]
pub struct PyRequestOutput {
    pub request_id: u64,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Option<Vec<f32>>,
    pub top_logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub finish_reason: Option<&'static str>,
    pub error: Option<String>,
}

impl PyRequestOutput {
    pub fn from_output(o: RequestOutput, logprobs: Option<usize>) -> PyRequestOutput {
        PyRequestOutput {
            request_id: o.id,
            logprobs: logprobs.map(|_| o.logprobs),
            top_logprobs: logprobs.filter(|&k| k > 0).map(|_| o.top_logprobs),
            token_ids: o.token_ids,
            text: o.text,
            finish_reason: o.finish.map(|f| f.as_str()),
            error: o.error,
        }
    }
}

#[pymethods]
impl PyRequestOutput {
    fn __repr__(&self) -> String {
        format!(
            "RequestOutput(request_id={}, token_ids={:?}, text={:?}, finish_reason={:?})",
            self.request_id, self.token_ids, self.text, self.finish_reason
        )
    }
}

/// A submitted request. ``next()`` waits for its next output (driving the engine itself when
/// no other thread does), ``poll()`` takes what has arrived without waiting, iterating yields
/// every output until the last; ``result()`` is the whole ``GenerationResult`` once finished.
/// ``cancel()`` stops it and frees its KV room; so does dropping an unfinished request.
///
/// >>> req = engine.submit("The capital of France is", max_tokens=8, temperature=0)
/// >>> "".join(out.text for out in req)
/// ' Paris. It is the largest city'
/// >>> req.result().finish_reason
/// 'length'
#[pyclass(name = "Request", module = "ferrite")]
pub struct PyRequest {
    shared: Arc<SharedEngine>,
    id: u64,
    prompt_token_ids: Vec<u32>,
    seed: u64,
    logprobs: Option<usize>,
}

impl PyRequest {
    pub(crate) fn new(shared: Arc<SharedEngine>, id: u64, prompt_token_ids: Vec<u32>, seed: u64, logprobs: Option<usize>) -> PyRequest {
        PyRequest { shared, id, prompt_token_ids, seed, logprobs }
    }

    /// The next output, waiting at most `timeout` (`None`: as long as it takes) in short slices
    /// with the GIL released, so Ctrl-C and other threads get through.
    pub(crate) fn next_output(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<RequestOutput>> {
        // An infinite (or absurdly long) timeout waits for as long as it takes.
        let deadline = timeout
            .and_then(|t| Duration::try_from_secs_f64(t.max(0.0)).ok())
            .and_then(|d| std::time::Instant::now().checked_add(d));
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(std::time::Instant::now()).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let shared = &self.shared;
            let id = self.id;
            match py.detach(|| shared.next(id, Some(slice))) {
                Next::Output(o) => return Ok(Some(o)),
                Next::Done => return Ok(None),
                Next::Timeout => {
                    py.check_signals()?;
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    pub(crate) fn generation_result(&self) -> PyResult<PyGenerationResult> {
        match self.shared.generation(self.id) {
            Some((g, true)) => Ok(PyGenerationResult::from_generation(g)),
            Some((_, false)) => Err(PyRuntimeError::new_err(format!("request {} has not finished", self.id))),
            None => Err(PyRuntimeError::new_err(format!("request {} is unknown to its engine", self.id))),
        }
    }

    /// Takes the outputs that arrived and returns how many tokens they carried.
    pub(crate) fn poll_count(&self) -> usize {
        self.shared.poll(self.id).0.iter().map(|o| o.token_ids.len()).sum()
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.shared.generation(self.id).is_none_or(|(_, f)| f)
    }

    pub(crate) fn cancel_now(&self) {
        self.shared.cancel(self.id);
    }
}

#[pymethods]
impl PyRequest {
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    #[getter]
    fn prompt_token_ids(&self) -> Vec<u32> {
        self.prompt_token_ids.clone()
    }

    /// The seed of its draws (drawn from the clock when none was given).
    #[getter]
    fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether its last output has been produced.
    #[getter]
    fn finished(&self) -> bool {
        self.is_finished()
    }

    /// The outputs produced since the last ``poll``/``next``, without waiting.
    ///
    /// >>> req.poll()
    fn poll(&self) -> Vec<PyRequestOutput> {
        self.shared.poll(self.id).0.into_iter().map(|o| PyRequestOutput::from_output(o, self.logprobs)).collect()
    }

    /// The next output; ``None`` once every output was taken, or when ``timeout`` seconds pass.
    ///
    /// >>> out = req.next(timeout=5.0)
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyRequestOutput>> {
        if timeout.is_some_and(|t| t.is_nan()) {
            return Err(PyValueError::new_err("timeout must be a number of seconds, not NaN"));
        }
        Ok(self.next_output(py, timeout)?.map(|o| PyRequestOutput::from_output(o, self.logprobs)))
    }

    /// The whole generation once finished (``RuntimeError`` before).
    fn result(&self) -> PyResult<PyGenerationResult> {
        self.generation_result()
    }

    /// Stops the request; its KV room is freed before the next step. Its last output has
    /// ``finish_reason == "cancelled"``.
    fn cancel(&self) {
        self.cancel_now();
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<PyRequestOutput>> {
        self.next(py, None)
    }

    fn __repr__(&self) -> String {
        format!("Request(id={}, prompt_tokens={}, finished={})", self.id, self.prompt_token_ids.len(), self.is_finished())
    }
}

impl Drop for PyRequest {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

/// The generation engine of a ``Model``: requests in, tokens out, every request of every thread
/// batched together (continuous batching over a paged KV cache with prefix reuse; tokens drawn
/// on the model's device). One engine per model, shared by every ``Engine``, ``Generator``,
/// server or Ray actor built on that model.
///
/// >>> engine = ferrite.Engine(model, tokenizer)
/// >>> req = engine.submit([{"role": "user", "content": "Hi!"}], max_tokens=16, temperature=0)
/// >>> req.result() if req.finished else "".join(o.text for o in req)
#[pyclass(name = "Engine", module = "ferrite", frozen)]
pub struct PyEngine {
    model: Py<PyModel>,
    tokenizer: Py<PyTokenizer>,
    shared: Arc<SharedEngine>,
    tok: Tokenizer,
    vocab_size: usize,
}

impl PyEngine {
    pub(crate) fn build(model: Bound<'_, PyModel>, tokenizer: Bound<'_, PyTokenizer>) -> PyResult<PyEngine> {
        let tok = tokenizer.get().tokenizer().clone();
        let shared = model.get().shared();
        let vocab_size = shared.limits().vocab_size;
        if tok.vocab_size() > vocab_size {
            return Err(PyValueError::new_err(format!(
                "the tokenizer has {} tokens but the model's vocabulary has {vocab_size}: they are not from the same model",
                tok.vocab_size()
            )));
        }
        Ok(PyEngine { model: model.unbind(), tokenizer: tokenizer.unbind(), shared, tok, vocab_size })
    }

    pub(crate) fn shared(&self) -> &Arc<SharedEngine> {
        &self.shared
    }

    pub(crate) fn tok(&self) -> &Tokenizer {
        &self.tok
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Submits a checked request.
    pub(crate) fn submit_request(&self, req: Request) -> PyResult<PyRequest> {
        let (prompt, seed, logprobs) = (req.prompt.clone(), req.sampling.seed, req.logprobs);
        let id = self.shared.submit(req)?;
        Ok(PyRequest::new(self.shared.clone(), id, prompt, seed, logprobs))
    }
}

#[pymethods]
impl PyEngine {
    #[new]
    fn new(model: Bound<'_, PyModel>, tokenizer: Bound<'_, PyTokenizer>) -> PyResult<PyEngine> {
        PyEngine::build(model, tokenizer)
    }

    /// Queues one prompt (a str, a list of chat message dicts rendered with the model's chat
    /// template, or a list of token ids) and returns its ``Request``. Everything is checked
    /// here: a bad argument, or a prompt that leaves no room in the context, raises now.
    /// ``logprobs``: ``None``, ``0`` (each chosen token's log-probability) or ``k <= 20`` (also
    /// the k best). ``tools``: function schemas passed to the chat template.
    ///
    /// >>> req = engine.submit("def fib(n):", max_tokens=32, temperature=0.8, seed=1, stop=["\n\n"])
    #[pyo3(signature = (prompt, *, max_tokens = 256, temperature = 0.8, top_k = 40, top_p = 0.95, min_p = 0.05,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = None, stop = None,
        stop_token_ids = None, logprobs = None, ignore_eos = false, tools = None))]
    #[allow(clippy::too_many_arguments)]
    fn submit<'py>(
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
    ) -> PyResult<PyRequest> {
        let args = CallArgs {
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
            logprobs,
            ignore_eos,
        };
        let template = args.template(self.vocab_size)?;
        let tools = tools_json(py, tools.as_ref())?;
        let ids = prompt_ids(py, &self.tok, self.vocab_size, prompt, tools.as_ref())?;
        self.submit_request(template.request(ids, &self.tok))
    }

    /// Runs one step if there is work (the GIL released) and returns the ids of the requests
    /// that got output; ``[]`` when idle. For a server's pump thread; ``Request.next`` steps by
    /// itself.
    fn step(&self, py: Python<'_>) -> Vec<u64> {
        let shared = &self.shared;
        py.detach(|| shared.step())
    }

    /// Waits (the GIL released) until a request is queued or running, or ``timeout`` seconds
    /// pass; returns whether there is work.
    fn wait_for_work(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        if !(timeout >= 0.0 && timeout.is_finite()) {
            return Err(PyValueError::new_err(format!("timeout = {timeout}: expected a finite number of seconds >= 0")));
        }
        let shared = &self.shared;
        // Capped so that the deadline cannot overflow the clock: a billion seconds is forever here.
        let wait = Duration::from_secs_f64(timeout.min(1e9));
        Ok(py.detach(|| shared.wait_for_work(wait)))
    }

    /// Whether any request is queued or running.
    fn has_work(&self) -> bool {
        self.shared.has_work()
    }

    /// Counters as of the last step: ``running``, ``waiting``, ``kv_blocks_total``,
    /// ``kv_blocks_used``, ``kv_block_tokens``, ``kv_tokens_used``, ``steps``, ``last_step_s``,
    /// ``step_s_total``, ``prompt_tokens``, ``cached_prompt_tokens``, ``generated_tokens``,
    /// ``preemptions``, ``requests_finished``.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.shared.stats())
    }

    #[getter]
    fn model(&self, py: Python<'_>) -> Py<PyModel> {
        self.model.clone_ref(py)
    }

    #[getter]
    fn tokenizer(&self, py: Python<'_>) -> Py<PyTokenizer> {
        self.tokenizer.clone_ref(py)
    }

    /// Sequences running together at most.
    #[getter]
    fn max_batch(&self) -> usize {
        self.shared.limits().max_batch
    }

    #[getter]
    fn context_length(&self) -> usize {
        self.shared.limits().context_length
    }

    #[getter(vocab_size)]
    fn py_vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Token positions of the KV cache.
    #[getter]
    fn kv_cache_tokens(&self) -> usize {
        self.shared.limits().capacity_tokens
    }

    /// What the KV cache stores keys and values as: the model's ``kv_cache_dtype``.
    #[getter]
    fn kv_cache_dtype(&self, py: Python<'_>) -> &'static str {
        self.model.borrow(py).kv_cache_dtype.name()
    }

    fn __repr__(&self) -> String {
        let s = self.shared.stats();
        format!("Engine(running={}, waiting={}, kv_blocks_used={}/{})", s.running, s.waiting, s.kv_blocks_used, s.kv_blocks_total)
    }
}
