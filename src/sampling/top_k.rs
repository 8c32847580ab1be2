//! Top-k: keep the k candidates with the highest logits.

use super::Candidate;

/// Keeps the `k` best candidates, sorted best first. Ties at the boundary go to the lower token
/// id, so the result does not depend on the input order.
pub fn top_k(candidates: &mut Vec<Candidate>, k: usize) {
    if k == 0 || k >= candidates.len() {
        return;
    }
    candidates.select_nth_unstable_by(k - 1, Candidate::better_first);
    candidates.truncate(k);
    candidates.sort_unstable_by(Candidate::better_first);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_k_best_sorted_and_breaks_ties_by_id() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0];
        let mut c: Vec<Candidate> = logits.iter().enumerate().map(|(i, &l)| Candidate::new(i as u32, l)).collect();
        top_k(&mut c, 3);
        let ids: Vec<u32> = c.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![1, 3, 4]);
        top_k(&mut c, 1);
        assert_eq!(c[0].id, 1);
    }

    #[test]
    fn zero_or_large_k_keeps_everything() {
        let mut c: Vec<Candidate> = (0..4).map(|i| Candidate::new(i, i as f32)).collect();
        top_k(&mut c, 0);
        assert_eq!(c.len(), 4);
        top_k(&mut c, 10);
        assert_eq!(c.len(), 4);
    }
}
