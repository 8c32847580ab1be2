//! A request (what a caller asks for), its running state (a [`Sequence`]), and what comes out of
//! it step by step ([`RequestOutput`]) and at the end ([`Generation`], [`Timings`]).

use std::time::Instant;

use super::stop::StopMatcher;
use crate::sampling::penalties::PenaltyHistory;
use crate::sampling::{SampleSpec, SamplingParams};
use crate::tokenizer::{IncrementalDecoder, TokenizerError};

pub type RequestId = u64;

/// Turns a request's tokens into text a piece at a time: a character split across tokens comes
/// out whole once its last byte arrives.
pub trait TextDecoder: Send {
    /// The text that `token` completes (possibly empty).
    fn push(&mut self, token: u32) -> Result<String, TokenizerError>;
    /// Whatever is still pending when the request ends.
    fn finish(&mut self) -> String;
}

impl TextDecoder for IncrementalDecoder {
    fn push(&mut self, token: u32) -> Result<String, TokenizerError> {
        IncrementalDecoder::push(self, token)
    }
    fn finish(&mut self) -> String {
        self.flush()
    }
}

/// What a caller asks for.
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// New tokens at most; fewer when the context length leaves less room.
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// The caller's stop tokens (finish reason `Stop`).
    pub stop_token_ids: Vec<u32>,
    /// The tokenizer's end-of-generation tokens (finish reason `Eos`), unless `ignore_eos`.
    pub eog_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// `None`: no log-probabilities; `Some(0)`: each chosen token's; `Some(k)`: also the k best.
    pub logprobs: Option<usize>,
    pub decoder: Box<dyn TextDecoder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A stop string or one of the caller's stop token ids.
    Stop,
    /// `max_tokens` (or the context length) reached.
    Length,
    /// An end-of-generation token of the tokenizer.
    Eos,
    /// Cancelled by the caller.
    Cancelled,
    /// This request failed (the message says why); the engine goes on with the others.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// Wall-clock times and token counts of one request, its own (not its batch's).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_prompt_tokens: usize,
    /// Submission to admission into the running batch.
    pub queue_s: f64,
    /// Submission to the first generated token.
    pub time_to_first_token_s: f64,
    /// Admission to the first generated token (the prompt's computation, in the batch's steps).
    pub prefill_s: f64,
    /// Tokens generated after the first.
    pub decode_tokens: usize,
    /// First generated token to the last.
    pub decode_s: f64,
    /// Submission to the end.
    pub total_s: f64,
}

/// What one step produced for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOutput {
    pub id: RequestId,
    /// Tokens sampled in this step (normally one; none for a prompt chunk or a cancellation).
    pub token_ids: Vec<u32>,
    /// Text that became final: whole characters, never part of a stop string.
    pub text: String,
    /// One per token of `token_ids`, when log-probabilities were asked for.
    pub logprobs: Vec<f32>,
    /// Per token, the k best `(token, logprob)`, when k >= 1 was asked for.
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    pub finish: Option<FinishReason>,
    /// Why it failed, when `finish == Some(Error)`.
    pub error: Option<String>,
    /// Set on the finishing output.
    pub timings: Option<Timings>,
}

impl RequestOutput {
    pub fn new(id: RequestId) -> RequestOutput {
        RequestOutput {
            id,
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: Vec::new(),
            top_logprobs: Vec::new(),
            finish: None,
            error: None,
            timings: None,
        }
    }
}

/// A whole generation: every output of a request folded together.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Option<Vec<f32>>,
    pub top_logprobs: Option<Vec<Vec<(u32, f32)>>>,
    pub finish: Option<FinishReason>,
    pub error: Option<String>,
    pub timings: Timings,
    pub seed: u64,
}

impl Generation {
    pub fn new(prompt: Vec<u32>, seed: u64, logprobs: Option<usize>) -> Generation {
        Generation {
            prompt_token_ids: prompt,
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: logprobs.map(|_| Vec::new()),
            top_logprobs: logprobs.filter(|&k| k > 0).map(|_| Vec::new()),
            finish: None,
            error: None,
            timings: Timings::default(),
            seed,
        }
    }

