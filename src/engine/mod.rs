//! The generation engine: requests in, tokens out, many requests stepped together.
//!
//! One engine per loaded model; every way of generating (the Generator, the HTTP server, the
//! Ray integration) submits [`Request`]s to it. Each [`Engine::step`] runs one forward pass over
//! the running sequences (decode tokens and chunks of prompts, [`scheduler`]), draws their next
//! tokens on the model's device, and turns them into [`RequestOutput`]s (text, stop strings,
//! finish reasons). Requests join and leave between steps (continuous batching); the KV cache is
//! paged ([`kv_blocks`]), with full blocks reused across prompts that start alike.
//!
//! | file | role |
//! | --- | --- |
//! | `request.rs` | a request, its running state, its outputs and timings |
//! | `scheduler.rs` | which sequences run in a step, preemption |
//! | `kv_blocks.rs` | the block pool: allocation, reference counts, prefix cache, LRU |
//! | `mod.rs` (this) | submit / cancel / step: the model call and what follows a draw |
//! | `stop.rs` | stop strings on streamed text |
//! | `shared.rs` | the thread-safe face: many threads submit, whoever waits drives |
//!
//! The engine also serves sequences driven by hand (`Model.forward(..., seq=)`): they hold blocks
//! of the same pool, are never preempted, and need no request.

pub mod kv_blocks;
pub mod request;
mod scheduler;
pub mod shared;
pub mod stop;

use std::collections::HashMap;
use std::time::Instant;

use thiserror::Error;

use crate::model::{FedToken, LanguageModel, LogitsFor, ModelError, RowSample, SeqChunk};
use crate::sampling::{Sampled, SamplingError, MAX_TOP_LOGPROBS};
use crate::tokenizer::TokenizerError;
use kv_blocks::BlockPool;
pub use request::{FinishReason, Generation, Request, RequestId, RequestOutput, TextDecoder, Timings};
use request::Sequence;
use scheduler::{Chunk, Scheduler};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the prompt is empty: generation needs at least one prompt token")]
    EmptyPrompt,
    #[error("the prompt has {prompt_tokens} tokens, which leaves no room to generate within the context length of {context_length}")]
    PromptTooLong { prompt_tokens: usize, context_length: usize },
    #[error("a sequence of up to {tokens} tokens does not fit the KV cache of {capacity_tokens} tokens (load the model with a larger kv_cache_tokens, or ask for fewer max_tokens)")]
    TooLongForCache { tokens: usize, capacity_tokens: usize },
    #[error("KV cache full: {needed} more blocks of {block_tokens} tokens are needed but {free} of {total} are free (free sequences, or load the model with a larger kv_cache_tokens)")]
    KvCacheFull { needed: usize, free: usize, total: usize, block_tokens: usize },
    #[error("a sequence of {needed} tokens exceeds its room of {room} tokens")]
    SequenceFull { needed: usize, room: usize },
    #[error("stop strings must be non-empty")]
    EmptyStopString,
    #[error("logprobs = {0}: at most {MAX_TOP_LOGPROBS} alternatives per token can be returned")]
    TooManyLogprobs(usize),
    #[error("no sequence with id {0}")]
    NoSuchSequence(usize),
    #[error("max_batch and max_step_tokens must be at least 1")]
    BadLimits,
}

/// Options of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences running together at most (no more than the model's own limit).
    pub max_batch: usize,
    /// Tokens one step computes at most (decode tokens plus prompt chunks).
    pub max_step_tokens: usize,
    pub prefix_caching: bool,
    /// Queue each step before taking the previous step's draws, so that the host's work between
    /// steps (the draws' text, stop checks, scheduling, the batch's upload) overlaps the device's.
    /// Only where the model queues work (a GPU); `FERRITE_ENGINE_OVERLAP=0` turns it off.
    pub overlap: bool,
}

impl EngineConfig {
    /// Defaults for a model: its batch limit, and steps of up to 2048 tokens on a GPU but 256 on
    /// a CPU, where a long prompt chunk would stall the decoding sequences for seconds.
    pub fn for_model(model: &dyn LanguageModel) -> EngineConfig {
        let step = if model.device() == "cpu" { 256 } else { 2048 };
        let overlap = match std::env::var("FERRITE_ENGINE_OVERLAP").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => model.queues_work(),
        };
        EngineConfig { max_batch: model.max_batch(), max_step_tokens: step, prefix_caching: true, overlap }
    }
}

