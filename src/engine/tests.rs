//! The engine against a scripted model that stores each token in the KV slot its block table
//! names and computes the next token from the whole history it reads back through the table: a
//! wrong block table, a token fed twice, a sequence mixed with another or a reused block with the
//! wrong content all change the outputs.

use std::sync::Arc;

use super::shared::{Next, SharedEngine};
use super::*;
use crate::model::{FedToken, KvPool, ModelConfig};
use crate::sampling::{self, SamplingParams};

const VOCAB: usize = 16;
const EOS: u32 = 15;

/// Token pieces of the fake vocabulary: ASCII letters, plus "é" and "日" split over tokens.
fn token_bytes(t: u32) -> Vec<u8> {
    match t {
        10 => vec![0xC3],       // first byte of "é"
        11 => vec![0xA9],       // second byte of "é"
        12 => vec![0xE6, 0x97], // first two bytes of "日"
        13 => vec![0xA5],       // last byte of "日"
        14 => b"\n".to_vec(),
        EOS => b"<eos>".to_vec(),
        t => vec![b'a' + t as u8],
    }
}

#[derive(Default)]
struct FakeDecoder(Vec<u8>);

impl TextDecoder for FakeDecoder {
    fn push(&mut self, token: u32) -> Result<String, TokenizerError> {
        self.0.extend(token_bytes(token));
        let valid = match std::str::from_utf8(&self.0) {
            Ok(_) => self.0.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&self.0[..valid]).into_owned();
        self.0.drain(..valid);
        Ok(text)
    }
    fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.0).into_owned();
        self.0.clear();
        text
    }
}

type Rule = fn(&[u32]) -> u32;

/// Letters a..j cycling on the sum of the history: depends on every token fed.
fn cycling(h: &[u32]) -> u32 {
    (h.iter().sum::<u32>() + h.len() as u32) % 10
}

struct FakeModel {
    config: ModelConfig,
    pool: KvPool,
    /// (token, position) written to each slot.
    slots: Vec<Option<(u32, u32)>>,
    rule: Rule,
    /// Tokens per sequence of each forward.
    calls: Arc<std::sync::Mutex<Vec<Vec<usize>>>>,
    fail_on_call: Option<usize>,
    n_calls: usize,
    max_batch: usize,
    /// Draw sets queued and not yet taken, and the tokens of the last one (what fed tokens are).
    queued: std::collections::VecDeque<Vec<Result<Sampled, SamplingError>>>,
    last_drawn: Vec<u32>,
}

impl FakeModel {
    fn new(rule: Rule, context_length: usize, kv_tokens: usize) -> FakeModel {
        let bt = 4;
        FakeModel {
            config: ModelConfig {
                arch: "fake".into(),
                n_layers: 1,
                hidden_size: 1,
                ffn_size: 1,
                n_heads: 1,
                n_kv_heads: 1,
                head_dim: 1,
                vocab_size: VOCAB,
                context_length,
                rope_freq_base: 1.0,
                rope_scale: 1.0,
                rms_norm_eps: 1e-6,
                tied_embeddings: false,
            },
            pool: KvPool { n_blocks: kv_tokens.div_ceil(bt), block_tokens: bt },
            slots: vec![None; kv_tokens.div_ceil(bt) * bt],
            rule,
            calls: Arc::default(),
            fail_on_call: None,
            n_calls: 0,
            max_batch: 64,
            queued: Default::default(),
            last_drawn: Vec::new(),
        }
    }