    pub fn absorb(&mut self, out: &RequestOutput) {
        self.token_ids.extend_from_slice(&out.token_ids);
        self.text.push_str(&out.text);
        if let Some(l) = self.logprobs.as_mut() {
            l.extend_from_slice(&out.logprobs);
        }
        if let Some(t) = self.top_logprobs.as_mut() {
            t.extend(out.top_logprobs.iter().cloned());
        }
        if out.finish.is_some() {
            self.finish = out.finish;
            self.error = out.error.clone();
        }
        if let Some(t) = out.timings {
            self.timings = t;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Waiting,
    Running,
}

/// A request while the engine works on it.
pub(crate) struct Sequence {
    pub id: RequestId,
    pub req: Request,
    /// Prompt, then every generated token.
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    /// New tokens at most.
    pub max_new: usize,
    /// Tokens whose keys and values are in `blocks`.
    pub n_computed: usize,
    pub blocks: Vec<u32>,
    /// Content keys of the leading full blocks registered with the pool (see kv_blocks).
    pub block_keys: Vec<u64>,
    pub history: PenaltyHistory,
    pub stop: StopMatcher,
    pub status: Status,
    pub submitted: Instant,
    pub admitted: Option<Instant>,
    pub first_token: Option<Instant>,
    pub cached_prompt_tokens: usize,
    /// Drawn tokens at the end of `tokens` that the host has not seen yet ([`UNSEEN`] holds
    /// their place): the engine queues a step before it takes the draws of the step before.
    pub n_unseen: usize,
    /// The row of the latest unseen draw in its step's draws, which feeds the next step.
    pub unseen_row: usize,
}

/// The place of a drawn token not yet seen by the host in `Sequence::tokens`.
pub(crate) const UNSEEN: u32 = u32::MAX;

impl Sequence {
    pub fn new(id: RequestId, req: Request, max_new: usize) -> Sequence {
        Sequence {
            id,
            tokens: req.prompt.clone(),
            n_prompt: req.prompt.len(),
            max_new,
            n_computed: 0,
            blocks: Vec::new(),
            block_keys: Vec::new(),
            history: PenaltyHistory::new(&req.prompt),
            stop: StopMatcher::new(&req.stop_strings),
            status: Status::Waiting,
            submitted: Instant::now(),
            admitted: None,
            first_token: None,
            cached_prompt_tokens: 0,
            n_unseen: 0,
            unseen_row: 0,
            req,
        }
    }

    /// Tokens drawn, those not yet seen included.
    pub fn n_generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    /// Tokens drawn and seen by the host.
    pub fn n_seen_generated(&self) -> usize {
        self.n_generated() - self.n_unseen
    }

    /// Tokens drawn but not yet in the KV cache: the prompt (or what is left of it), or the last
    /// drawn token; none once the last token allowed is drawn (it is never fed back).
    pub fn uncomputed(&self) -> usize {
        if self.n_generated() >= self.max_new {
            return 0;
        }
        self.tokens.len() - self.n_computed
    }

    /// Records the token drawn for the oldest unseen place.
    pub fn see(&mut self, token: u32) {
        let at = self.tokens.len() - self.n_unseen;
        self.tokens[at] = token;
        self.n_unseen -= 1;
    }

    /// The draw for this sequence's next token.
    pub fn sample_spec(&self) -> SampleSpec<'_> {
        SampleSpec {
            params: &self.req.sampling,
            draw_index: self.n_generated() as u64,
            history: self.req.sampling.has_penalties().then_some(&self.history),
            logprobs: self.req.logprobs,
        }
    }

    pub fn timings(&self, now: Instant) -> Timings {
        let since = |a: Instant, b: Option<Instant>| b.map_or(0.0, |b| b.duration_since(a).as_secs_f64());
        let first = self.first_token;
        Timings {
            prompt_tokens: self.n_prompt,
            cached_prompt_tokens: self.cached_prompt_tokens,
            queue_s: since(self.submitted, self.admitted),
            time_to_first_token_s: since(self.submitted, first),
            prefill_s: self.admitted.map_or(0.0, |a| since(a, first)),
            decode_tokens: self.n_seen_generated().saturating_sub(1),
            decode_s: first.map_or(0.0, |f| now.duration_since(f).as_secs_f64()),
            total_s: now.duration_since(self.submitted).as_secs_f64(),
        }
    }
}