/// Totals since the engine was made, and its state now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_used: usize,
    pub kv_block_tokens: usize,
    pub steps: u64,
    pub last_step_s: f64,
    pub step_s_total: f64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    pub requests_finished: u64,
}

/// A step queued on the model whose draws the host has not taken yet.
struct InFlight {
    chunks: Vec<Chunk>,
    /// Per chunk, the tokens its sequence has in the KV cache once the step has run.
    computed_to: Vec<usize>,
    /// The request of each draw, in draw order.
    rows: Vec<RequestId>,
    queued: Instant,
}

/// A sequence driven by hand through [`Engine::forward`].
struct ManualSeq {
    blocks: Vec<u32>,
    len: usize,
    room: usize,
}

pub struct Engine {
    model: Box<dyn LanguageModel>,
    config: EngineConfig,
    pool: BlockPool,
    scheduler: Scheduler,
    seqs: HashMap<RequestId, Sequence>,
    manual: HashMap<usize, ManualSeq>,
    next_manual: usize,
    /// Outputs produced outside a step (cancellations, requests with nothing to generate).
    pending: Vec<RequestOutput>,
    stats: EngineStats,
    /// The step queued last, not yet taken (between calls only with `config.overlap`).
    in_flight: Option<InFlight>,
    last_take: Option<Instant>,
}

impl Engine {
    pub fn new(model: Box<dyn LanguageModel>, config: EngineConfig) -> Result<Engine, EngineError> {
        if config.max_batch == 0 || config.max_step_tokens == 0 {
            return Err(EngineError::BadLimits);
        }
        let pool = model.kv_pool();
        let config = EngineConfig { max_batch: config.max_batch.min(model.max_batch()), ..config };
        Ok(Engine {
            pool: BlockPool::new(pool.n_blocks, pool.block_tokens, config.prefix_caching),
            scheduler: Scheduler::new(config.max_batch, config.max_step_tokens),
            model,
            config,
            seqs: HashMap::new(),
            manual: HashMap::new(),
            next_manual: 0,
            pending: Vec::new(),
            stats: EngineStats::default(),
            in_flight: None,
            last_take: None,
        })
    }

    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Token positions of the KV pool.
    pub fn capacity_tokens(&self) -> usize {
        self.pool.total() * self.pool.block_tokens()
    }

    /// Checks a request against the model without queueing it: every limit is enforced here, so
    /// nothing fails later inside a step for a reason known now. Returns the most tokens it may
    /// generate.
    pub fn check(&self, req: &Request) -> Result<usize, EngineError> {
        check_request(req, &Limits::of(self))
    }

    /// Queues a request under `id` (unique, chosen by the caller). Checks it first.
    pub fn submit(&mut self, id: RequestId, req: Request) -> Result<(), EngineError> {
        let max_new = self.check(&req)?;
        self.stats.prompt_tokens += req.prompt.len() as u64;
        let s = Sequence::new(id, req, max_new);
        if max_new == 0 {
            self.finish_now(s, FinishReason::Length, None);
            return Ok(());
        }
        self.seqs.insert(id, s);
        self.scheduler.waiting.push_back(id);
        Ok(())
    }

