//! The decode loop: prompts in, tokens and text out, many sequences stepped together.
//!
//! [`BatchDecode`] is a resumable state machine so that one loop serves both a blocking
//! `generate` and a streaming iterator: every [`BatchDecode::step`] runs exactly one `forward`
//! (a prefill chunk, or one new token for every sequence still running) and returns the text that
//! became final. Finished sequences leave the batch and free their KV cache at once.
//!
//! At most `max_batch` sequences run at once, and a sequence is admitted only when the KV cache
//! has room for its prompt plus its token budget; the others wait and start as running ones finish
//! (continuous batching). A newly admitted sequence's prefill runs as its own step, so sequences
//! already decoding wait one step for it.
//!
//! A sequence ends, in this order of precedence, when it samples an end-of-generation token of
//! the tokenizer (`Eos`), one of the caller's stop token ids (`Stop`), completes a stop string in
//! its decoded text (`Stop`), or reaches its token budget (`Length`). The ending token is kept in
//! `token_ids`; its text, and a stop string's text, are not in `text`.

mod detokenize;
pub mod stop;

use std::time::Instant;

use thiserror::Error;

use crate::model::{LanguageModel, LogitsFor, ModelError, SeqTokens};
use crate::sampling::{Sampler, SamplingError, SamplingParams};
use stop::StopMatcher;

/// Prompt tokens one prefill `forward` takes at most: bounds the activation memory of a big batch
/// of long prompts, and keeps each step short enough to react to Ctrl-C.
pub const PREFILL_CHUNK_TOKENS: usize = 1024;

#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("prompt {index} is empty: generation needs at least one prompt token")]
    EmptyPrompt { index: usize },
    #[error("prompt {index} has {prompt_tokens} tokens, which leaves no room to generate within the context length of {context_length}")]
    PromptTooLong { index: usize, prompt_tokens: usize, context_length: usize },
    #[error("max_batch must be at least 1")]
    ZeroMaxBatch,
    #[error("stop strings must be non-empty")]
    EmptyStopString,
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// Turns token ids into text a piece at a time. `State` is one sequence's pending bytes, so a
/// character split across tokens comes out whole once its last byte arrives.
pub trait Detokenize {
    type State: Send;
    /// A fresh state for a new sequence.
    fn start(&self) -> Self::State;
    /// The text that `token` completes (possibly empty).
    fn push(&self, state: &mut Self::State, token: u32) -> Result<String, GenerateError>;
    /// Whatever is still pending when the sequence ends.
    fn finish(&self, state: &mut Self::State) -> String;
}

/// What every prompt of a call shares.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    /// New tokens per sequence at most; fewer when the context length leaves less room.
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// The caller's extra stop tokens (finish reason `Stop`).
    pub stop_token_ids: Vec<u32>,
    /// The tokenizer's end-of-generation tokens (finish reason `Eos`).
    pub eog_token_ids: Vec<u32>,
    /// Sequences stepped together at most (no more than the model's own batch limit).
    pub max_batch: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop string or one of the caller's stop token ids.
    Stop,
    /// `max_tokens` (or the context length) reached.
    Length,
    /// An end-of-generation token of the tokenizer.
    Eos,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Eos => "eos",
        }
    }
}

/// Wall-clock times of one sequence. In a batch the steps are shared: `prefill_s` is the time of
/// the prefill forwards this sequence was part of, and `decode_s` runs from its first decode step
/// until it finished (including steps where later sequences were prefilled).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub prefill_tokens: usize,
    pub prefill_s: f64,
    /// Tokens this sequence fed through decode `forward`s (its sampled tokens but the last).
    pub decode_tokens: usize,
    pub decode_s: f64,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub prompt_token_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Text that became final in one step: `(prompt index, piece)`.
pub type Piece = (usize, String);

struct Sequence<S> {
    seq_id: Option<usize>,
    prompt: Vec<u32>,
    prompt_fed: usize,
    max_new: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    text: String,
    stop: StopMatcher,
    detok: S,
    finish: Option<FinishReason>,
    prefill_s: f64,
    decode_started: Option<Instant>,
    decode_tokens: usize,
    decode_s: f64,
}

/// Generation of a batch of prompts, advanced one `forward` at a time.
pub struct BatchDecode<D: Detokenize> {
    seqs: Vec<Sequence<D::State>>,
    options: GenerateOptions,
}

