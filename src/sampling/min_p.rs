//! Min-p (Nguyen et al. 2024): keep candidates whose probability is at least `min_p` times the
//! best candidate's. In logits: `logit >= max_logit + ln(min_p)`, which needs no normalization.

use super::Candidate;

pub fn min_p(candidates: &mut Vec<Candidate>, min_p: f32) {
    if min_p <= 0.0 || candidates.is_empty() {
        return;
    }
    let max = candidates.iter().map(|c| c.logit).fold(f32::NEG_INFINITY, f32::max);
    // Compare probabilities in f64 so the cut does not move with float32 rounding of ln(min_p).
    let floor = min_p as f64;
    candidates.retain(|c| ((c.logit - max) as f64).exp() >= floor);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_candidates_within_ratio_of_best_and_keeps_order() {
        let probs = [0.4f32, 0.05, 0.21, 0.35];
        let mut c: Vec<Candidate> = probs.iter().enumerate().map(|(i, &q)| Candidate::new(i as u32, q.ln() + 7.0)).collect();
        min_p(&mut c, 0.5);
        let ids: Vec<u32> = c.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![0, 2, 3]);
        min_p(&mut c, 0.9);
        assert_eq!(c.len(), 1);
    }
}