    /// Stops a request and frees its blocks now. Its last output (finish reason `Cancelled`)
    /// comes with the next step's. `false` when it is not running or waiting.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(s) = self.seqs.remove(&id) else { return false };
        self.scheduler.remove(id);
        self.pool.release(&s.blocks);
        self.finish_now(s, FinishReason::Cancelled, None);
        true
    }

    /// Outputs produced outside a step (cancellations, requests with nothing to generate), which
    /// the next step would otherwise return.
    pub fn take_pending(&mut self) -> Vec<RequestOutput> {
        std::mem::take(&mut self.pending)
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty() || !self.pending.is_empty() || self.in_flight.is_some()
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            running: self.scheduler.running.len(),
            waiting: self.scheduler.waiting.len(),
            kv_blocks_total: self.pool.total(),
            kv_blocks_used: self.pool.used(),
            kv_block_tokens: self.pool.block_tokens(),
            ..self.stats
        }
    }

    /// Runs one step: a forward pass over what the scheduler picks and a draw for every sequence
    /// whose known tokens are then all computed. Returns every output produced since the last
    /// step. A failure of the forward pass fails the requests of that step (each gets an output
    /// with the error); the engine itself goes on.
    ///
    /// Every step is queued on the model and its draws taken afterwards. With `config.overlap`
    /// a call takes the draws of the step the previous call queued only after queuing its own, and
    /// returns their outputs: the device is never idle between steps. A sequence that the previous step's draw ends (end of text, stop string)
    /// has been fed once more by this step; that draw is dropped. Sequences with penalties wait
    /// for their last draw instead (the next draw depends on it).
    pub fn step(&mut self) -> Vec<RequestOutput> {
        let mut outputs = std::mem::take(&mut self.pending);
        if self.in_flight.as_ref().is_some_and(|f| self.needs_seen_draws(f)) {
            self.take_in_flight(&mut outputs);
        }
        let plan = self.scheduler.schedule(&mut self.seqs, &mut self.pool);
        self.stats.preemptions += plan.preempted as u64;
        for (id, needed) in plan.unplaceable {
            let err = EngineError::KvCacheFull {
                needed,
                free: self.pool.available(),
                total: self.pool.total(),
                block_tokens: self.pool.block_tokens(),
            };
            self.fail(id, &err, &mut outputs);
        }
        if plan.chunks.is_empty() {
            self.take_in_flight(&mut outputs);
            return outputs;
        }
        let queued = self.queue(plan.chunks, &mut outputs);
        self.take_in_flight(&mut outputs);
        self.in_flight = queued;
        // Without overlap the step is taken now. With it, a step whose sequences all ended
        // meanwhile has nothing left to give: taken now too, an idle engine holds no step.
        if !self.config.overlap || self.in_flight.as_ref().is_some_and(|f| f.chunks.iter().all(|c| !self.seqs.contains_key(&c.id))) {
            self.take_in_flight(&mut outputs);
        }
        outputs
    }

    /// Whether a sequence of the step in flight draws with penalties: its next draw needs the
    /// token in flight in its history.
    fn needs_seen_draws(&self, f: &InFlight) -> bool {
        f.rows.iter().any(|id| self.seqs.get(id).is_some_and(|s| s.req.sampling.has_penalties()))
    }

    fn count_step(&mut self, started: Instant) {
        self.stats.steps += 1;
        self.stats.last_step_s = started.elapsed().as_secs_f64();
        self.stats.step_s_total += self.stats.last_step_s;
    }

    fn fail_chunks(&mut self, chunks: &[Chunk], err: &EngineError, outputs: &mut Vec<RequestOutput>) {
        for c in chunks {
            self.fail(c.id, err, outputs);
        }
    }

    /// Queues `chunks` on the model without waiting for their draws. Sequences whose last token
    /// is the unseen draw of the step in flight are fed it on the device.
    fn queue(&mut self, chunks: Vec<Chunk>, outputs: &mut Vec<RequestOutput>) -> Option<InFlight> {
        let queued = Instant::now();
        let mut batch = Vec::with_capacity(chunks.len());
        let mut samples = Vec::new();
        let mut rows = Vec::new();
        let mut fed = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let s = &self.seqs[&c.id];
            let tokens = &s.tokens[s.n_computed..s.n_computed + c.n_new];
            if tokens.contains(&request::UNSEEN) {
                // Only the last drawn token can be unseen, and a step feeds it alone.
                debug_assert!(c.n_new == 1 && s.n_unseen == 1);
                fed.push(FedToken { seq: i, draw: s.unseen_row });
            }
            batch.push(SeqChunk { tokens, n_past: s.n_computed, block_table: &s.blocks });
            // A draw for every sequence whose known tokens are all computed after this step.
            if s.n_computed + c.n_new == s.tokens.len() {
                samples.push(RowSample { seq: i, spec: s.sample_spec() });
                rows.push(c.id);
            }
        }
        if let Err(e) = self.model.queue_forward_sample(&batch, &samples, &fed) {
            self.fail_chunks(&chunks, &EngineError::Model(e), outputs);
            return None;
        }
        let mut computed_to = Vec::with_capacity(chunks.len());
        for c in &chunks {
            let s = self.seqs.get_mut(&c.id).expect("scheduled sequences exist");
            s.n_computed += c.n_new;
            computed_to.push(s.n_computed);
        }
        for (row, id) in rows.iter().enumerate() {
            let s = self.seqs.get_mut(id).expect("scheduled sequences exist");
            s.tokens.push(request::UNSEEN);
            s.n_unseen += 1;
            s.unseen_row = row;
        }
        Some(InFlight { chunks, computed_to, rows, queued })
    }

    /// Takes the draws of the step in flight, if any, and accepts them.
    fn take_in_flight(&mut self, outputs: &mut Vec<RequestOutput>) {
        let Some(f) = self.in_flight.take() else { return };
        let drawn = self.model.take_draws();
        // A step runs once the one before it is taken: its time counts from the later of the two.
        let started = self.last_take.map_or(f.queued, |t| t.max(f.queued));
        self.count_step(started);
        self.last_take = Some(Instant::now());
        match drawn {
            Err(e) => self.fail_chunks(&f.chunks, &EngineError::Model(e), outputs),
            Ok(drawn) => {
                // The blocks this step filled can serve other prompts now that it has run (their
                // tokens were all seen before it was queued). Before the draws: a sequence they
                // end releases its blocks, and registered blocks stay cached.
                for (c, &upto) in f.chunks.iter().zip(&f.computed_to) {
                    self.register_blocks(c.id, upto);
                }
                for (id, sampled) in f.rows.into_iter().zip(drawn) {
                    let Some(s) = self.seqs.get_mut(&id) else { continue };
                    // A failed draw's place gets token 0, which its next step was fed.
                    s.see(sampled.as_ref().map_or(0, |d| d.token));
                    self.accept(id, sampled, outputs);
                }
            }
        }
    }

    /// Takes the step in flight into the pending outputs, so that the model can be used by hand.
    fn settle(&mut self) {
        let mut outputs = std::mem::take(&mut self.pending);
        self.take_in_flight(&mut outputs);
        self.pending = outputs;
    }

    /// Registers the full blocks of a sequence's first `upto` tokens with the pool.
    fn register_blocks(&mut self, id: RequestId, upto: usize) {
        let Some(s) = self.seqs.get_mut(&id) else { return };
        let bt = self.pool.block_tokens();
        while (s.block_keys.len() + 1) * bt <= upto.min(s.n_computed) {
            let b = s.block_keys.len();
            let parent = s.block_keys.last().copied().unwrap_or(kv_blocks::ROOT);
            let key = self.pool.register(s.blocks[b], parent, &s.tokens[b * bt..(b + 1) * bt]);
            s.block_keys.push(key);
        }
    }

    /// Takes a drawn token, already in its place (`Sequence::see`): records it, streams its text,
    /// and decides whether the request goes on.
    fn accept(&mut self, id: RequestId, sampled: Result<Sampled, SamplingError>, outputs: &mut Vec<RequestOutput>) {
        let sampled = match sampled {
            Ok(s) => s,
            Err(e) => return self.fail(id, &EngineError::Sampling(e), outputs),
        };
        let Some(s) = self.seqs.get_mut(&id) else { return };
        let token = sampled.token;
        let now = Instant::now();
        s.first_token.get_or_insert(now);
        s.history.record_output(token);
        self.stats.generated_tokens += 1;
        let mut out = RequestOutput::new(id);
        out.token_ids.push(token);
        if let Some(lp) = sampled.logprob {
            out.logprobs.push(lp);
            if s.req.logprobs.is_some_and(|k| k > 0) {
                out.top_logprobs.push(sampled.top_logprobs);
            }
        }
        let mut finish = None;
        let mut stop_string_hit = false;
        if !s.req.ignore_eos && s.req.eog_token_ids.contains(&token) {
            finish = Some(FinishReason::Eos);
        } else if s.req.stop_token_ids.contains(&token) {
            finish = Some(FinishReason::Stop);
        } else {
            match s.req.decoder.push(token) {
                Ok(piece) => {
                    let released = s.stop.push(&piece);
                    out.text.push_str(&released.text);
                    if released.stopped {
                        stop_string_hit = true;
                        finish = Some(FinishReason::Stop);
                    }
                }
                Err(e) => {
                    let err = EngineError::Tokenizer(e);
                    self.fail(id, &err, outputs);
                    return;
                }
            }
        }
        if finish.is_none() && s.n_seen_generated() >= s.max_new {
            finish = Some(FinishReason::Length);
        }
        if let Some(mut reason) = finish {
            // A stop string cuts the text where it starts: nothing after it is emitted. Any other
            // ending releases what was held back as a possible stop-string start, and bytes of an
            // unfinished character.
            if !stop_string_hit {
                let tail = s.req.decoder.finish();
                let released = s.stop.push(&tail);
                out.text.push_str(&released.text);
                if released.stopped {
                    reason = FinishReason::Stop;
                } else {
                    out.text.push_str(&s.stop.flush());
                }
            }
            let s = self.seqs.remove(&id).expect("present above");
            self.scheduler.remove(id);
            self.pool.release(&s.blocks);
            out.finish = Some(reason);
            out.timings = Some(s.timings(now));
            self.stats.requests_finished += 1;
            self.stats.cached_prompt_tokens += s.cached_prompt_tokens as u64;
        }
        outputs.push(out);
    }

    /// Ends a request with an error; the others go on.
    fn fail(&mut self, id: RequestId, err: &EngineError, outputs: &mut Vec<RequestOutput>) {
        let Some(s) = self.seqs.remove(&id) else { return };
        self.scheduler.remove(id);
        self.pool.release(&s.blocks);
        let mut out = RequestOutput::new(id);
        out.finish = Some(FinishReason::Error);
        out.error = Some(err.to_string());
        out.timings = Some(s.timings(Instant::now()));
        self.stats.requests_finished += 1;
        outputs.push(out);
    }

    /// Ends a request that holds no blocks, outside a step.
    fn finish_now(&mut self, s: Sequence, reason: FinishReason, error: Option<String>) {
        let mut out = RequestOutput::new(s.id);
        out.finish = Some(reason);
        out.error = error;
        out.timings = Some(s.timings(Instant::now()));
        self.stats.requests_finished += 1;
        self.pending.push(out);
    }

    // ---- sequences driven by hand ----

    /// A sequence for [`Engine::forward`] of up to `room` tokens (at most the context length).
    /// Nothing is reserved: blocks are taken as its tokens are computed.
    pub fn new_sequence(&mut self, room: usize) -> Result<usize, EngineError> {
        let context = self.model.config().context_length;
        if room == 0 {
            return Err(EngineError::SequenceFull { needed: 1, room: 0 });
        }
        if room > context {
            return Err(EngineError::Model(ModelError::ContextLength { needed: room, context_length: context }));
        }
        let id = self.next_manual;
        self.next_manual += 1;
        self.manual.insert(id, ManualSeq { blocks: Vec::new(), len: 0, room });
        Ok(id)
    }

    pub fn free_sequence(&mut self, id: usize) -> Result<(), EngineError> {
        let s = self.manual.remove(&id).ok_or(EngineError::NoSuchSequence(id))?;
        self.pool.release(&s.blocks);
        Ok(())
    }

    pub fn sequence_len(&self, id: usize) -> Result<usize, EngineError> {
        Ok(self.manual.get(&id).ok_or(EngineError::NoSuchSequence(id))?.len)
    }

    /// Logits for tokens appended to sequences made by [`Engine::new_sequence`] (`Some(id)`), or
    /// to fresh ones that are freed afterwards (`None`). Rows as `logits_for` says.
    pub fn forward(&mut self, entries: &[(Option<usize>, Vec<u32>)], logits_for: LogitsFor) -> Result<Vec<f32>, EngineError> {
        self.forward_with(entries, |m, batch| m.forward(batch, logits_for))
    }

    /// [`Engine::forward`] with the logits left on the model's device.
    pub fn forward_rows(&mut self, entries: &[(Option<usize>, Vec<u32>)], logits_for: LogitsFor) -> Result<crate::backend::OwnedRows, EngineError> {
        self.forward_with(entries, |m, batch| m.forward_rows(batch, logits_for))
    }

    fn forward_with<T>(
        &mut self,
        entries: &[(Option<usize>, Vec<u32>)],
        run: impl FnOnce(&mut dyn LanguageModel, &[SeqChunk<'_>]) -> Result<T, ModelError>,
    ) -> Result<T, EngineError> {
        self.settle();
        // Room first, then blocks for every entry at once, so a failure leaves nothing behind.
        let mut need_blocks = 0;
        for (i, (seq, tokens)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(o, _)| o.is_some() && o == seq) {
                return Err(EngineError::Model(ModelError::Invalid(format!("sequence {} appears twice in one batch", seq.unwrap_or(0)))));
            }
            let (len, held, room) = match seq {
                Some(id) => {
                    let s = self.manual.get(id).ok_or(EngineError::NoSuchSequence(*id))?;
                    (s.len, s.blocks.len(), s.room)
                }
                None => (0, 0, self.model.config().context_length),
            };
            if len + tokens.len() > room {
                return Err(match seq {
                    Some(_) => EngineError::SequenceFull { needed: len + tokens.len(), room },
                    None => EngineError::Model(ModelError::ContextLength { needed: tokens.len(), context_length: room }),
                });
            }
            need_blocks += self.pool.blocks_for(len + tokens.len()).saturating_sub(held);
        }
        let mut fresh = self.pool.allocate(need_blocks).ok_or(EngineError::KvCacheFull {
            needed: need_blocks,
            free: self.pool.available(),
            total: self.pool.total(),
            block_tokens: self.pool.block_tokens(),
        })?;
        let mut tables: Vec<Vec<u32>> = Vec::with_capacity(entries.len());
        let mut pasts = Vec::with_capacity(entries.len());
        for (seq, tokens) in entries {
            let (len, mut table) = match seq {
                Some(id) => {
                    let s = &self.manual[id];
                    (s.len, s.blocks.clone())
                }
                None => (0, Vec::new()),
            };
            let more = self.pool.blocks_for(len + tokens.len()).saturating_sub(table.len());
            table.extend(fresh.drain(..more));
            tables.push(table);
            pasts.push(len);
        }
        let batch: Vec<SeqChunk<'_>> = entries
            .iter()
            .zip(&tables)
            .zip(&pasts)
            .map(|(((_, tokens), table), &n_past)| SeqChunk { tokens, n_past, block_table: table })
            .collect();
        let result = run(self.model.as_mut(), &batch);
        for (((seq, tokens), table), _) in entries.iter().zip(tables).zip(pasts) {
            match seq {
                Some(id) => {
                    let s = self.manual.get_mut(id).expect("checked above");
                    s.blocks = table;
                    if result.is_ok() {
                        s.len += tokens.len();
                    }
                }
                None => self.pool.release(&table),
            }
        }
        Ok(result?)
    }
}

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub vocab_size: usize,
    pub context_length: usize,
    pub capacity_tokens: usize,
    pub max_batch: usize,
}

