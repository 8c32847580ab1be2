//! Repetition, presence and frequency penalties.
//!
//! Which history each one sees follows the definitions users know them by:
//! - repetition penalty (Keskar et al. 2019, as in HF transformers and vLLM): every token of the
//!   prompt and of the output so far; a positive logit is divided by the penalty, a negative one
//!   multiplied, so a penalty > 1 always makes the token less likely;
//! - presence and frequency penalties (as in the OpenAI API and vLLM): output tokens only;
//!   `logit -= presence * [count > 0] + frequency * count`.
//!
//! Repetition is applied first, then presence/frequency, as llama.cpp does.

use std::collections::HashMap;

/// The token history the penalties read.
#[derive(Debug, Clone, Default)]
pub struct PenaltyHistory {
    /// Distinct prompt tokens, sorted.
    prompt_ids: Vec<u32>,
    /// Generated tokens and how often each was generated.
    output_counts: HashMap<u32, u32>,
}

impl PenaltyHistory {
    pub fn new(prompt: &[u32]) -> Self {
        let mut prompt_ids = prompt.to_vec();
        prompt_ids.sort_unstable();
        prompt_ids.dedup();
        PenaltyHistory { prompt_ids, output_counts: HashMap::new() }
    }

    pub fn record_output(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    /// Every token a penalty may touch, once: `(id, times generated, in the prompt)`, prompt
    /// tokens first (what a device sampler uploads to apply [`PenaltyHistory::apply`] there).
    pub fn entries(&self) -> impl Iterator<Item = (u32, u32, bool)> + '_ {
        let prompt = self.prompt_ids.iter().map(|&id| (id, self.output_counts.get(&id).copied().unwrap_or(0), true));
        let output_only = self
            .output_counts
            .iter()
            .filter(|(id, _)| self.prompt_ids.binary_search(id).is_err())
            .map(|(&id, &count)| (id, count, false));
        prompt.chain(output_only)
    }

    /// Applies the penalties to `logits` in place. Tokens outside the vocabulary are ignored (the
    /// sampler checks ids when they come in, so none should be here).
    pub fn apply(&self, logits: &mut [f32], repetition: f32, presence: f32, frequency: f32) {
        if repetition != 1.0 {
            let mut penalize = |id: u32| {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / repetition } else { *l * repetition };
                }
            };
            for &id in &self.prompt_ids {
                penalize(id);
            }
            for &id in self.output_counts.keys() {
                if self.prompt_ids.binary_search(&id).is_err() {
                    penalize(id);
                }
            }
        }
        if presence != 0.0 || frequency != 0.0 {
            for (&id, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= presence + frequency * count as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_divides_positive_and_multiplies_negative_once_per_token() {
        let mut h = PenaltyHistory::new(&[0, 1, 1]);
        h.record_output(1);
        h.record_output(2);
        let mut logits = vec![2.0, -2.0, 4.0, 1.0];
        h.apply(&mut logits, 2.0, 0.0, 0.0);
        // Token 1 appears in prompt and output: penalized once, not three times.
        assert_eq!(logits, vec![1.0, -4.0, 2.0, 1.0]);
    }

    #[test]
    fn presence_and_frequency_use_output_counts_only() {
        let mut h = PenaltyHistory::new(&[3]);
        for t in [0, 0, 0, 1] {
            h.record_output(t);
        }
        let mut logits = vec![1.0, 1.0, 1.0, 1.0];
        h.apply(&mut logits, 1.0, 0.5, 0.25);
        assert_eq!(logits, vec![1.0 - 0.5 - 0.75, 1.0 - 0.5 - 0.25, 1.0, 1.0]);
    }
}
