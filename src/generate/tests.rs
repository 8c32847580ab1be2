//! The loop against a scripted model whose next token is a function of the whole sequence, so a
//! wrong KV-cache bookkeeping (a token fed twice, a sequence mixed with another) changes outputs.

use std::collections::HashMap;

use super::*;
use crate::model::ModelConfig;

const VOCAB: usize = 16;
const EOS: u32 = 15;

/// Token pieces of the fake vocabulary: ASCII letters, plus "é" and "日" split over tokens.
fn token_bytes(t: u32) -> Vec<u8> {
    match t {
        10 => vec![0xC3],             // first byte of "é"
        11 => vec![0xA9],             // second byte of "é"
        12 => vec![0xE6, 0x97],       // first two bytes of "日"
        13 => vec![0xA5],             // last byte of "日"
        14 => b"\n".to_vec(),
        EOS => b"<eos>".to_vec(),
        t => vec![b'a' + t as u8],
    }
}

struct FakeDetok;

impl Detokenize for FakeDetok {
    type State = Vec<u8>;
    fn start(&self) -> Vec<u8> {
        Vec::new()
    }
    fn push(&self, state: &mut Vec<u8>, token: u32) -> Result<String, GenerateError> {
        state.extend(token_bytes(token));
        let valid = match std::str::from_utf8(state) {
            Ok(_) => state.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = String::from_utf8_lossy(&state[..valid]).into_owned();
        state.drain(..valid);
        Ok(text)
    }
    fn finish(&self, state: &mut Vec<u8>) -> String {
        let text = String::from_utf8_lossy(state).into_owned();
        state.clear();
        text
    }
}

type Rule = fn(&[u32]) -> u32;

struct FakeModel {
    config: ModelConfig,
    seqs: HashMap<usize, (usize, Vec<u32>)>,
    /// KV-cache token slots shared by all sequences.
    kv_tokens: usize,
    next_id: usize,
    /// Per forward call: tokens per sequence.
    calls: Vec<Vec<usize>>,
    rule: Rule,
    fail_on_call: Option<usize>,
}

impl FakeModel {
    fn new(rule: Rule, context_length: usize) -> Self {
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
            seqs: HashMap::new(),
            kv_tokens: usize::MAX,
            next_id: 7,
            calls: Vec::new(),
            rule,
            fail_on_call: None,
        }
    }
}

impl LanguageModel for FakeModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn device(&self) -> String {
        "fake".into()
    }
    fn new_sequence(&mut self, max_tokens: usize) -> Result<usize, ModelError> {
        assert!(max_tokens <= self.config.context_length);
        let used: usize = self.seqs.values().map(|s| s.0).sum();
        if used + max_tokens > self.kv_tokens {
            return Err(ModelError::KvCacheFull { requested: max_tokens, largest_free: self.kv_tokens - used, capacity: self.kv_tokens });
        }
        let id = self.next_id;
        self.next_id += 3;
        self.seqs.insert(id, (max_tokens, Vec::new()));
        Ok(id)
    }
    fn free_sequence(&mut self, seq_id: usize) -> Result<(), ModelError> {
        self.seqs.remove(&seq_id).map(|_| ()).ok_or(ModelError::NoSuchSequence(seq_id))
    }
    fn sequence_len(&self, seq_id: usize) -> Result<usize, ModelError> {
        self.seqs.get(&seq_id).map(|s| s.1.len()).ok_or(ModelError::NoSuchSequence(seq_id))
    }
    fn forward(&mut self, batch: &[SeqTokens<'_>], logits_for: LogitsFor) -> Result<Vec<f32>, ModelError> {
        assert_eq!(logits_for, LogitsFor::LastToken);
        if self.fail_on_call == Some(self.calls.len()) {
            return Err(ModelError::Backend("scripted failure".into()));
        }
        self.calls.push(batch.iter().map(|b| b.tokens.len()).collect());
        let mut out = Vec::new();
        for b in batch {
            let (cap, hist) = self.seqs.get_mut(&b.seq_id).ok_or(ModelError::NoSuchSequence(b.seq_id))?;
            hist.extend_from_slice(b.tokens);
            if hist.len() > *cap {
                return Err(ModelError::ContextLength { seq_id: b.seq_id, needed: hist.len(), capacity: *cap, context_length: 0 });
            }
            let next = (self.rule)(hist);
            let mut row = vec![0.0f32; VOCAB];
            row[next as usize] = 10.0;
            out.extend(row);
        }
        Ok(out)
    }
}

/// Letters a..j cycling on the sum of the history: depends on every token fed.
fn cycling(h: &[u32]) -> u32 {
    (h.iter().sum::<u32>() + h.len() as u32) % 10
}

