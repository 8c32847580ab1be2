//! `ferrite.Sampler`: the generator's logits processors and draw, one row at a time, so tests
//! and notebooks can check them against their own NumPy definitions.

use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::sampling::{Sampler, SamplingParams};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySampler>()?;
    m.add_function(wrap_pyfunction!(_sample_rows, m)?)?;
    Ok(())
}

/// A token id from Python, or a ValueError naming it.
pub(crate) fn token_id(id: i64, vocab_size: usize) -> PyResult<u32> {
    u32::try_from(id).ok().filter(|&t| (t as usize) < vocab_size).ok_or_else(|| {
        super::errors::raise("InvalidTokenError", format!("token id {id} is out of range for a vocabulary of {vocab_size}"))
    })
}

/// The host sampler, on its own: penalties, then greedy when ``temperature == 0``, else
/// temperature, top-k, top-p, min-p and a seeded draw (a Gumbel-max whose noise is a function of
/// the seed, the draw's index and the token id, as the engine draws on every device).
///
/// Defaults disable every processor (plain sampling at temperature 1). The repetition penalty
/// reads ``prompt_token_ids`` and the accepted tokens; presence and frequency penalties read the
/// accepted tokens only. ``sample`` accepts the token it returns.
///
/// >>> import numpy as np, ferrite
/// >>> s = ferrite.Sampler(5, temperature=0.5, top_k=2, seed=1)
/// >>> s.process(np.array([0, 3, 1, 2, -1], dtype=np.float32))
/// array([-inf,   6., -inf,   4., -inf], dtype=float32)
/// >>> s.sample(np.array([0, 3, 1, 2, -1], dtype=np.float32)) in (1, 3)
/// True
#[pyclass(name = "Sampler", module = "ferrite")]
pub struct PySampler {
    sampler: Sampler,
    vocab_size: usize,
}

#[pymethods]
impl PySampler {
    #[new]
    #[pyo3(signature = (vocab_size, *, temperature = 1.0, top_k = 0, top_p = 1.0, min_p = 0.0,
        repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0, seed = 0,
        prompt_token_ids = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        vocab_size: usize,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
        repetition_penalty: f32,
        presence_penalty: f32,
        frequency_penalty: f32,
        seed: u64,
        prompt_token_ids: Vec<i64>,
    ) -> PyResult<Self> {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            seed,
        };
        let prompt = prompt_token_ids.into_iter().map(|t| token_id(t, vocab_size)).collect::<PyResult<Vec<u32>>>()?;
        Ok(PySampler { sampler: Sampler::new(&params, vocab_size, &prompt)?, vocab_size })
    }

    /// The processed logits (after penalties and temperature) of the tokens the filters keep;
    /// ``-inf`` for the others. Greedy keeps only the argmax. Does not change the sampler.
    ///
    /// >>> s.process(logits)   # float32 [vocab_size]
    fn process<'py>(&mut self, py: Python<'py>, logits: PyReadonlyArray1<'py, f32>) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let row = logits.as_slice()?;
        let mut out = vec![f32::NEG_INFINITY; self.vocab_size];
        for c in self.sampler.candidates(row)? {
            out[c.id as usize] = c.logit;
        }
        Ok(PyArray1::from_vec(py, out))
    }

    /// Chooses a token from a float32 row of ``vocab_size`` logits and accepts it.
    ///
    /// >>> token = s.sample(logits)
    fn sample(&mut self, logits: PyReadonlyArray1<'_, f32>) -> PyResult<u32> {
        Ok(self.sampler.sample(logits.as_slice()?)?)
    }

    /// Adds a generated token to the history the penalties read.
    ///
    /// >>> s.accept(42)
    fn accept(&mut self, token_id: i64) -> PyResult<()> {
        Ok(self.sampler.accept(self::token_id(token_id, self.vocab_size)?)?)
    }
}

/// Draws one token from each row of ``logits`` (float32 ``[rows, vocab]``) as the engine does on
/// ``device`` (``"cpu"``: the host sampler; ``"cuda"``: the GPU sampler on a copy of the rows),
/// row ``i`` with seed ``seeds[i]`` and draw index ``draw_indices[i]``; every row shares the
/// sampling parameters and penalty history (``prompt_token_ids``, ``output_token_ids``).
/// Returns ``(tokens, logprobs, top_logprobs)`` (``None``s unless ``logprobs`` is given). For
/// tests that compare the samplers with each other and with NumPy.
#[pyfunction]
#[pyo3(signature = (logits, *, device = "cpu", seeds, draw_indices, temperature = 1.0, top_k = 0, top_p = 1.0,
    min_p = 0.0, repetition_penalty = 1.0, presence_penalty = 0.0, frequency_penalty = 0.0,
    prompt_token_ids = Vec::new(), output_token_ids = Vec::new(), logprobs = None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn _sample_rows(
    py: Python<'_>,
    logits: numpy::PyReadonlyArray2<'_, f32>,
    device: &str,
    seeds: Vec<u64>,
    draw_indices: Vec<u64>,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_p: f32,
    repetition_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    prompt_token_ids: Vec<i64>,
    output_token_ids: Vec<i64>,
    logprobs: Option<usize>,
) -> PyResult<(Vec<u32>, Option<Vec<f32>>, Option<Vec<Vec<(u32, f32)>>>)> {
    use crate::sampling::penalties::PenaltyHistory;
    use crate::sampling::{SampleSpec, MAX_TOP_LOGPROBS};
    let shape = logits.as_array().shape().to_vec();
    let (rows, vocab) = (shape[0], shape[1]);
    if seeds.len() != rows || draw_indices.len() != rows {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("{rows} rows need {rows} seeds and draw indices")));
    }
    if logprobs.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("logprobs at most {MAX_TOP_LOGPROBS}")));
    }
    let data = logits.as_slice()?;
    let prompt = prompt_token_ids.into_iter().map(|t| token_id(t, vocab)).collect::<PyResult<Vec<u32>>>()?;
    let mut history = PenaltyHistory::new(&prompt);
    for t in output_token_ids {
        history.record_output(token_id(t, vocab)?);
    }
    let params: Vec<SamplingParams> = seeds
        .iter()
        .map(|&seed| SamplingParams { temperature, top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty, seed })
        .collect();
    params[0].validate()?;
    let specs: Vec<SampleSpec<'_>> = params
        .iter()
        .zip(&draw_indices)
        .map(|(p, &d)| SampleSpec { params: p, draw_index: d, history: Some(&history), logprobs })
        .collect();
    let mut out = Vec::with_capacity(rows);
    match device {
        "cpu" => crate::sampling::sample_rows(data, vocab, &specs, &mut out),
        d if d.starts_with("cuda") => {
            let ctx = crate::backend::cuda::CudaContext::get(d)?;
            let dev = ctx.upload(data, "logits to sample")?;
            let ptr = crate::backend::cuda::backend_addr(&dev, &ctx);
            let mut sampler = crate::backend::cuda::DeviceSampler::new(ctx.clone())?;
            py.detach(|| sampler.sample(ptr, data.len(), vocab, &specs, &mut out))?;
            drop(dev);
        }
        other => return Err(pyo3::exceptions::PyValueError::new_err(format!("unknown device {other:?}"))),
    }
    let mut tokens = Vec::with_capacity(rows);
    let mut lps = Vec::new();
    let mut tops = Vec::new();
    for r in out {
        let s = r?;
        tokens.push(s.token);
        if let Some(lp) = s.logprob {
            lps.push(lp);
            tops.push(s.top_logprobs);
        }
    }
    Ok((tokens, logprobs.map(|_| lps), logprobs.map(|_| tops)))
}
