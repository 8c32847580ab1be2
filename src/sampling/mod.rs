//! Turning a row of logits into the next token: the host sampler (the CPU backend's, and the
//! reference the CUDA sampler is tested against).
//!
//! The processors apply in the order llama.cpp and vLLM use:
//!
//! 1. penalties: repetition, then presence and frequency ([`penalties`]);
//! 2. if `temperature == 0`: greedy, the argmax of the penalized logits (lowest id on a tie), and
//!    nothing else below applies;
//! 3. temperature: logits divided by it;
//! 4. top-k, 5. top-p over what top-k kept, 6. min-p ([`nucleus`]);
//! 7. a seeded draw from the softmax of what remains: a Gumbel-max whose noise is a function of
//!    (seed, draw index, token id) ([`noise`]), so a request draws the same tokens alone or in
//!    any batch, and on any backend given the same logits.
//!
//! Log-probabilities, when asked, are the log-softmax over the whole vocabulary of the logits
//! after penalties and temperature (temperature 1 for greedy), as vLLM reports them.
//!
//! A sampler checks its logits: a NaN or +inf (a broken model, not a distribution) is an error,
//! never a silently chosen token.

pub mod noise;
pub mod nucleus;
pub mod penalties;

use std::cmp::Ordering;

use thiserror::Error;

use nucleus::{nucleus, Kept, Scaled};
use penalties::PenaltyHistory;

/// Most alternatives `logprobs` may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

#[derive(Debug, Error, PartialEq)]
pub enum SamplingError {
    #[error("{name} = {value} is invalid: {expected}")]
    BadParam { name: &'static str, value: f64, expected: &'static str },
    #[error("logits row has {found} entries, expected the vocabulary size {vocab_size}")]
    WrongLength { found: usize, vocab_size: usize },
    #[error("logit of token {id} is {value}: the model produced a non-finite value")]
    NonFinite { id: u32, value: f32 },
    #[error("every logit is -inf: no token can be sampled")]
    NothingToSample,
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    BadTokenId { id: u32, vocab_size: usize },
}

/// How to choose tokens. `Default` is plain sampling at temperature 1 with no filter and seed 0.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1 disables.
    pub top_p: f32,
    /// 0 disables.
    pub min_p: f32,
    /// 1 disables.
    pub repetition_penalty: f32,
    /// 0 disables.
    pub presence_penalty: f32,
    /// 0 disables.
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }

    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name, value: f32, expected| Err(SamplingError::BadParam { name, value: value as f64, expected });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "expected a finite value >= 0 (0 means greedy)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "expected 0 < top_p <= 1 (1 disables it)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "expected 0 <= min_p <= 1 (0 disables it)");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition_penalty", self.repetition_penalty, "expected a finite value > 0 (1 disables it)");
        }
        if !self.presence_penalty.is_finite() {
            return bad("presence_penalty", self.presence_penalty, "expected a finite value (0 disables it)");
        }
        if !self.frequency_penalty.is_finite() {
            return bad("frequency_penalty", self.frequency_penalty, "expected a finite value (0 disables it)");
        }
        Ok(())
    }

    /// Whether any penalty changes the logits.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}

/// A token and its (processed) logit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u32,
    pub logit: f32,
}

impl Candidate {
    pub fn new(id: u32, logit: f32) -> Self {
        Candidate { id, logit }
    }

    /// Higher logit first, then lower id: a total order, so every filter is deterministic.
    pub fn better_first(a: &Candidate, b: &Candidate) -> Ordering {
        b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
    }
}

/// One row's draw: its parameters, where it stands in its request, and what to report.
#[derive(Debug, Clone, Copy)]
pub struct SampleSpec<'a> {
    pub params: &'a SamplingParams,
    /// How many tokens the request has drawn before this one: the draw's index in its noise.
    pub draw_index: u64,
    /// The history the penalties read (`None`: no penalties apply).
    pub history: Option<&'a PenaltyHistory>,
    /// `None`: no log-probabilities; `Some(0)`: the chosen token's; `Some(k)`: also the k best.
    pub logprobs: Option<usize>,
}

/// What a draw chose.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// The chosen token's log-probability, when asked.
    pub logprob: Option<f32>,
    /// The best `(token, logprob)` pairs, best first, when asked for k >= 1.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Checks a row's length and values.
