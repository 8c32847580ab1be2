//! `ferrite.GenerationResult` and `ferrite.Timings`: plain values that compare by their fields
//! and pickle (scale-out layers send them between processes).

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::engine::{Generation, Timings};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGenerationResult>()?;
    m.add_class::<PyTimings>()?;
    Ok(())
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 }
}

/// One request's own wall-clock times and token counts (not its batch's): ``prompt_tokens``,
/// ``cached_prompt_tokens`` (reused from the prefix cache), ``queue_s`` (submission to
/// admission), ``time_to_first_token_s`` (submission to the first token), ``prefill_s``
/// (admission to the first token), ``decode_tokens`` (tokens after the first) over ``decode_s``,
/// ``total_s``; ``prefill_tokens`` are the prompt tokens actually computed.
///
/// >>> r.timings.decode_tok_s
#[pyclass(name = "Timings", module = "ferrite", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyTimings {
    pub prompt_tokens: usize,
    pub cached_prompt_tokens: usize,
    pub queue_s: f64,
    pub time_to_first_token_s: f64,
    pub prefill_s: f64,
    pub decode_tokens: usize,
    pub decode_s: f64,
    pub total_s: f64,
}

impl From<Timings> for PyTimings {
    fn from(t: Timings) -> PyTimings {
        PyTimings {
            prompt_tokens: t.prompt_tokens,
            cached_prompt_tokens: t.cached_prompt_tokens,
            queue_s: t.queue_s,
            time_to_first_token_s: t.time_to_first_token_s,
            prefill_s: t.prefill_s,
            decode_tokens: t.decode_tokens,
            decode_s: t.decode_s,
            total_s: t.total_s,
        }
    }
}

#[pymethods]
impl PyTimings {
    #[new]
    #[pyo3(signature = (prompt_tokens = 0, cached_prompt_tokens = 0, queue_s = 0.0, time_to_first_token_s = 0.0,
        prefill_s = 0.0, decode_tokens = 0, decode_s = 0.0, total_s = 0.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        prompt_tokens: usize,
        cached_prompt_tokens: usize,
        queue_s: f64,
        time_to_first_token_s: f64,
        prefill_s: f64,
        decode_tokens: usize,
        decode_s: f64,
        total_s: f64,
    ) -> PyTimings {
        PyTimings { prompt_tokens, cached_prompt_tokens, queue_s, time_to_first_token_s, prefill_s, decode_tokens, decode_s, total_s }
    }

    /// Prompt tokens computed (not taken from the prefix cache).
    #[getter]
    fn prefill_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_prompt_tokens.min(self.prompt_tokens)
    }

    #[getter]
    fn prefill_tok_s(&self) -> f64 {
        rate(self.prefill_tokens(), self.prefill_s)
    }

    #[getter]
    fn decode_tok_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_s)
    }

    /// The timings as a plain dict (for JSON).
    ///
    /// >>> result.timings.as_dict()["decode_tok_s"]
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", self.prompt_tokens)?;
        d.set_item("cached_prompt_tokens", self.cached_prompt_tokens)?;
        d.set_item("prefill_tokens", self.prefill_tokens())?;
        d.set_item("queue_s", self.queue_s)?;
        d.set_item("time_to_first_token_s", self.time_to_first_token_s)?;
        d.set_item("prefill_s", self.prefill_s)?;
        d.set_item("prefill_tok_s", self.prefill_tok_s())?;
        d.set_item("decode_tokens", self.decode_tokens)?;
        d.set_item("decode_s", self.decode_s)?;
        d.set_item("decode_tok_s", self.decode_tok_s())?;
        d.set_item("total_s", self.total_s)?;
        Ok(d)
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let t = slf.get();
        let args = (
            t.prompt_tokens,
            t.cached_prompt_tokens,
            t.queue_s,
            t.time_to_first_token_s,
            t.prefill_s,
            t.decode_tokens,
            t.decode_s,
            t.total_s,
        );
        Ok((slf.get_type().into_any(), args.into_pyobject(slf.py())?))
    }

    fn __repr__(&self) -> String {
        format!(
            "Timings(prompt {} tok ({} cached), first token after {:.3} s, decode {} tok in {:.3} s = {:.1} tok/s)",
            self.prompt_tokens,
            self.cached_prompt_tokens,
            self.time_to_first_token_s,
            self.decode_tokens,
            self.decode_s,
            self.decode_tok_s()
        )
    }
}

/// One finished generation. ``finish_reason`` is ``"eos"`` (the tokenizer's end-of-generation
/// token), ``"stop"`` (a stop string or stop token id), ``"length"`` (``max_tokens`` or the
/// context length), ``"cancelled"`` or ``"error"`` (``error`` says why). ``token_ids`` includes
/// the token that ended it; ``text`` excludes that token's text and any stop string. ``seed`` is
/// the seed actually used. ``logprobs`` (one per token) and ``top_logprobs`` (per token, the k
/// best ``(token_id, logprob)`` pairs, best first) are there when asked for, else ``None``.
/// Results compare equal by value and pickle.
///
/// >>> r = gen.generate("1, 2, 3,", max_tokens=4, temperature=0, logprobs=2)
/// >>> r.text, r.finish_reason, len(r.logprobs)
#[pyclass(name = "GenerationResult", module = "ferrite", frozen, get_all, eq)]
#[derive(Clone, PartialEq)]
pub struct PyGenerationResult {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_token_ids: Vec<u32>,
    pub finish_reason: String,
    pub seed: u64,
    pub logprobs: Option<Vec<f32>>,
    pub top_logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub error: Option<String>,
    pub timings: PyTimings,
}

impl PyGenerationResult {
    pub fn from_generation(g: Generation) -> PyGenerationResult {
        PyGenerationResult {
            text: g.text,
            token_ids: g.token_ids,
            prompt_token_ids: g.prompt_token_ids,
            finish_reason: g.finish.map_or("length", |f| f.as_str()).to_string(),
            seed: g.seed,
            logprobs: g.logprobs,
            top_logprobs: g.top_logprobs,
            error: g.error,
            timings: g.timings.into(),
        }
    }
}

#[pymethods]
impl PyGenerationResult {
    #[new]
    #[pyo3(signature = (text, token_ids, prompt_token_ids, finish_reason, seed, logprobs = None, top_logprobs = None,
        error = None, timings = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        text: String,
        token_ids: Vec<u32>,
        prompt_token_ids: Vec<u32>,
        finish_reason: String,
        seed: u64,
        logprobs: Option<Vec<f32>>,
        top_logprobs: Option<Vec<Vec<(u32, f32)>>>,
        error: Option<String>,
        timings: Option<PyTimings>,
    ) -> PyGenerationResult {
        PyGenerationResult {
            text,
            token_ids,
            prompt_token_ids,
            finish_reason,
            seed,
            logprobs,
            top_logprobs,
            error,
            timings: timings.unwrap_or(PyTimings::new(0, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0)),
        }
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
        let r = slf.get().clone();
        let args = (r.text, r.token_ids, r.prompt_token_ids, r.finish_reason, r.seed, r.logprobs, r.top_logprobs, r.error, r.timings);
        Ok((slf.get_type().into_any(), args.into_pyobject(slf.py())?))
    }

    fn __repr__(&self) -> String {
        let mut preview: String = self.text.chars().take(60).collect();
        if preview.len() < self.text.len() {
            preview.push('…');
        }
        format!("GenerationResult(text={:?}, {} tokens, finish_reason={:?})", preview, self.token_ids.len(), self.finish_reason)
    }
}