    /// Writes the chunk's tokens to their slots; returns each sequence's whole history, read
    /// back through its block table.
    fn run(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<u32>>, ModelError> {
        self.n_calls += 1;
        if self.fail_on_call == Some(self.n_calls) {
            return Err(ModelError::Invalid("scripted failure".into()));
        }
        self.calls.lock().unwrap().push(batch.iter().map(|b| b.tokens.len()).collect());
        assert!(batch.iter().all(|b| b.tokens.iter().all(|&t| (t as usize) < VOCAB)), "a token the host has not seen was fed as it is");
        let bt = self.pool.block_tokens;
        let slot = |table: &[u32], pos: usize| table[pos / bt] as usize * bt + pos % bt;
        for b in batch {
            assert!(b.block_table.len() * bt >= b.n_past + b.tokens.len(), "block table too short");
            for (j, &t) in b.tokens.iter().enumerate() {
                let pos = b.n_past + j;
                self.slots[slot(b.block_table, pos)] = Some((t, pos as u32));
            }
        }
        Ok(batch
            .iter()
            .map(|b| {
                (0..b.n_past + b.tokens.len())
                    .map(|pos| {
                        let (t, p) = self.slots[slot(b.block_table, pos)].expect("a position read before it was written");
                        assert_eq!(p as usize, pos, "slot holds another position: blocks mixed up");
                        t
                    })
                    .collect()
            })
            .collect())
    }

    /// The forward of `batch` and a draw for each of `samples`.
    fn draw(&mut self, batch: &[SeqChunk<'_>], samples: &[RowSample<'_>]) -> Result<Vec<Result<Sampled, SamplingError>>, ModelError> {
        let histories = self.run(batch)?;
        let rows: Vec<f32> = samples.iter().flat_map(|r| self.logits(&histories[r.seq])).collect();
        let specs: Vec<_> = samples.iter().map(|r| r.spec).collect();
        let mut out = Vec::new();
        sampling::sample_rows(&rows, VOCAB, &specs, &mut out);
        Ok(out)
    }

    fn logits(&self, history: &[u32]) -> Vec<f32> {
        let mut row = vec![0.0f32; VOCAB];
        row[(self.rule)(history) as usize] = 10.0;
        row
    }
}

impl LanguageModel for FakeModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn device(&self) -> String {
        "fake".into()
    }
    fn kv_pool(&self) -> KvPool {
        self.pool
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn forward(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError> {
        assert_eq!(logits_for, LogitsFor::LastToken);
        let histories = self.run(batch)?;
        Ok(histories.iter().flat_map(|h| self.logits(h)).collect())
    }
    fn forward_rows(&mut self, batch: &[SeqChunk<'_>], logits_for: LogitsFor) -> Result<crate::backend::OwnedRows, ModelError> {
        Ok(crate::backend::OwnedRows::Host(self.forward(batch, logits_for)?))
    }
    fn queues_work(&self) -> bool {
        false
    }
    fn queue_forward_sample(&mut self, batch: &[SeqChunk<'_>], samples: &[RowSample<'_>], fed: &[FedToken]) -> Result<(), ModelError> {
        assert!(self.queued.len() < 2, "at most two queued forwards await their draws");
        let mut tokens: Vec<Vec<u32>> = batch.iter().map(|b| b.tokens.to_vec()).collect();
        for f in fed {
            assert_eq!(tokens[f.seq], [request::UNSEEN], "a fed sequence has one new token, the unseen one");
            tokens[f.seq][0] = self.last_drawn[f.draw];
        }
        let batch: Vec<SeqChunk<'_>> = batch.iter().zip(&tokens).map(|(b, t)| SeqChunk { tokens: t, ..*b }).collect();
        let drawn = self.draw(&batch, samples)?;
        self.last_drawn = drawn.iter().map(|d| d.as_ref().map_or(0, |d| d.token)).collect();
        self.queued.push_back(drawn);
        Ok(())
    }
    fn take_draws(&mut self) -> Result<Vec<Result<Sampled, SamplingError>>, ModelError> {
        Ok(self.queued.pop_front().expect("a queued forward"))
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> Request {
    Request {
        prompt,
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop_strings: vec![],
        stop_token_ids: vec![],
        eog_token_ids: vec![EOS],
        ignore_eos: false,
        logprobs: None,
        decoder: Box::new(FakeDecoder::default()),
    }
}

thread_local! {
    /// Whether the engines this test thread makes queue each step before taking the last.
    static OVERLAP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn config(max_batch: usize, max_step_tokens: usize, prefix_caching: bool) -> EngineConfig {
    EngineConfig { max_batch, max_step_tokens, prefix_caching, overlap: OVERLAP.with(|o| o.get()) }
}

fn engine(model: FakeModel) -> Engine {
    Engine::new(Box::new(model), config(64, 64, true)).unwrap()
}

/// Runs the engine until every request finished; the generation of each, by id.
fn drain(e: &mut Engine, gens: &mut HashMap<RequestId, Generation>) {
    let mut guard = 0;
    while e.has_work() {
        for out in e.step() {
            gens.get_mut(&out.id).expect("known request").absorb(&out);
        }
        guard += 1;
        assert!(guard < 100_000, "the engine does not finish");
    }
}

fn run_all(e: &mut Engine, reqs: Vec<Request>) -> Vec<Generation> {
    let mut gens = HashMap::new();
    let ids: Vec<RequestId> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let id = 1000 + i as u64;
            gens.insert(id, Generation::new(r.prompt.clone(), r.sampling.seed, r.logprobs));
            e.submit(id, r).unwrap();
            id
        })
        .collect();
    drain(e, &mut gens);
    ids.iter().map(|id| gens.remove(id).unwrap()).collect()
}

/// The greedy continuation by the rule directly.
fn expected(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut h = prompt.to_vec();
    for _ in 0..n {
        h.push(cycling(&h));
    }
    h[prompt.len()..].to_vec()
}

fn prompts(n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n).map(|i| (0..len + i % 5).map(|j| ((i * 7 + j * 3) % 10) as u32).collect()).collect()
}

#[test]
fn batch_equals_each_prompt_alone_and_the_rule() {
    let ps = prompts(5, 9);
    let mut e = engine(FakeModel::new(cycling, 256, 1024));
    let gens = run_all(&mut e, ps.iter().map(|p| request(p.clone(), 12)).collect());
    for (p, g) in ps.iter().zip(&gens) {
        assert_eq!(g.token_ids, expected(p, 12));
        assert_eq!(g.finish, Some(FinishReason::Length));
        let text: String = g.token_ids.iter().map(|&t| (b'a' + t as u8) as char).collect();
        assert_eq!(g.text, text);
        assert_eq!(g.timings.prompt_tokens, p.len());
        assert_eq!(g.timings.decode_tokens, 11);
    }
    assert_eq!(e.stats().kv_blocks_used, 0, "finished requests free their blocks");
}

#[test]
fn requests_joining_and_leaving_mid_flight_get_their_own_tokens() {
    let ps = prompts(6, 5);
    let mut e = engine(FakeModel::new(cycling, 256, 1024));
    let mut gens = HashMap::new();
    for (i, p) in ps.iter().enumerate() {
        let id = i as u64;
        // Different lengths so they leave at different steps; each joins two steps after the last.
        gens.insert(id, Generation::new(p.clone(), 0, None));
        e.submit(id, request(p.clone(), 3 + 2 * i)).unwrap();
        for _ in 0..2 {
            for out in e.step() {
                gens.get_mut(&out.id).unwrap().absorb(&out);
            }
        }
    }
    drain(&mut e, &mut gens);
    for (i, p) in ps.iter().enumerate() {
        assert_eq!(gens[&(i as u64)].token_ids, expected(p, 3 + 2 * i), "request {i}");
    }
}

#[test]
fn a_small_cache_serves_more_than_it_could_reserve_and_equals_each_alone() {
    // 16 prompts of ~20 tokens with max_tokens 512 each: 8,500 positions if reserved up front,
    // against a pool of 2,048. They all run; some are preempted and recomputed.
    let ps = prompts(16, 20);
    let mut e = engine(FakeModel::new(cycling, 4096, 2048));
    let gens = run_all(&mut e, ps.iter().map(|p| request(p.clone(), 512)).collect());
    for (p, g) in ps.iter().zip(&gens) {
        assert_eq!(g.token_ids, expected(p, 512));
    }
    assert!(e.stats().preemptions > 0, "the pool is too small to hold them all at their end");
    assert_eq!(e.stats().kv_blocks_used, 0);
}

#[test]
fn preemption_under_a_tiny_cache_completes_everything() {
    let ps = prompts(8, 6);
    // 64 positions: room for about two sequences at a time at their end.
    let mut e = engine(FakeModel::new(cycling, 256, 64));
    let gens = run_all(&mut e, ps.iter().map(|p| request(p.clone(), 20)).collect());
    for (p, g) in ps.iter().zip(&gens) {
        assert_eq!(g.token_ids, expected(p, 20));
    }
    assert!(e.stats().preemptions > 0);
}

#[test]
fn sampled_requests_draw_the_same_tokens_alone_and_in_a_batch() {
    fn spread(h: &[u32]) -> u32 {
        cycling(h)
    }
    let mk = |p: &Vec<u32>, seed| Request {
        sampling: SamplingParams { temperature: 1.5, seed, ..Default::default() },
        ..request(p.clone(), 10)
    };
    let ps = prompts(4, 7);
    let mut batch = engine(FakeModel::new(spread, 256, 1024));
    let together = run_all(&mut batch, ps.iter().enumerate().map(|(i, p)| mk(p, 40 + i as u64)).collect());
    for (i, p) in ps.iter().enumerate() {
        let mut alone = engine(FakeModel::new(spread, 256, 1024));
        let one = run_all(&mut alone, vec![mk(p, 40 + i as u64)]);
        assert_eq!(one[0].token_ids, together[i].token_ids);
    }
}

#[test]
fn prefix_reuse_gives_the_same_tokens_and_reports_reused_tokens() {
    let shared: Vec<u32> = (0..18).map(|i| (i * 3 % 10) as u32).collect();
    let mut a = shared.clone();
    a.extend([1, 2, 3]);
    let mut b = shared.clone();
    b.extend([4, 5]);
    let model = FakeModel::new(cycling, 256, 1024);
    let calls = model.calls.clone();
    let mut e = engine(model);
    let first = run_all(&mut e, vec![request(a.clone(), 6)]);
    let second = run_all(&mut e, vec![request(b.clone(), 6)]);
    assert_eq!(first[0].timings.cached_prompt_tokens, 0);
    // 18 shared tokens: four full blocks of 4.
    assert_eq!(second[0].timings.cached_prompt_tokens, 16);
    assert_eq!(second[0].token_ids, expected(&b, 6));
    // The same prompt again reuses all but its last token's block.
    let third = run_all(&mut e, vec![request(a.clone(), 6)]);
    assert_eq!(third[0].timings.cached_prompt_tokens, 20);
    assert_eq!(third[0].token_ids, first[0].token_ids);
    // Its first forward computed only the last block's tokens.
    assert_eq!(calls.lock().unwrap().iter().rev().nth(5).unwrap(), &vec![1]);
}

#[test]
fn a_request_ended_by_its_first_draw_leaves_its_prompt_cached() {
    // Two full blocks of 4 and one token more; one new token, so the prefill is the last step.
    let prompt: Vec<u32> = (0..9).map(|i| (i * 3 % 10) as u32).collect();
    let mut e = engine(FakeModel::new(cycling, 256, 1024));
    let first = run_all(&mut e, vec![request(prompt.clone(), 1)]);
    let again = run_all(&mut e, vec![request(prompt.clone(), 1)]);
    assert_eq!(again[0].timings.cached_prompt_tokens, 8);
    assert_eq!(again[0].token_ids, first[0].token_ids);
}

#[test]
fn cancel_frees_blocks_at_once_and_ends_with_cancelled() {
    let mut e = engine(FakeModel::new(cycling, 256, 1024));
    let mut gens = HashMap::from([(2, Generation::new(vec![2; 10], 0, None))]);
    e.submit(1, request(vec![1; 30], 100)).unwrap();
    e.submit(2, request(vec![2; 10], 5)).unwrap();
    for _ in 0..2 {
        for out in e.step().into_iter().filter(|o| o.id == 2) {
            gens.get_mut(&2).unwrap().absorb(&out);
        }
    }
    let used = e.stats().kv_blocks_used;
    assert!(used >= 10);
    assert!(e.cancel(1));
    assert!(e.stats().kv_blocks_used < used - 7, "its blocks are free before the next step");
    assert!(!e.cancel(1));
    let outs = e.step();
    let last = outs.iter().find(|o| o.id == 1).expect("the cancellation is reported");
    assert_eq!(last.finish, Some(FinishReason::Cancelled));
    for out in outs.iter().filter(|o| o.id == 2) {
        gens.get_mut(&2).unwrap().absorb(out);
    }
    drain(&mut e, &mut gens);
    assert_eq!(gens[&2].token_ids.len(), 5);
}

#[test]
fn chunked_prefill_runs_beside_decoding_sequences() {
    let model = FakeModel::new(cycling, 256, 1024);
    let calls = model.calls.clone();
    let mut e = Engine::new(Box::new(model), config(8, 8, false)).unwrap();
    let short = vec![1, 2];
    let long: Vec<u32> = (0..30).map(|i| (i % 10) as u32).collect();
    let gens = {
        let mut gens = HashMap::new();
        gens.insert(1, Generation::new(short.clone(), 0, None));
        e.submit(1, request(short.clone(), 12)).unwrap();
        for out in e.step() {
            gens.get_mut(&out.id).unwrap().absorb(&out);
        }
        gens.insert(2, Generation::new(long.clone(), 0, None));
        e.submit(2, request(long.clone(), 3)).unwrap();
        drain(&mut e, &mut gens);
        gens
    };
    assert_eq!(gens[&1].token_ids, expected(&short, 12));
    assert_eq!(gens[&2].token_ids, expected(&long, 3));
    // The long prompt went in chunks of at most 8 tokens, each beside the short one's decode token.
    let calls = calls.lock().unwrap().clone();
    assert!(calls.iter().all(|c| c.iter().sum::<usize>() <= 8), "{calls:?}");
    assert!(calls.iter().any(|c| c.len() == 2 && c[0] == 1 && c[1] == 7), "{calls:?}");
}


#[test]
fn stop_strings_split_across_tokens_cut_the_text() {
    fn rule(h: &[u32]) -> u32 {
        (h.len() as u32) % 10
    }
    let mut e = engine(FakeModel::new(rule, 256, 1024));
    let mut r = request(vec![0], 20);
    r.stop_strings = vec!["de".into()];
    let mut pieces = String::new();
    e.submit(1, r).unwrap();
    let mut g = Generation::new(vec![0], 0, None);
    while e.has_work() {
        for out in e.step() {
            pieces.push_str(&out.text);
            g.absorb(&out);
        }
    }
    assert_eq!(g.token_ids, vec![1, 2, 3, 4]);
    assert_eq!(g.text, "bc");
    assert_eq!(pieces, "bc", "no part of the stop string leaks into the stream");
    assert_eq!(g.finish, Some(FinishReason::Stop));
}

#[test]
fn eos_stop_ids_and_split_characters() {
    fn rule(h: &[u32]) -> u32 {
        // é (10, 11), then 日 (12, 13), then EOS.
        [10, 11, 12, 13, EOS][(h.len() - 1).min(4)]
    }
    let mut e = engine(FakeModel::new(rule, 256, 1024));
    let g = run_all(&mut e, vec![request(vec![0], 10)]);
    assert_eq!(g[0].text, "é日");
    assert_eq!(g[0].finish, Some(FinishReason::Eos));
    let mut r = request(vec![0], 10);
    r.ignore_eos = true;
    r.stop_token_ids = vec![12];
    let g = run_all(&mut e, vec![r]);
    assert_eq!(g[0].token_ids, vec![10, 11, 12]);
    assert_eq!(g[0].text, "é", "the stop token's bytes are not text");
    assert_eq!(g[0].finish, Some(FinishReason::Stop));
}

#[test]
fn limits_are_checked_at_submit() {
    let mut e = engine(FakeModel::new(cycling, 64, 48));
    assert!(matches!(e.submit(1, request(vec![], 4)), Err(EngineError::EmptyPrompt)));
    assert!(matches!(e.submit(1, request(vec![1; 64], 4)), Err(EngineError::PromptTooLong { .. })));
    assert!(matches!(e.submit(1, request(vec![99], 4)), Err(EngineError::Model(ModelError::BadTokenId { .. }))));
    // 40 + 20 positions do not fit 48, whatever else runs.
    assert!(matches!(e.submit(1, request(vec![1; 40], 20)), Err(EngineError::TooLongForCache { .. })));
    let mut r = request(vec![1], 4);
    r.logprobs = Some(21);
    assert!(matches!(e.submit(1, r), Err(EngineError::TooManyLogprobs(21))));
    let mut r = request(vec![1], 4);
    r.stop_strings = vec![String::new()];
    assert!(matches!(e.submit(1, r), Err(EngineError::EmptyStopString)));
    // Nothing to generate: done at once.
    e.submit(7, request(vec![1], 0)).unwrap();
    let outs = e.step();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].finish, Some(FinishReason::Length));
}

#[test]
fn a_request_that_can_never_get_room_fails_alone() {
    let mut e = engine(FakeModel::new(cycling, 256, 64));
    // A hand-driven sequence holds most of the pool.
    let s = e.new_sequence(60).unwrap();
    e.forward(&[(Some(s), vec![1; 56])], LogitsFor::LastToken).unwrap();
    e.submit(1, request(vec![2; 20], 4)).unwrap();
    let outs = e.step();
    assert_eq!(outs[0].finish, Some(FinishReason::Error));
    assert!(outs[0].error.as_deref().unwrap().contains("KV cache full"));
    e.free_sequence(s).unwrap();
    let g = run_all(&mut e, vec![request(vec![2; 20], 4)]);
    assert_eq!(g[0].token_ids, expected(&[2; 20], 4));
}

#[test]
fn a_failed_forward_fails_that_steps_requests_and_the_engine_goes_on() {
    let mut model = FakeModel::new(cycling, 256, 1024);
    model.fail_on_call = Some(2);
    let mut e = engine(model);
    let g = run_all(&mut e, vec![request(vec![1, 2], 5), request(vec![3], 5)]);
    assert!(g.iter().all(|g| g.finish == Some(FinishReason::Error)));
    assert!(g[0].error.as_deref().unwrap().contains("scripted failure"));
    assert_eq!(e.stats().kv_blocks_used, 0);
    let g = run_all(&mut e, vec![request(vec![1, 2], 5)]);
    assert_eq!(g[0].token_ids, expected(&[1, 2], 5));
}

#[test]
fn logprobs_come_with_each_token() {
    let mut e = engine(FakeModel::new(cycling, 256, 1024));
    let mut r = request(vec![1, 2], 4);
    r.logprobs = Some(3);
    let g = run_all(&mut e, vec![r]);
    let lps = g[0].logprobs.as_ref().unwrap();
    let tops = g[0].top_logprobs.as_ref().unwrap();
    assert_eq!(lps.len(), 4);
    assert_eq!(tops.len(), 4);
    // The fake row is 10 at the chosen token and 0 elsewhere.
    let want = 10.0 - (10f64.exp() + 15.0).ln();
    for (lp, top) in lps.iter().zip(tops) {
        assert!((*lp as f64 - want).abs() < 1e-5);
        assert_eq!(top.len(), 3);
        assert_eq!(top[0].1, *lp);
    }
}

#[test]
fn hand_driven_sequences_share_the_pool() {
    let mut e = engine(FakeModel::new(cycling, 64, 64));
    let s = e.new_sequence(10).unwrap();
    e.forward(&[(Some(s), vec![1, 2, 3])], LogitsFor::LastToken).unwrap();
    e.forward(&[(Some(s), vec![4])], LogitsFor::LastToken).unwrap();
    assert_eq!(e.sequence_len(s).unwrap(), 4);
    assert!(matches!(e.forward(&[(Some(s), vec![1; 7])], LogitsFor::LastToken), Err(EngineError::SequenceFull { needed: 11, room: 10 })));
    assert_eq!(e.stats().kv_blocks_used, 1);
    // A fresh sequence borrows blocks for the call only.
    e.forward(&[(None, vec![5; 9])], LogitsFor::LastToken).unwrap();
    assert_eq!(e.stats().kv_blocks_used, 1);
    e.free_sequence(s).unwrap();
    assert_eq!(e.stats().kv_blocks_used, 0);
    assert!(matches!(e.free_sequence(s), Err(EngineError::NoSuchSequence(_))));
}

#[test]
fn threads_submit_and_wait_together() {
    let shared = Arc::new(SharedEngine::new(engine(FakeModel::new(cycling, 512, 4096))));
    let ps = prompts(12, 8);
    let handles: Vec<_> = ps
        .iter()
        .cloned()
        .map(|p| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let id = shared.submit(request(p.clone(), 15)).unwrap();
                let mut tokens = Vec::new();
                loop {
                    match shared.next(id, Some(std::time::Duration::from_secs(10))) {
                        Next::Output(o) => tokens.extend(o.token_ids),
                        Next::Done => break,
                        Next::Timeout => panic!("no output within 10 s"),
                    }
                }
                (p, tokens)
            })
        })
        .collect();
    for h in handles {
        let (p, tokens) = h.join().unwrap();
        assert_eq!(tokens, expected(&p, 15));
    }
    assert!(!shared.has_work());
    assert_eq!(shared.stats().kv_blocks_used, 0);
    // A forgotten request is cancelled and frees its blocks.
    let id = shared.submit(request(vec![1; 20], 100)).unwrap();
    let _ = shared.next(id, None);
    assert!(shared.stats().kv_blocks_used > 0);
    shared.forget(id);
    assert_eq!(shared.stats().kv_blocks_used, 0);
    assert!(!shared.has_work());
}

