//! The chain against brute-force versions of its definitions: a full sort for the filters, the
//! Gumbel-max over every kept token for the draw, a direct log-softmax for log-probabilities.

use super::*;

/// Deterministic pseudo-random logits in [-scale, scale).
fn random_logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((noise::uniform(noise::draw_key(seed, 99), i as u32) * 2.0 - 1.0) as f32) * scale).collect()
}

fn spec(params: &SamplingParams, draw_index: u64) -> SampleSpec<'_> {
    SampleSpec { params, draw_index, history: None, logprobs: None }
}

/// The kept set by definition: sort everything, apply top-k, top-p (renormalized), min-p.
fn brute_kept(logits: &[f32], p: &SamplingParams) -> Vec<u32> {
    let t = p.temperature;
    let mut all: Vec<Candidate> = logits
        .iter()
        .enumerate()
        .filter(|(_, &l)| l != f32::NEG_INFINITY)
        .map(|(i, &l)| Candidate::new(i as u32, l / t))
        .collect();
    all.sort_by(Candidate::better_first);
    if p.top_k > 0 {
        all.truncate(p.top_k);
    }
    let max = all[0].logit;
    if p.top_p < 1.0 {
        let total: f64 = all.iter().map(|c| ((c.logit - max) as f64).exp()).sum();
        let mut before = 0.0;
        let mut keep = all.len();
        for (j, c) in all.iter().enumerate() {
            if before >= p.top_p as f64 * total {
                keep = j;
                break;
            }
            before += ((c.logit - max) as f64).exp();
        }
        all.truncate(keep);
    }
    let floor = if p.min_p > 0.0 { max + (p.min_p as f64).ln() as f32 } else { f32::NEG_INFINITY };
    all.retain(|c| c.logit >= floor);
    let mut ids: Vec<u32> = all.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn filters_equal_their_sorted_definitions() {
    let cases = [
        (0, 1.0, 0.0),
        (40, 0.95, 0.05),
        (1, 1.0, 0.0),
        (5, 1.0, 0.0),
        (0, 0.9, 0.0),
        (0, 0.999, 0.0),
        (0, 1.0, 0.3),
        (10_000, 0.5, 0.0),
        (200, 0.5, 0.01),
    ];
    for (seed, (top_k, top_p, min_p)) in cases.into_iter().enumerate() {
        // A peaked row and a flat one whose nucleus is far larger than the first heap take.
        for scale in [6.0f32, 0.2] {
            let logits = random_logits(30_000, seed as u64, scale);
            let p = SamplingParams { temperature: 0.8, top_k, top_p, min_p, ..Default::default() };
            let mut s = Sampler::new(&p, logits.len(), &[]).unwrap();
            let mut got: Vec<u32> = s.candidates(&logits).unwrap().iter().map(|c| c.id).collect();
            got.sort_unstable();
            assert_eq!(got, brute_kept(&logits, &p), "k={top_k} p={top_p} min_p={min_p} scale={scale}");
        }
    }
}

#[test]
fn draw_is_the_gumbel_max_over_the_kept_set() {
    for (i, (top_k, top_p, min_p)) in [(0, 1.0, 0.0), (40, 0.95, 0.05), (0, 1.0, 0.1), (20_000, 1.0, 0.0)].into_iter().enumerate() {
        let logits = random_logits(50_000, i as u64, 4.0);
        let p = SamplingParams { temperature: 1.3, top_k, top_p, min_p, seed: 77, ..Default::default() };
        let kept = brute_kept(&logits, &p);
        for draw in 0..20u64 {
            let key = noise::draw_key(p.seed, draw);
            let want = kept
                .iter()
                .map(|&id| (logits[id as usize] / p.temperature + noise::gumbel(key, id), id))
                .fold((f32::NEG_INFINITY, u32::MAX), |a, b| if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) { b } else { a })
                .1;
            let got = sample_row(&logits, &spec(&p, draw), &mut Vec::new()).unwrap().token;
            assert_eq!(got, want, "case {i} draw {draw}");
        }
    }
}

#[test]
fn draws_follow_the_softmax() {
    let logits = vec![0.0f32, 1.0, 2.0, -1.0, f32::NEG_INFINITY];
    let p = SamplingParams { temperature: 0.7, seed: 5, ..Default::default() };
    let weights: Vec<f64> = logits.iter().map(|&l| (l as f64 / 0.7).exp()).collect();
    let total: f64 = weights.iter().sum();
    let n = 40_000;
    let mut counts = [0usize; 5];
    for d in 0..n {
        counts[sample_row(&logits, &spec(&p, d as u64), &mut Vec::new()).unwrap().token as usize] += 1;
    }
    assert_eq!(counts[4], 0);
    for i in 0..4 {
        let q = weights[i] / total;
        let sigma = (n as f64 * q * (1.0 - q)).sqrt();
        assert!((counts[i] as f64 - n as f64 * q).abs() < 5.0 * sigma, "{counts:?} vs p={q}");
    }
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
    // Ties go to the lower id.
    let mut s = Sampler::new(&SamplingParams::greedy(), 4, &[]).unwrap();
    assert_eq!(s.sample(&[0.0, 3.0, 3.0, 1.0]).unwrap(), 1);
}

#[test]
fn same_seed_same_tokens() {
    let params = SamplingParams { temperature: 1.0, seed: 99, ..Default::default() };
    let draw = |params: &SamplingParams| {
        let mut s = Sampler::new(params, 64, &[]).unwrap();
        (0..50).map(|i| s.sample(&random_logits(64, i, 2.0)).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(draw(&params), draw(&params));
    assert_ne!(draw(&params), draw(&SamplingParams { seed: 100, ..params.clone() }));
}

#[test]
fn logprobs_are_the_log_softmax_after_penalties_and_temperature() {
    let logits = random_logits(5000, 3, 5.0);
    let mut history = PenaltyHistory::new(&[1, 2, 3]);
    history.record_output(7);
    history.record_output(7);
    for (temperature, rep) in [(0.0f32, 1.0f32), (0.7, 1.3)] {
        let p = SamplingParams { temperature, repetition_penalty: rep, frequency_penalty: 0.5, seed: 3, ..Default::default() };
        let out = sample_row(&logits, &SampleSpec { params: &p, draw_index: 4, history: Some(&history), logprobs: Some(5) }, &mut Vec::new()).unwrap();
        let mut pen = logits.clone();
        history.apply(&mut pen, rep, 0.0, 0.5);
        let t = if temperature == 0.0 { 1.0 } else { temperature as f64 };
        let scaled: Vec<f64> = pen.iter().map(|&l| l as f64 / t).collect();
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
        assert!((out.logprob.unwrap() as f64 - (scaled[out.token as usize] - lse)).abs() < 1e-4);
        let mut order: Vec<usize> = (0..scaled.len()).collect();
        order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
        assert_eq!(out.top_logprobs.len(), 5);
        for (j, &(id, lp)) in out.top_logprobs.iter().enumerate() {
            assert_eq!(id as usize, order[j]);
            assert!((lp as f64 - (scaled[order[j]] - lse)).abs() < 1e-4);
        }
    }
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
    let mut logits = random_logits(32, 1, 2.0);
    for l in logits.iter_mut().step_by(2) {
        *l = f32::NEG_INFINITY;
    }
    let mut s = Sampler::new(&SamplingParams { temperature: 2.0, seed: 3, ..Default::default() }, 32, &[]).unwrap();
    for _ in 0..500 {
        assert_eq!(s.sample(&logits).unwrap() % 2, 1);
    }
}