fn options(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop_strings: vec![],
        stop_token_ids: vec![],
        eog_token_ids: vec![EOS],
        max_batch: 64,
    }
}

fn run(model: &mut FakeModel, prompts: Vec<Vec<u32>>, opts: GenerateOptions) -> (Vec<Generation>, Vec<Piece>) {
    let mut pieces = Vec::new();
    let gens = generate(model, &FakeDetok, prompts, opts, |_, p| {
        pieces.extend_from_slice(p);
        Ok(())
    })
    .unwrap();
    (gens, pieces)
}

/// The expected greedy continuation, computed from the rule directly.
fn expected(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut h = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = cycling(&h);
        out.push(t);
        h.push(t);
    }
    out
}

#[test]
fn batch_steps_together_and_equals_each_prompt_alone() {
    let prompts = vec![vec![1, 2, 3], vec![4], vec![5, 5, 5, 5, 5]];
    let mut model = FakeModel::new(cycling, 100);
    let (batch, _) = run(&mut model, prompts.clone(), options(6));
    // One prefill forward with all three, then 5 decode forwards with all three.
    assert_eq!(model.calls[0], vec![3, 1, 5]);
    assert_eq!(model.calls.len(), 6);
    assert!(model.calls[1..].iter().all(|c| c == &vec![1, 1, 1]));
    assert!(model.seqs.is_empty(), "finished sequences free their KV cache");
    for (p, g) in prompts.iter().zip(&batch) {
        assert_eq!(g.token_ids, expected(p, 6));
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(g.timings.prefill_tokens, p.len());
        assert_eq!(g.timings.decode_tokens, 5);
        let text: String = g.token_ids.iter().map(|&t| (b'a' + t as u8) as char).collect();
        assert_eq!(g.text, text);
        let mut alone_model = FakeModel::new(cycling, 100);
        let (alone, _) = run(&mut alone_model, vec![p.clone()], options(6));
        assert_eq!(alone[0].token_ids, g.token_ids);
    }
}

#[test]
fn finished_sequences_leave_the_batch() {
    // Ends with EOS once the history is 6 tokens long.
    fn rule(h: &[u32]) -> u32 {
        if h.len() >= 6 { EOS } else { 1 }
    }
    let mut model = FakeModel::new(rule, 100);
    let (gens, _) = run(&mut model, vec![vec![0; 4], vec![0]], options(10));
    // Prompt of 4: tokens 1, 1, EOS. Prompt of 1: 1 x5 then EOS.
    assert_eq!(gens[0].token_ids, vec![1, 1, EOS]);
    assert_eq!(gens[0].finish_reason, FinishReason::Eos);
    assert_eq!(gens[0].text, "bb");
    assert_eq!(gens[1].token_ids, vec![1, 1, 1, 1, 1, EOS]);
    let sizes: Vec<usize> = model.calls.iter().map(|c| c.len()).collect();
    assert_eq!(sizes, vec![2, 2, 2, 1, 1, 1]);
    assert!(model.seqs.is_empty());
}

#[test]
fn stop_string_split_across_tokens_cuts_the_text() {
    // Generates b, c, d, e, ... : stop on "de" which spans two tokens.
    fn rule(h: &[u32]) -> u32 {
        (h.len() as u32) % 10
    }
    let mut model = FakeModel::new(rule, 100);
    let opts = GenerateOptions { stop_strings: vec!["de".into()], ..options(20) };
    let (gens, pieces) = run(&mut model, vec![vec![0]], opts);
    assert_eq!(gens[0].token_ids, vec![1, 2, 3, 4]);
    assert_eq!(gens[0].text, "bc");
    assert_eq!(gens[0].finish_reason, FinishReason::Stop);
    let streamed: String = pieces.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(streamed, "bc", "no part of the stop string leaks into the stream");
}

#[test]
fn stop_token_ids_end_with_reason_stop() {
    fn rule(h: &[u32]) -> u32 {
        (h.len() as u32) % 10
    }
    let mut model = FakeModel::new(rule, 100);
    let opts = GenerateOptions { stop_token_ids: vec![3], ..options(20) };
    let (gens, _) = run(&mut model, vec![vec![0]], opts);
    assert_eq!(gens[0].token_ids, vec![1, 2, 3]);
    assert_eq!(gens[0].text, "bc");
    assert_eq!(gens[0].finish_reason, FinishReason::Stop);
}

