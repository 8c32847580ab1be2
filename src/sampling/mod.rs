//! Turning a row of logits into the next token.
//!
//! The processors apply in the order llama.cpp and vLLM use:
//!
//! 1. penalties: repetition, then presence and frequency ([`penalties`]);
//! 2. if `temperature == 0`: greedy, the argmax of the penalized logits (lowest id on a tie), and
//!    nothing else below applies;
//! 3. temperature: logits divided by it;
//! 4. top-k ([`top_k`]), 5. top-p ([`top_p`]), 6. min-p ([`min_p`]), each on what the previous
//!    one kept, with probabilities renormalized over the kept candidates;
//! 7. a draw from the softmax of what remains, with the seeded [`rng::Rng`].
//!
//! A sampler checks its logits: a NaN or +inf (a broken model, not a distribution) is an error,
//! never a silently chosen token.

pub mod min_p;
pub mod penalties;
pub mod rng;
pub mod top_k;
pub mod top_p;

use std::cmp::Ordering;

use thiserror::Error;

use penalties::PenaltyHistory;
use rng::Rng;

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

/// The max logit and the sum of `exp(logit - max)` over the candidates, in f64.
pub(crate) fn softmax_weights(candidates: &[Candidate]) -> (f32, f64) {
    let max = candidates.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    let total = candidates.iter().map(|c| ((c.logit - max) as f64).exp()).sum();
    (max, total)
}

/// Chooses the tokens of one sequence: its parameters, its PRNG and its token history.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: Rng,
    history: PenaltyHistory,
    penalized: Vec<f32>,
    candidates: Vec<Candidate>,
}

impl Sampler {
    /// A sampler for a sequence that starts with `prompt` (read by the repetition penalty).
    pub fn new(params: &SamplingParams, vocab_size: usize, prompt: &[u32]) -> Result<Self, SamplingError> {
        params.validate()?;
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(SamplingError::BadTokenId { id, vocab_size });
        }
        Ok(Sampler {
            params: params.clone(),
            vocab_size,
            rng: Rng::new(params.seed),
            history: PenaltyHistory::new(prompt),
            penalized: Vec::with_capacity(vocab_size),
            candidates: Vec::with_capacity(vocab_size),
        })
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

    /// Runs every processor but the draw: the candidates left, with their logits after penalties
    /// and temperature, best first. Greedy leaves exactly one.
    pub fn candidates(&mut self, logits: &[f32]) -> Result<&[Candidate], SamplingError> {
        if logits.len() != self.vocab_size {
            return Err(SamplingError::WrongLength { found: logits.len(), vocab_size: self.vocab_size });
        }
        if let Some((i, &v)) = logits.iter().enumerate().find(|(_, v)| v.is_nan() || **v == f32::INFINITY) {
            return Err(SamplingError::NonFinite { id: i as u32, value: v });
        }
        let p = &self.params;
        self.penalized.clear();
        self.penalized.extend_from_slice(logits);
        self.history.apply(&mut self.penalized, p.repetition_penalty, p.presence_penalty, p.frequency_penalty);

        self.candidates.clear();
        if p.temperature == 0.0 {
            let best = self
                .penalized
                .iter()
                .enumerate()
                .map(|(i, &l)| Candidate::new(i as u32, l))
                .min_by(Candidate::better_first)
                .ok_or(SamplingError::NothingToSample)?;
            if best.logit == f32::NEG_INFINITY {
                return Err(SamplingError::NothingToSample);
            }
            self.candidates.push(best);
            return Ok(&self.candidates);
        }

        let t = p.temperature;
        self.candidates.extend(
            self.penalized
                .iter()
                .enumerate()
                .filter(|(_, &l)| l != f32::NEG_INFINITY)
                .map(|(i, &l)| Candidate::new(i as u32, l / t)),
        );
        if self.candidates.is_empty() {
            return Err(SamplingError::NothingToSample);
        }
        let sorted = p.top_k > 0 && p.top_k < self.candidates.len();
        top_k::top_k(&mut self.candidates, p.top_k);
        // top_p leaves the candidates sorted whatever it keeps.
        top_p::top_p(&mut self.candidates, p.top_p, sorted);
        min_p::min_p(&mut self.candidates, p.min_p);
        Ok(&self.candidates)
    }

