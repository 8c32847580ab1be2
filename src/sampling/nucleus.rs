//! Which tokens a draw may choose: top-k, then top-p over what top-k kept, then min-p.
//!
//! All three keep a prefix of the vocabulary ranked best first ([`Candidate::better_first`]:
//! higher logit, then lower id), so what survives them together is the shortest of the three
//! prefixes. None of them needs the whole vocabulary sorted: top-k and top-p take the best few
//! hundred candidates with a bounded heap (one pass, almost every token rejected by a single
//! comparison), growing only when a flat distribution's nucleus is larger; min-p is a threshold
//! relative to the best logit.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Candidate, SamplingParams};

/// Candidates a bounded heap takes at first for top-p (grown eightfold while too few).
const TOP_P_FIRST_TAKE: usize = 256;
/// Above this k, top-k finds its boundary by selection over a copy instead of a heap.
const HEAP_MAX: usize = 8192;

/// The tokens a draw may choose.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// These candidates, best first (a short list).
    List(Vec<Candidate>),
    /// Every finite token ranked no worse than `bound` (all of them when `None`) whose scaled
    /// logit is at least `floor`.
    Threshold { bound: Option<Candidate>, floor: f32 },
}

/// A row of logits seen through the temperature: `scaled(i) = logits[i] / temperature`.
#[derive(Clone, Copy)]
pub struct Scaled<'a> {
    pub logits: &'a [f32],
    pub temperature: f32,
}

impl Scaled<'_> {
    #[inline]
    pub fn at(&self, i: usize) -> f32 {
        self.logits[i] / self.temperature
    }

    /// The best candidate (`None` when every logit is -inf) and the number of finite tokens.
    pub fn best(&self) -> (Option<Candidate>, usize) {
        // On raw logits: dividing by a positive temperature keeps their order.
        let mut best: Option<(usize, f32)> = None;
        let mut finite = 0;
        for (i, &l) in self.logits.iter().enumerate() {
            if l == f32::NEG_INFINITY {
                continue;
            }
            finite += 1;
            // Strictly greater: the lower id wins a tie.
            if best.is_none_or(|(_, b)| l > b) {
                best = Some((i, l));
            }
        }
        (best.map(|(i, l)| Candidate::new(i as u32, l / self.temperature)), finite)
    }

    /// `Σ exp(scaled - max)` in f64 over every finite token.
    pub fn mass(&self, max: f32) -> f64 {
        self.logits.iter().filter(|&&l| l != f32::NEG_INFINITY).map(|&l| ((l / self.temperature - max) as f64).exp()).sum()
    }

    /// The `n` best candidates, best first (fewer when fewer are finite).
    pub fn top(&self, n: usize) -> Vec<Candidate> {
        if n == 0 {
            return Vec::new();
        }
        // A max-heap under "worse first" keeps the worst kept candidate on top. It holds raw
        // logits (the temperature keeps their order) and almost every token is turned away by
        // one float comparison with the worst kept.
        struct Worst(Candidate);
        impl PartialEq for Worst {
            fn eq(&self, o: &Self) -> bool {
                self.cmp(o) == Ordering::Equal
            }
        }
        impl Eq for Worst {}
        impl PartialOrd for Worst {
            fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Worst {
            fn cmp(&self, o: &Self) -> Ordering {
                Candidate::better_first(&self.0, &o.0)
            }
        }
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(n + 1);
        let mut floor = f32::NEG_INFINITY;
        for (i, &l) in self.logits.iter().enumerate() {
            if l < floor || l == f32::NEG_INFINITY {
                continue;
            }
            let c = Candidate::new(i as u32, l);
            if heap.len() < n {
                heap.push(Worst(c));
            } else if let Some(mut worst) = heap.peek_mut() {
                if Candidate::better_first(&c, &worst.0) == Ordering::Less {
                    *worst = Worst(c);
                }
            }
            if heap.len() == n {
                floor = heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.logit);
            }
        }
        let mut out: Vec<Candidate> = heap.into_iter().map(|w| Candidate::new(w.0.id, w.0.logit / self.temperature)).collect();
        out.sort_unstable_by(Candidate::better_first);
        out
    }

    /// The k-th best candidate (1-based), by selection over a copy of the finite ones.
    fn kth(&self, k: usize) -> Option<Candidate> {
        let mut all: Vec<Candidate> = self
            .logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != f32::NEG_INFINITY)
            .map(|(i, &l)| Candidate::new(i as u32, l / self.temperature))
            .collect();
        if k == 0 || k > all.len() {
            return None;
        }
        all.select_nth_unstable_by(k - 1, Candidate::better_first);
        Some(all[k - 1])
    }
}

/// What top-k, top-p and min-p keep of `row` (at least the best token). `best` and `finite`
/// are [`Scaled::best`]'s.
pub fn nucleus(row: Scaled<'_>, params: &SamplingParams, best: Candidate, finite: usize) -> Kept {
    let max = best.logit;
    // min-p: p_i >= min_p * p_max, i.e. scaled_i - max >= ln(min_p).
    let floor = if params.min_p > 0.0 { max + (params.min_p as f64).ln() as f32 } else { f32::NEG_INFINITY };
    let limit = if params.top_k > 0 { params.top_k.min(finite) } else { finite };
    let keep_floor = |mut list: Vec<Candidate>| {
        list.retain(|c| c.logit >= floor);
        Kept::List(list)
    };

    if params.top_p >= 1.0 {
        if limit >= finite {
            return Kept::Threshold { bound: None, floor };
        }
        if limit <= HEAP_MAX {
            return keep_floor(row.top(limit));
        }
        return Kept::Threshold { bound: row.kth(limit), floor };
    }

    // top-p over the top-k survivors: renormalize over them.
    let target = params.top_p as f64
        * if limit >= finite {
            row.mass(max)
        } else if limit <= HEAP_MAX {
            row.top(limit).iter().map(|c| ((c.logit - max) as f64).exp()).sum::<f64>()
        } else {
            let bound = row.kth(limit);
            let mut z = 0f64;
            for (i, &l) in row.logits.iter().enumerate() {
                let c = Candidate::new(i as u32, l / row.temperature);
                if l != f32::NEG_INFINITY && bound.is_none_or(|b| Candidate::better_first(&c, &b) != Ordering::Greater) {
                    z += ((c.logit - max) as f64).exp();
                }
            }
            z
        };
    let mut take = TOP_P_FIRST_TAKE.min(limit);
    loop {
        let top = row.top(take);
        // Keep a candidate while the mass ranked before it is < p of the total.
        let mut before = 0f64;
        let mut keep = None;
        for (j, c) in top.iter().enumerate() {
            if before >= target {
                keep = Some(j);
                break;
            }
            before += ((c.logit - max) as f64).exp();
        }
        if keep.is_none() && before >= target {
            keep = Some(top.len());
        }
        match keep {
            Some(n) => return keep_floor(top[..n].to_vec()),
            None if take >= limit => return keep_floor(top),
            None => take = (take * 8).min(limit),
        }
    }
}