#[test]
fn multibyte_characters_split_over_tokens_stream_whole() {
    // "é" as tokens 10 11, "日" as 12 13, then a letter, repeating.
    fn rule(h: &[u32]) -> u32 {
        [10, 11, 12, 13, 0][(h.len() - 1) % 5]
    }
    let mut model = FakeModel::new(rule, 100);
    let (gens, pieces) = run(&mut model, vec![vec![0]], options(10));
    assert_eq!(gens[0].text, "é日aé日a");
    for (_, p) in &pieces {
        assert!(!p.contains('\u{FFFD}'), "piece {p:?}");
    }
    assert_eq!(pieces.iter().map(|p| p.1.as_str()).collect::<String>(), gens[0].text);
}

#[test]
fn long_prompts_prefill_in_chunks_with_the_same_result() {
    let long: Vec<u32> = (0..(PREFILL_CHUNK_TOKENS * 2 + 10) as u32).map(|i| i % 7).collect();
    let mut model = FakeModel::new(cycling, 10_000);
    let (gens, _) = run(&mut model, vec![long.clone(), vec![3]], options(4));
    assert_eq!(model.calls[0], vec![PREFILL_CHUNK_TOKENS]);
    assert_eq!(model.calls[1], vec![PREFILL_CHUNK_TOKENS]);
    assert_eq!(model.calls[2], vec![10, 1]);
    assert_eq!(gens[0].token_ids, expected(&long, 4));
    assert_eq!(gens[1].token_ids, expected(&[3], 4));
}

#[test]
fn context_length_bounds_the_budget() {
    let mut model = FakeModel::new(cycling, 8);
    let (gens, _) = run(&mut model, vec![vec![1, 2, 3, 4, 5]], options(100));
    assert_eq!(gens[0].token_ids.len(), 3);
    assert_eq!(gens[0].finish_reason, FinishReason::Length);
}

#[test]
fn zero_max_tokens_does_no_work() {
    let mut model = FakeModel::new(cycling, 100);
    let (gens, _) = run(&mut model, vec![vec![1]], options(0));
    assert!(gens[0].token_ids.is_empty());
    assert_eq!(gens[0].finish_reason, FinishReason::Length);
    assert!(model.calls.is_empty());
}

#[test]
fn bad_requests_are_errors() {
    let mut model = FakeModel::new(cycling, 8);
    let err = |prompts: Vec<Vec<u32>>, opts| generate(&mut model_for(), &FakeDetok, prompts, opts, |_, _| Ok(())).unwrap_err();
    fn model_for() -> FakeModel {
        FakeModel::new(cycling, 8)
    }
    assert!(matches!(err(vec![vec![1], vec![]], options(4)), GenerateError::EmptyPrompt { index: 1 }));
    assert!(matches!(err(vec![vec![1; 8]], options(4)), GenerateError::PromptTooLong { index: 0, .. }));
    assert!(matches!(
        err(vec![vec![1]], GenerateOptions { stop_strings: vec!["".into()], ..options(4) }),
        GenerateError::EmptyStopString
    ));
    assert!(matches!(err(vec![vec![99]], options(4)), GenerateError::Sampling(SamplingError::BadTokenId { .. })));
    // A model failure mid-way frees every sequence.
    model.fail_on_call = Some(2);
    let e = generate(&mut model, &FakeDetok, vec![vec![1], vec![2]], options(4), |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, GenerateError::Model(ModelError::Backend(_))));
    assert!(model.seqs.is_empty());
}

#[test]
fn at_most_max_batch_run_and_waiting_ones_start_as_others_finish() {
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| vec![i, i + 1]).collect();
    let mut model = FakeModel::new(cycling, 100);
    let opts = GenerateOptions { max_batch: 2, ..options(3) };
    let (gens, _) = run(&mut model, prompts.clone(), opts);
    assert!(model.calls.iter().all(|c| c.len() <= 2), "{:?}", model.calls);
    for (p, g) in prompts.iter().zip(&gens) {
        assert_eq!(g.token_ids, expected(p, 3));
    }
    assert!(model.seqs.is_empty());
}

#[test]
fn a_full_kv_cache_makes_sequences_wait_not_fail() {
    // Room for two sequences of 2 + 4 tokens at a time.
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| vec![i, 2 * i]).collect();
    let mut model = FakeModel::new(cycling, 100);
    model.kv_tokens = 13;
    let (gens, _) = run(&mut model, prompts.clone(), options(4));
    assert!(model.calls.iter().all(|c| c.len() <= 2), "{:?}", model.calls);
    for (p, g) in prompts.iter().zip(&gens) {
        assert_eq!(g.token_ids, expected(p, 4));
    }
    // A single sequence that can never fit is an error, not a hang.
    let mut model = FakeModel::new(cycling, 100);
    model.kv_tokens = 5;
    let e = generate(&mut model, &FakeDetok, vec![vec![1, 2]], options(4), |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, GenerateError::Model(ModelError::KvCacheFull { .. })));
}