/// Every scenario above again with each step queued before the last one's draws are taken (what
/// a GPU model does): the same tokens, texts, finish reasons and freed blocks.
#[test]
fn every_scenario_again_with_overlapped_steps() {
    OVERLAP.with(|o| o.set(true));
    batch_equals_each_prompt_alone_and_the_rule();
    requests_joining_and_leaving_mid_flight_get_their_own_tokens();
    a_small_cache_serves_more_than_it_could_reserve_and_equals_each_alone();
    preemption_under_a_tiny_cache_completes_everything();
    sampled_requests_draw_the_same_tokens_alone_and_in_a_batch();
    prefix_reuse_gives_the_same_tokens_and_reports_reused_tokens();
    a_request_ended_by_its_first_draw_leaves_its_prompt_cached();
    cancel_frees_blocks_at_once_and_ends_with_cancelled();
    chunked_prefill_runs_beside_decoding_sequences();
    stop_strings_split_across_tokens_cut_the_text();
    eos_stop_ids_and_split_characters();
    limits_are_checked_at_submit();
    a_request_that_can_never_get_room_fails_alone();
    a_failed_forward_fails_that_steps_requests_and_the_engine_goes_on();
    logprobs_come_with_each_token();
    hand_driven_sequences_share_the_pool();
    threads_submit_and_wait_together();
}

