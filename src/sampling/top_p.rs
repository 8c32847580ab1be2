//! Top-p (nucleus, Holtzman et al. 2019): keep the smallest set of best candidates whose
//! probabilities sum to at least p.

use super::{softmax_weights, Candidate};

/// How many best candidates to sort before falling back to a full sort: the nucleus of a
/// language model almost always lies within them, and sorting 150k vocabulary entries on every
/// step would cost more than the rest of sampling together.
const PARTIAL_SORT_LEN: usize = 1024;

/// Keeps the nucleus, sorted best first. `sorted` says whether `candidates` already is.
/// A candidate is kept when the probability mass of the candidates ranked before it is < p, so
/// the best candidate is always kept.
pub fn top_p(candidates: &mut Vec<Candidate>, p: f32, sorted: bool) {
    if p >= 1.0 || candidates.len() <= 1 {
        if !sorted {
            candidates.sort_unstable_by(Candidate::better_first);
        }
        return;
    }
    let p = p as f64;
    // The normalizer needs every candidate; the order only the best ones.
    let (max, total) = softmax_weights(candidates);
    let try_prefix = |candidates: &mut Vec<Candidate>, n: usize| -> Option<usize> {
        let mut cumulative = 0.0f64;
        for (i, c) in candidates[..n].iter().enumerate() {
            if cumulative >= p * total {
                return Some(i);
            }
            cumulative += ((c.logit - max) as f64).exp();
        }
        if n == candidates.len() || cumulative >= p * total {
            Some(n)
        } else {
            None
        }
    };
    if !sorted && candidates.len() > PARTIAL_SORT_LEN {
        candidates.select_nth_unstable_by(PARTIAL_SORT_LEN - 1, Candidate::better_first);
        candidates[..PARTIAL_SORT_LEN].sort_unstable_by(Candidate::better_first);
        if let Some(keep) = try_prefix(candidates, PARTIAL_SORT_LEN) {
            candidates.truncate(keep);
            return;
        }
    }
    if !sorted {
        candidates.sort_unstable_by(Candidate::better_first);
    }
    let n = candidates.len();
    let keep = try_prefix(candidates, n).unwrap_or(n);
    candidates.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(c: &[Candidate]) -> Vec<u32> {
        c.iter().map(|c| c.id).collect()
    }

    #[test]
    fn keeps_smallest_prefix_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (as logits of their logs).
        let probs = [0.15f32, 0.5, 0.05, 0.3];
        let mk = || probs.iter().enumerate().map(|(i, &q)| Candidate::new(i as u32, q.ln())).collect::<Vec<_>>();
        let mut c = mk();
        top_p(&mut c, 0.5, false);
        assert_eq!(ids(&c), vec![1]);
        let mut c = mk();
        top_p(&mut c, 0.79, false);
        assert_eq!(ids(&c), vec![1, 3]);
        let mut c = mk();
        top_p(&mut c, 0.81, false);
        assert_eq!(ids(&c), vec![1, 3, 0]);
        let mut c = mk();
        top_p(&mut c, 0.01, false);
        assert_eq!(ids(&c), vec![1]);
    }

    #[test]
    fn partial_sort_path_agrees_with_full_sort() {
        // A flat distribution over 5000 entries: the nucleus is larger than the partial sort.
        let mut rng = crate::sampling::rng::Rng::new(3);
        let logits: Vec<f32> = (0..5000).map(|_| rng.next_f64() as f32 * 0.1).collect();
        for p in [0.1f32, 0.3, 0.9] {
            let mut a: Vec<Candidate> = logits.iter().enumerate().map(|(i, &l)| Candidate::new(i as u32, l)).collect();
            let mut b = a.clone();
            top_p(&mut a, p, false);
            b.sort_unstable_by(Candidate::better_first);
            top_p(&mut b, p, true);
            assert_eq!(ids(&a), ids(&b), "p = {p}");
        }
    }
}