pub fn check_row(logits: &[f32], vocab_size: usize) -> Result<(), SamplingError> {
    if logits.len() != vocab_size {
        return Err(SamplingError::WrongLength { found: logits.len(), vocab_size });
    }
    if let Some((i, &v)) = logits.iter().enumerate().find(|(_, v)| v.is_nan() || **v == f32::INFINITY) {
        return Err(SamplingError::NonFinite { id: i as u32, value: v });
    }
    Ok(())
}

/// The penalized row: `logits` itself when no penalty applies, else a copy in `scratch`.
fn penalized<'a>(logits: &'a [f32], spec: &SampleSpec<'_>, scratch: &'a mut Vec<f32>) -> &'a [f32] {
    match spec.history {
        Some(h) if spec.params.has_penalties() => {
            let p = spec.params;
            scratch.clear();
            scratch.extend_from_slice(logits);
            h.apply(scratch, p.repetition_penalty, p.presence_penalty, p.frequency_penalty);
            scratch
        }
        _ => logits,
    }
}

/// The tokens `spec` may draw from a checked row, after penalties; `None` when all are -inf.
/// Greedy keeps exactly the argmax.
pub fn kept(logits: &[f32], spec: &SampleSpec<'_>, scratch: &mut Vec<f32>) -> Option<(Kept, f32)> {
    let row = penalized(logits, spec, scratch);
    let p = spec.params;
    let t = if p.is_greedy() { 1.0 } else { p.temperature };
    let scaled = Scaled { logits: row, temperature: t };
    let (best, finite) = scaled.best();
    let best = best?;
    if p.is_greedy() {
        return Some((Kept::List(vec![best]), 1.0));
    }
    Some((nucleus(scaled, p, best, finite), t))
}

/// Samples one row of logits (already checked with [`check_row`]). `scratch` is reused between
/// calls to hold a penalized copy.
pub fn sample_row(logits: &[f32], spec: &SampleSpec<'_>, scratch: &mut Vec<f32>) -> Result<Sampled, SamplingError> {
    let row = penalized(logits, spec, scratch);
    let p = spec.params;
    let t = if p.is_greedy() { 1.0 } else { p.temperature };
    let scaled = Scaled { logits: row, temperature: t };
    let (best, finite) = scaled.best();
    let best = best.ok_or(SamplingError::NothingToSample)?;
    let token = if p.is_greedy() {
        best.id
    } else {
        let key = noise::draw_key(p.seed, spec.draw_index);
        match nucleus(scaled, p, best, finite) {
            Kept::List(list) => gumbel_max(list.iter().copied(), key).id,
            Kept::Threshold { bound, floor } => draw_threshold(scaled, best, bound, floor, key).id,
        }
    };
    let mut out = Sampled { token, logprob: None, top_logprobs: Vec::new() };
    if let Some(k) = spec.logprobs {
        let lse = best.logit + (scaled.mass(best.logit).ln() as f32);
        out.logprob = Some(scaled.at(token as usize) - lse);
        out.top_logprobs = scaled.top(k.min(MAX_TOP_LOGPROBS)).into_iter().map(|c| (c.id, c.logit - lse)).collect();
    }
    Ok(out)
}