/// With overlap, a step is queued before the previous step's draws are seen: decode steps feed
/// the unseen token on the device, and only a draw that ends its sequence costs a step that is
/// dropped.
#[test]
fn overlapped_steps_feed_unseen_tokens_and_drop_the_step_after_an_end() {
    OVERLAP.with(|o| o.set(true));
    fn rule(h: &[u32]) -> u32 {
        // Three letters, then end of text.
        if h.len() >= 4 { EOS } else { h.len() as u32 }
    }
    let model = FakeModel::new(rule, 256, 1024);
    let calls = model.calls.clone();
    let mut e = engine(model);
    e.submit(1, request(vec![0], 10)).unwrap();
    // The first call queues the prompt and returns nothing: its draw is still on the device.
    assert!(e.step().is_empty());
    assert!(e.has_work());
    let mut g = Generation::new(vec![0], 0, None);
    while g.finish.is_none() {
        for out in e.step() {
            g.absorb(&out);
        }
    }
    assert_eq!(g.token_ids, vec![1, 2, 3, EOS]);
    assert_eq!(g.finish, Some(FinishReason::Eos));
    // Prompt, three decode steps, and one more queued before the end of text was seen, which the
    // call that saw it took at once: the engine holds nothing.
    assert_eq!(calls.lock().unwrap().len(), 5);
    assert!(!e.has_work());
    assert_eq!(e.stats().steps, 5);
    assert_eq!(e.stats().kv_blocks_used, 0);
}

/// Penalties make a draw depend on every token before it: such a sequence waits for its last
/// draw, and its tokens equal those of an engine without overlap.
#[test]
fn overlapped_steps_wait_for_draws_that_penalties_need() {
    let run = |overlap: bool| {
        OVERLAP.with(|o| o.set(overlap));
        let mut e = engine(FakeModel::new(cycling, 256, 1024));
        let reqs = prompts(3, 6)
            .into_iter()
            .enumerate()
            .map(|(i, p)| Request {
                sampling: SamplingParams { temperature: 1.0, seed: 7 + i as u64, frequency_penalty: 4.0, ..Default::default() },
                ..request(p, 12)
            })
            .collect();
        run_all(&mut e, reqs).into_iter().map(|g| g.token_ids).collect::<Vec<_>>()
    };
    assert_eq!(run(true), run(false));
}