    /// Chooses the next token from a row of logits and records it in the history.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplingError> {
        self.candidates(logits)?;
        let token = if self.candidates.len() == 1 {
            self.candidates[0].id
        } else {
            let (max, total) = softmax_weights(&self.candidates);
            let mut target = self.rng.next_f64() * total;
            let mut chosen = self.candidates[self.candidates.len() - 1].id;
            for c in &self.candidates {
                let w = ((c.logit - max) as f64).exp();
                if target < w {
                    chosen = c.id;
                    break;
                }
                target -= w;
            }
            chosen
        };
        self.history.record_output(token);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_logits(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.next_f64() * 8.0 - 4.0) as f32).collect()
    }

    #[test]
    fn greedy_is_argmax_of_penalized_logits() {
        let logits = vec![1.0, 5.0, 4.9, -3.0];
        let mut s = Sampler::new(&SamplingParams::greedy(), 4, &[]).unwrap();
        assert_eq!(s.sample(&logits).unwrap(), 1);
        // Token 1 is now in the history; a repetition penalty of 2 halves it below token 2.
        let params = SamplingParams { repetition_penalty: 2.0, ..SamplingParams::greedy() };
        let mut s = Sampler::new(&params, 4, &[1]).unwrap();
        assert_eq!(s.sample(&logits).unwrap(), 2);
    }

    #[test]
    fn same_seed_same_tokens() {
        let params = SamplingParams { temperature: 1.0, seed: 99, ..Default::default() };
        let draw = |params: &SamplingParams| {
            let mut s = Sampler::new(params, 64, &[]).unwrap();
            (0..50).map(|i| s.sample(&random_logits(64, i)).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params), draw(&params));
        assert_ne!(draw(&params), draw(&SamplingParams { seed: 100, ..params.clone() }));
    }

    #[test]
    fn draws_follow_the_softmax() {
        let logits = vec![0.0f32, 1.0, 2.0, -1.0];
        let weights: Vec<f64> = logits.iter().map(|&l| (l as f64 / 0.7).exp()).collect();
        let total: f64 = weights.iter().sum();
        let params = SamplingParams { temperature: 0.7, seed: 5, ..Default::default() };
        let mut s = Sampler::new(&params, 4, &[]).unwrap();
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        for i in 0..4 {
            let p = weights[i] / total;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((counts[i] as f64 - n as f64 * p).abs() < 5.0 * sigma, "{counts:?} vs p={p}");
        }
    }

    #[test]
    fn filters_compose_in_order() {
        // After top-k 3 the candidates are 2, 1, 0; top-p 0.6 keeps the best whose mass reaches
        // 0.6 after renormalizing over those three.
        let logits = vec![0.0f32, 1.0, 2.0, -1.0];
        let params = SamplingParams { top_k: 3, top_p: 0.6, ..Default::default() };
        let mut s = Sampler::new(&params, 4, &[]).unwrap();
        let ids: Vec<u32> = s.candidates(&logits).unwrap().iter().map(|c| c.id).collect();
        // Softmax of [2, 1, 0] is [0.665, 0.245, 0.090]: the first already reaches 0.6.
        assert_eq!(ids, vec![2]);
        let params = SamplingParams { top_k: 3, top_p: 0.7, ..Default::default() };
        let mut s = Sampler::new(&params, 4, &[]).unwrap();
        let ids: Vec<u32> = s.candidates(&logits).unwrap().iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![2, 1]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            Sampler::new(&SamplingParams { temperature: -1.0, ..Default::default() }, 4, &[]),
            Err(SamplingError::BadParam { name: "temperature", .. })
        ));
        assert!(matches!(
            Sampler::new(&SamplingParams { top_p: 0.0, ..Default::default() }, 4, &[]),
            Err(SamplingError::BadParam { name: "top_p", .. })
        ));
        assert!(matches!(Sampler::new(&SamplingParams::default(), 4, &[9]), Err(SamplingError::BadTokenId { .. })));
        let mut s = Sampler::new(&SamplingParams::default(), 4, &[]).unwrap();
        assert!(matches!(s.sample(&[0.0, f32::NAN, 0.0, 0.0]), Err(SamplingError::NonFinite { id: 1, .. })));
        assert!(matches!(s.sample(&[0.0; 3]), Err(SamplingError::WrongLength { .. })));
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 4]), Err(SamplingError::NothingToSample));
        let mut g = Sampler::new(&SamplingParams::greedy(), 4, &[]).unwrap();
        assert_eq!(g.sample(&[f32::NEG_INFINITY; 4]), Err(SamplingError::NothingToSample));
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let mut logits = random_logits(32, 1);
        for l in logits.iter_mut().step_by(2) {
            *l = f32::NEG_INFINITY;
        }
        let mut s = Sampler::new(&SamplingParams { temperature: 2.0, seed: 3, ..Default::default() }, 32, &[]).unwrap();
        for _ in 0..500 {
            assert_eq!(s.sample(&logits).unwrap() % 2, 1);
        }
    }
}