impl Limits {
    pub fn of(e: &Engine) -> Limits {
        Limits {
            vocab_size: e.model.config().vocab_size,
            context_length: e.model.config().context_length,
            capacity_tokens: e.capacity_tokens(),
            max_batch: e.config.max_batch,
        }
    }
}

/// Every check of a request that can be made before it runs. Returns the most tokens it may
/// generate.
pub fn check_request(req: &Request, limits: &Limits) -> Result<usize, EngineError> {
    req.sampling.validate()?;
    if req.prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if let Some(&id) = req.prompt.iter().chain(&req.stop_token_ids).find(|&&t| t as usize >= limits.vocab_size) {
        return Err(EngineError::Model(ModelError::BadTokenId { id, vocab_size: limits.vocab_size }));
    }
    if req.stop_strings.iter().any(|s| s.is_empty()) {
        return Err(EngineError::EmptyStopString);
    }
    if let Some(k) = req.logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
        return Err(EngineError::TooManyLogprobs(k));
    }
    let n = req.prompt.len();
    if n >= limits.context_length {
        return Err(EngineError::PromptTooLong { prompt_tokens: n, context_length: limits.context_length });
    }
    let max_new = req.max_tokens.min(limits.context_length - n);
    // The last drawn token is never fed back, so n + max_new - 1 positions at most.
    let positions = n + max_new.saturating_sub(1);
    if positions > limits.capacity_tokens {
        return Err(EngineError::TooLongForCache { tokens: positions, capacity_tokens: limits.capacity_tokens });
    }
    Ok(max_new)
}

#[cfg(test)]
mod tests;