impl<D: Detokenize> BatchDecode<D> {
    /// Checks every prompt and the options; reserves nothing until the first step.
    pub fn new(
        prompts: Vec<Vec<u32>>,
        options: GenerateOptions,
        detok: &D,
        vocab_size: usize,
        context_length: usize,
    ) -> Result<Self, GenerateError> {
        if options.max_batch == 0 {
            return Err(GenerateError::ZeroMaxBatch);
        }
        if options.stop_strings.iter().any(|s| s.is_empty()) {
            return Err(GenerateError::EmptyStopString);
        }
        let mut seqs = Vec::with_capacity(prompts.len());
        for (index, prompt) in prompts.into_iter().enumerate() {
            if prompt.is_empty() {
                return Err(GenerateError::EmptyPrompt { index });
            }
            if prompt.len() >= context_length {
                return Err(GenerateError::PromptTooLong { index, prompt_tokens: prompt.len(), context_length });
            }
            let sampler = Sampler::new(&options.sampling, vocab_size, &prompt)?;
            let max_new = options.max_tokens.min(context_length - prompt.len());
            seqs.push(Sequence {
                seq_id: None,
                prompt,
                prompt_fed: 0,
                max_new,
                sampler,
                tokens: Vec::new(),
                text: String::new(),
                stop: StopMatcher::new(&options.stop_strings),
                detok: detok.start(),
                // Nothing to generate: done before any work.
                finish: (max_new == 0).then_some(FinishReason::Length),
                prefill_s: 0.0,
                decode_started: None,
                decode_tokens: 0,
                decode_s: 0.0,
            });
        }
        Ok(BatchDecode { seqs, options })
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    pub fn is_done(&self) -> bool {
        self.seqs.iter().all(|s| s.finish.is_some())
    }

    /// Sequences finished so far.
    pub fn finished_count(&self) -> usize {
        self.seqs.iter().filter(|s| s.finish.is_some()).count()
    }

    /// Tokens generated so far, over all sequences.
    pub fn generated_count(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }

    /// Runs one `forward` and samples from it; returns the text that became final. On error the
    /// caller should [`release`](Self::release) the sequences.
    pub fn step(&mut self, model: &mut dyn LanguageModel, detok: &D) -> Result<Vec<Piece>, GenerateError> {
        if self.is_done() {
            return Ok(Vec::new());
        }
        self.admit(model)?;
        let mut pieces = Vec::new();
        if self.seqs.iter().any(|s| s.seq_id.is_some() && s.prompt_fed < s.prompt.len()) {
            self.prefill_step(model, detok, &mut pieces)?;
        } else {
            self.decode_step(model, detok, &mut pieces)?;
        }
        Ok(pieces)
    }

    /// Starts waiting sequences, in order, while the batch and the KV cache have room.
    fn admit(&mut self, model: &mut dyn LanguageModel) -> Result<(), GenerateError> {
        let mut running = self.seqs.iter().filter(|s| s.seq_id.is_some()).count();
        for s in self.seqs.iter_mut().filter(|s| s.finish.is_none() && s.seq_id.is_none()) {
            if running >= self.options.max_batch {
                break;
            }
            match model.new_sequence(s.prompt.len() + s.max_new) {
                Ok(id) => {
                    s.seq_id = Some(id);
                    running += 1;
                }
                // Waits for running sequences to free their room.
                Err(ModelError::KvCacheFull { .. }) if running > 0 => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn prefill_step(&mut self, model: &mut dyn LanguageModel, detok: &D, pieces: &mut Vec<Piece>) -> Result<(), GenerateError> {
        let start = Instant::now();
        let mut budget = PREFILL_CHUNK_TOKENS;
        // (sequence index, range of prompt tokens fed now)
        let mut chunk = Vec::new();
        for (i, s) in self.seqs.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if s.seq_id.is_none() || s.prompt_fed == s.prompt.len() {
                continue;
            }
            let n = (s.prompt.len() - s.prompt_fed).min(budget);
            budget -= n;
            chunk.push((i, s.prompt_fed..s.prompt_fed + n));
        }
        let batch: Vec<SeqTokens<'_>> = chunk
            .iter()
            .map(|(i, r)| SeqTokens { seq_id: self.seqs[*i].seq_id.unwrap_or(usize::MAX), tokens: &self.seqs[*i].prompt[r.clone()] })
            .collect();
        let logits = model.forward(&batch, LogitsFor::LastToken)?;
        let vocab = model.config().vocab_size;
        check_rows(&logits, chunk.len(), vocab)?;
        let elapsed = start.elapsed().as_secs_f64();
        for (row, (i, r)) in chunk.into_iter().enumerate() {
            self.seqs[i].prompt_fed = r.end;
            self.seqs[i].prefill_s += elapsed;
            // Only a sequence whose whole prompt is in has logits for its first new token.
            if r.end == self.seqs[i].prompt.len() {
                self.accept_logits(i, &logits[row * vocab..(row + 1) * vocab], model, detok, pieces)?;
            }
        }
        Ok(())
    }

    fn decode_step(&mut self, model: &mut dyn LanguageModel, detok: &D, pieces: &mut Vec<Piece>) -> Result<(), GenerateError> {
        let now = Instant::now();
        let running: Vec<usize> = (0..self.seqs.len()).filter(|&i| self.seqs[i].seq_id.is_some()).collect();
        for &i in &running {
            self.seqs[i].decode_started.get_or_insert(now);
        }
        let last_tokens: Vec<[u32; 1]> = running.iter().map(|&i| [*self.seqs[i].tokens.last().unwrap_or(&0)]).collect();
        let batch: Vec<SeqTokens<'_>> = running
            .iter()
            .zip(&last_tokens)
            .map(|(&i, t)| SeqTokens { seq_id: self.seqs[i].seq_id.unwrap_or(usize::MAX), tokens: t })
            .collect();
        let logits = model.forward(&batch, LogitsFor::LastToken)?;
        let vocab = model.config().vocab_size;
        check_rows(&logits, running.len(), vocab)?;
        for (row, &i) in running.iter().enumerate() {
            self.seqs[i].decode_tokens += 1;
            self.accept_logits(i, &logits[row * vocab..(row + 1) * vocab], model, detok, pieces)?;
            let s = &mut self.seqs[i];
            if let (Some(_), Some(started)) = (s.finish, s.decode_started) {
                s.decode_s = started.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// Samples a sequence's next token and decides whether it goes on.
    fn accept_logits(
        &mut self,
        i: usize,
        row: &[f32],
        model: &mut dyn LanguageModel,
        detok: &D,
        pieces: &mut Vec<Piece>,
    ) -> Result<(), GenerateError> {
        let s = &mut self.seqs[i];
        let token = s.sampler.sample(row)?;
        s.tokens.push(token);
        let mut out = String::new();
        let mut stop_string_hit = false;
        if self.options.eog_token_ids.contains(&token) {
            s.finish = Some(FinishReason::Eos);
        } else if self.options.stop_token_ids.contains(&token) {
            s.finish = Some(FinishReason::Stop);
        } else {
            let piece = detok.push(&mut s.detok, token)?;
            let released = s.stop.push(&piece);
            out.push_str(&released.text);
            if released.stopped {
                stop_string_hit = true;
                s.finish = Some(FinishReason::Stop);
            } else if s.tokens.len() >= s.max_new {
                s.finish = Some(FinishReason::Length);
            }
        }
        if s.finish.is_some() {
            // A stop string cuts the text where it starts: nothing after it is emitted. Any other
            // ending releases what was held back as a possible stop-string start, and bytes of
            // an unfinished character.
            if !stop_string_hit {
                let tail = detok.finish(&mut s.detok);
                let released = s.stop.push(&tail);
                out.push_str(&released.text);
                if released.stopped {
                    s.finish = Some(FinishReason::Stop);
                } else {
                    out.push_str(&s.stop.flush());
                }
            }
            if let Some(id) = s.seq_id.take() {
                model.free_sequence(id)?;
            }
        }
        if !out.is_empty() {
            s.text.push_str(&out);
            pieces.push((i, out));
        }
        Ok(())
    }

    /// Frees every KV cache still held (after an error, or when a stream is abandoned). Errors
    /// are ignored: the sequences are being given up anyway.
    pub fn release(&mut self, model: &mut dyn LanguageModel) {
        for s in &mut self.seqs {
            if let Some(id) = s.seq_id.take() {
                let _ = model.free_sequence(id);
            }
            if s.finish.is_none() {
                s.finish = Some(FinishReason::Length);
            }
        }
    }

    /// The results, in prompt order. Call once [`is_done`](Self::is_done).
    pub fn into_generations(self) -> Vec<Generation> {
        self.seqs
            .into_iter()
            .map(|s| Generation {
                timings: Timings {
                    prefill_tokens: s.prompt_fed,
                    prefill_s: s.prefill_s,
                    decode_tokens: s.decode_tokens,
                    decode_s: s.decode_s,
                },
                prompt_token_ids: s.prompt,
                token_ids: s.tokens,
                text: s.text,
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
            })
            .collect()
    }
}

fn check_rows(logits: &[f32], rows: usize, vocab: usize) -> Result<(), GenerateError> {
    if logits.len() != rows * vocab {
        return Err(ModelError::Backend(format!(
            "forward returned {} logits, expected {rows} rows of {vocab}",
            logits.len()
        ))
        .into());
    }
    Ok(())
}

/// Runs a batch to the end. `on_step` sees each step's pieces and may stop everything early by
/// returning an error (a Python exception, for instance).
pub fn generate<D: Detokenize>(
    model: &mut dyn LanguageModel,
    detok: &D,
    prompts: Vec<Vec<u32>>,
    options: GenerateOptions,
    mut on_step: impl FnMut(&BatchDecode<D>, &[Piece]) -> Result<(), GenerateError>,
) -> Result<Vec<Generation>, GenerateError> {
    let config = model.config().clone();
    let mut batch = BatchDecode::new(prompts, options, detok, config.vocab_size, config.context_length)?;
    while !batch.is_done() {
        let result = batch.step(model, detok).and_then(|pieces| on_step(&batch, &pieces));
        if let Err(e) = result {
            batch.release(model);
            return Err(e);
        }
    }
    Ok(batch.into_generations())
}

#[cfg(test)]
mod tests;