/// Samples consecutive rows of `vocab_size` logits on the host, one spec per row, in parallel
/// (the CPU backend's sampler, and any backend's fallback after copying its rows to the host).
pub fn sample_rows(rows: &[f32], vocab_size: usize, specs: &[SampleSpec<'_>], out: &mut Vec<Result<Sampled, SamplingError>>) {
    use rayon::prelude::*;
    let one = |(row, spec): (&[f32], &SampleSpec<'_>)| {
        check_row(row, vocab_size)?;
        sample_row(row, spec, &mut Vec::new())
    };
    if specs.len() <= 1 {
        out.extend(rows.chunks(vocab_size.max(1)).zip(specs).map(one));
    } else {
        let done: Vec<_> = rows.par_chunks(vocab_size.max(1)).zip(specs.par_iter()).map(one).collect();
        out.extend(done);
    }
}

/// The candidate with the largest `logit + gumbel(key, id)`; the lower id on a tie.
fn gumbel_max(candidates: impl Iterator<Item = Candidate>, key: u64) -> Candidate {
    let mut winner: Option<(f32, Candidate)> = None;
    for c in candidates {
        let score = c.logit + noise::gumbel(key, c.id);
        if winner.is_none_or(|(s, w)| score > s || (score == s && c.id < w.id)) {
            winner = Some((score, c));
        }
    }
    winner.map(|(_, c)| c).expect("a kept set is never empty: the best token is always in it")
}

/// Gumbel-max over every finite token ranked no worse than `bound` with a scaled logit >= `floor`.
/// Noise is only computed for tokens that can still win: one whose scaled logit is more than
/// [`noise::GUMBEL_MAX`] below the best score so far cannot.
fn draw_threshold(row: Scaled<'_>, best: Candidate, bound: Option<Candidate>, floor: f32, key: u64) -> Candidate {
    let t = row.temperature;
    let mut top = (best.logit + noise::gumbel(key, best.id), best);
    // Raw logits below this cannot win (a margin below the exact bound keeps rounding safe).
    let raw_floor = |top: f32| {
        let x = (top - noise::GUMBEL_MAX) * t;
        x - x.abs() * 1e-5 - 1e-5
    };
    let mut skip_below = raw_floor(top.0);
    for (i, &l) in row.logits.iter().enumerate() {
        if l < skip_below || l == f32::NEG_INFINITY {
            continue;
        }
        let s = l / t;
        if s + noise::GUMBEL_MAX < top.0 || s < floor {
            continue;
        }
        let c = Candidate::new(i as u32, s);
        if bound.is_some_and(|b| Candidate::better_first(&c, &b) == Ordering::Greater) {
            continue;
        }
        let score = s + noise::gumbel(key, c.id);
        if score > top.0 || (score == top.0 && c.id < top.1.id) {
            top = (score, c);
            skip_below = raw_floor(top.0);
        }
    }
    top.1
}

/// A sampler for one sequence on the host, with its own history and draw counter: what
/// `ferrite.Sampler` exposes, and a reference for tests.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    history: PenaltyHistory,
    draws: u64,
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler for a sequence that starts with `prompt` (read by the repetition penalty).
    pub fn new(params: &SamplingParams, vocab_size: usize, prompt: &[u32]) -> Result<Self, SamplingError> {
        params.validate()?;
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(SamplingError::BadTokenId { id, vocab_size });
        }
        Ok(Sampler { params: params.clone(), vocab_size, history: PenaltyHistory::new(prompt), draws: 0, scratch: Vec::new() })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Adds a generated token to the history the penalties read. [`Sampler::sample`] does this
    /// for the token it returns.
    pub fn accept(&mut self, token: u32) -> Result<(), SamplingError> {
        if token as usize >= self.vocab_size {
            return Err(SamplingError::BadTokenId { id: token, vocab_size: self.vocab_size });
        }
        self.history.record_output(token);
        Ok(())
    }

    fn spec(&self) -> SampleSpec<'_> {
        SampleSpec { params: &self.params, draw_index: self.draws, history: Some(&self.history), logprobs: None }
    }

    /// The candidates the filters keep, with their logits after penalties and temperature.
    /// Greedy keeps exactly one.
    pub fn candidates(&mut self, logits: &[f32]) -> Result<Vec<Candidate>, SamplingError> {
        check_row(logits, self.vocab_size)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let kept = kept(logits, &self.spec(), &mut scratch);
        let out = match kept {
            None => Err(SamplingError::NothingToSample),
            Some((Kept::List(list), _)) => Ok(list),
            Some((Kept::Threshold { bound, floor }, t)) => {
                let row = penalized(logits, &self.spec(), &mut scratch);
                let mut all = Vec::new();
                for (i, &l) in row.iter().enumerate() {
                    let c = Candidate::new(i as u32, l / t);
                    if l != f32::NEG_INFINITY && c.logit >= floor && bound.is_none_or(|b| Candidate::better_first(&c, &b) != Ordering::Greater) {
                        all.push(c);
                    }
                }
                Ok(all)
            }
        };
        self.scratch = scratch;
        out
    }

    /// Chooses the next token from a row of logits and records it in the history.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        check_row(logits, self.vocab_size)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        let sampled = sample_row(logits, &self.spec(), &mut scratch);
        self.scratch = scratch;
        let token = sampled?.token;
        self.history.record_output(token);
        self.draws += 1;
        Ok(token)
    }
}

#[cfg(test)]
mod tests;
