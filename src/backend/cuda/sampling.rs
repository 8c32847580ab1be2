//! Drawing tokens from logits that are still on the GPU: kernels/sampling.cu. A chunk pass of
//! many blocks a row (`sample_chunks`) records each chunk's statistics and best tokens; one block
//! per row (`sample_rows`) then draws from those records, or scans the row itself when they do
//! not settle the draw exactly (a filter reaching past the listed tokens). Rows without a top-k
//! filter that the records do not settle (a flat distribution's top-p or min-p nucleus) are left
//! to a second pass of many blocks a row (`sample_mass`) and a second `sample_rows` launch, when a
//! launch holds such rows at all.
//!
//! Per call, one small upload (each row's parameters, and the token histories of the rows with
//! penalties) and one small download (the chosen tokens, their log-probabilities and the k best
//! alternatives when asked for): the logits themselves never leave the device. Neither copy is on
//! the compute stream, where each left the GPU idle for a few microseconds of a decode step: both
//! run on a copy stream of the sampler's own, the upload while the forward pass runs (the draws
//! wait for it with an event, long since recorded when they start) and a queued draw set's
//! download after the draws, beside the next step.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice};

use super::backend::{launch, CudaAct, CudaBackend};
use super::context::CudaContext;
use super::error::{CudaError, DriverResultExt};
use super::kernels;
use crate::backend::draws::{check_close, continue_open, MAX_CLOSED_SETS};
use crate::backend::BackendError;
use crate::sampling::{noise, SampleSpec, Sampled, SamplingError};

/// Words per row of parameters (`RowParams` in sampling.cu).
const PARAM_WORDS: usize = 16;
/// Words per row of output (`OUT_WORDS` in sampling.cu).
const TOP_CAP: usize = 64;
const OUT_WORDS: usize = 4 + 2 * TOP_CAP;
const NO_LOGPROBS: u32 = u32::MAX;
/// The most values a chunk of a row holds and words per chunk record (`CHUNK_ELEMS`,
/// `CHUNK_WORDS` in sampling.cu), and the most chunks a row may have for the records to be drawn
/// from (`CHUNKS_MAX`: 32, vocabularies up to 262,144 tokens; larger ones scan their rows).
const CHUNK_ELEMS: usize = 8192;
const CHUNK_WORDS: usize = 16 + 2 * 64;
const CHUNKS_MAX: usize = 32;
const CHUNK_THREADS: u32 = 512;
/// Words per (row, chunk) of `sample_mass`'s output (`MASS_WORDS` in sampling.cu), and the most
/// bytes of them a launch may use: larger launches scan such rows with one block each.
const MASS_WORDS: usize = 4 * 1024;
const MASS_BYTES_MAX: usize = 64 << 20;

/// The chunk constants above are sampling.cu's (`src` is its text): the grid and the record
/// buffer are sized from them.
#[cfg(test)]
pub(super) fn assert_chunk_constants_match(src: &str) {
    assert!(src.contains(&format!("#define CHUNK_THREADS {CHUNK_THREADS}")));
    assert!(src.contains(&format!("#define CHUNK_ELEMS {CHUNK_ELEMS}")));
    assert!(src.contains("#define CHUNK_LIST 64") && CHUNK_WORDS == 16 + 2 * 64);
    assert!(src.contains("#define CHUNK_WORDS (16 + 2 * CHUNK_LIST)"));
    assert!(src.contains("#define CHUNKS_MAX (SORT_CAP / CHUNK_LIST)") && src.contains("#define SORT_CAP 2048") && CHUNKS_MAX == 2048 / 64);
    assert!(src.contains(&format!("#define TOP_CAP {TOP_CAP}")));
    assert!(src.contains(&format!("#define BATCH_IN_WORDS {BATCH_IN_WORDS}")));
    assert!(src.contains("#define MASS_BINS_0 1024") && src.contains("#define MASS_WORDS (4 * MASS_BINS_0)") && MASS_WORDS == 4 * 1024);
}

/// How `sample_chunks` cuts a row: [`small_batch_chunk_elems`] by default;
/// `FERRITE_CUDA_SAMPLE_CHUNK` set to a number of values (a multiple of CHUNK_THREADS up to
/// CHUNK_ELEMS) takes that size wherever it keeps a row within CHUNKS_MAX chunks (8192: every
/// launch as before the fifty-fourth session), to compare.
fn chunk_elems(vocab: usize, rows: usize, sms: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var("FERRITE_CUDA_SAMPLE_CHUNK")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0 && n % CHUNK_THREADS as usize == 0 && n <= CHUNK_ELEMS)
    });
    match forced {
        Some(n) if vocab.div_ceil(n) <= CHUNKS_MAX => n,
        _ => small_batch_chunk_elems(vocab, rows, sms),
    }
}

/// Values a chunk of a launch of `rows` rows of `vocab` logits: as few as keep a row within
/// CHUNKS_MAX chunks (a multiple of CHUNK_THREADS) while the launch's chunks fit two blocks an SM,
/// else CHUNK_ELEMS. A chunk pass's time is mostly its chunk's loads and three radix passes over
/// it, each as long as the chunk, and 19 chunks of 8,192 leave 113 of an H100's 132 SMs idle at
/// one row: Qwen2's vocabulary in 30 chunks of 5,120 instead, up to eight rows on 132 SMs. H100,
/// 2026-12-07 (docs/BENCHMARKS.md, fifty-fourth session): the real model's decode step at one /
/// two / four sequences 0.606 / 0.626 / 0.776 -> 0.601 / 0.621 / 0.773 ms (two rounds); the
/// sampler alone at eight rows 2.5-6.7 us faster in every configuration, at 64 rows (1,920 blocks
/// of 5,120 against 1,216 of 8,192) 10-20 us slower.
fn small_batch_chunk_elems(vocab: usize, rows: usize, sms: usize) -> usize {
    let threads = CHUNK_THREADS as usize;
    let small = vocab.div_ceil(CHUNKS_MAX).div_ceil(threads).max(1) * threads;
    if small < CHUNK_ELEMS && rows * vocab.div_ceil(small) <= 2 * sms { small } else { CHUNK_ELEMS }
}

/// `FERRITE_CUDA_SAMPLE_MASS=0`: rows the chunk records do not settle are scanned by one block
/// each, as before the mass pass, to compare the two.
fn mass_pass_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRITE_CUDA_SAMPLE_MASS").map_or(true, |v| v != "0"))
}

/// Launches that took the mass pass (`sample_mass` and a second `sample_rows`), for the tests
/// (`_cuda_counters`).
pub static SAMPLE_MASS_LAUNCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a row's draw may be left to the mass pass: sampled, without a top-k below the
/// vocabulary, with top-p or min-p (what the chunk records may fail to settle).
fn may_defer(p: &crate::sampling::SamplingParams, vocab: usize) -> bool {
    p.temperature > 0.0 && (p.top_k == 0 || p.top_k >= vocab) && (p.top_p < 1.0 || p.min_p > 0.0)
}

/// Words of a batch description `batch_in` takes in its launch's parameters (`BATCH_IN_WORDS` in
/// sampling.cu: 3,840 bytes of the 4 KB a launch's parameters hold).
pub const BATCH_IN_WORDS: usize = 960;

/// `FERRITE_CUDA_BATCH_IN=0`: every batch description is copied from pinned memory and the drawn
/// tokens fed by a kernel of their own (as larger descriptions always are), to compare the two.
fn batch_in_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRITE_CUDA_BATCH_IN").map_or(true, |v| v != "0"))
}

/// `FERRITE_CUDA_SAMPLE_CHUNKS=0` skips the chunk pass: every row is scanned by one block (the
/// path rows fall back to), to compare the two.
fn chunks_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("FERRITE_CUDA_SAMPLE_CHUNKS").map_or(true, |v| v != "0"))
}

/// Parameter buffers (pinned host staging and its device copy), used in turn: a slot is rewritten
/// only once the kernels of its launch PARAM_SLOTS launches ago are done (an event).
const PARAM_SLOTS: usize = 4;

struct ParamSlot {
    host: PinnedHostSlice<u32>,
    device: CudaSlice<u32>,
    done: Option<CudaEvent>,
}

/// The sampling kernel and its buffers, which only grow.
pub struct DeviceSampler {
    ctx: Arc<CudaContext>,
    func: CudaFunction,
    chunk_func: CudaFunction,
    mass_func: CudaFunction,
    feed_func: CudaFunction,
    batch_in_func: CudaFunction,
    params: [Option<ParamSlot>; PARAM_SLOTS],
    next_params: usize,
    output: Option<CudaSlice<u32>>,
    /// The stream that uploads the parameters and downloads closed sets.
    copy_stream: Option<Arc<CudaStream>>,
    chunks: Option<CudaSlice<u32>>,
    mass_bins: Option<CudaSlice<u32>>,
    /// The draw set being queued: per row, the log-probabilities asked for (the rows' output
    /// is decoded with them when the set is taken).
    open: Vec<Option<usize>>,
    open_vocab: usize,
    /// Closed sets in queue order, each copied to its own pinned landing buffer.
    closed: VecDeque<ClosedSet>,
    landings: [Option<PinnedHostSlice<u32>>; MAX_CLOSED_SETS],
    next_landing: usize,
    /// Rows of the output buffer that the next batch may be fed from: the last closed set's
    /// (0 once a plain `sample` has overwritten them).
    feedable_rows: usize,
}

struct ClosedSet {
    landing: usize,
    logprobs: Vec<Option<usize>>,
    vocab: usize,
    copied: CudaEvent,
}

impl DeviceSampler {
    pub fn new(ctx: Arc<CudaContext>) -> Result<DeviceSampler, CudaError> {
        let func = ctx.function(&kernels::SAMPLING, "sample_rows")?;
        let chunk_func = ctx.function(&kernels::SAMPLING, "sample_chunks")?;
        let mass_func = ctx.function(&kernels::SAMPLING, "sample_mass")?;
        let feed_func = ctx.function(&kernels::SAMPLING, "feed_drawn_tokens")?;
        let batch_in_func = ctx.function(&kernels::SAMPLING, "batch_in")?;
        Ok(DeviceSampler {
            ctx,
            func,
            chunk_func,
            mass_func,
            feed_func,
            batch_in_func,
            params: Default::default(),
            next_params: 0,
            output: None,
            copy_stream: None,
            chunks: None,
            mass_bins: None,
            open: Vec::new(),
            open_vocab: 0,
            closed: VecDeque::new(),
            landings: [None, None],
            next_landing: 0,
            feedable_rows: 0,
        })
    }

    /// Draws one token from each of the first `specs.len()` rows of the float32 buffer at
    /// device address `logits` (`logits_len` floats; rows of `vocab`), which the penalties change
    /// in place. Synchronizes.
    pub fn sample(
        &mut self,
        logits: u64,
        logits_len: usize,
        vocab: usize,
        specs: &[SampleSpec<'_>],
        out: &mut Vec<Result<Sampled, SamplingError>>,
    ) -> Result<(), CudaError> {
        let n = specs.len();
        if n == 0 {
            return Ok(());
        }
        self.launch(logits, logits_len, vocab, specs, 0)?;
        self.feedable_rows = 0;
        let Some(output) = self.output.as_ref() else { unreachable!("grown by launch") };
        let words = self.ctx.download(&output.slice(..n * OUT_WORDS), "the sampled tokens")?;
        for (spec, o) in specs.iter().zip(words.chunks_exact(OUT_WORDS)) {
            out.push(decode_row(spec.logprobs, o, vocab));
        }
        Ok(())
    }

    /// [`DeviceSampler::sample`] without waiting: the rows become rows `first_row..` of the draw
    /// set being queued (`first_row == 0` starts a new one).
    pub fn queue(&mut self, logits: u64, logits_len: usize, vocab: usize, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), CudaError> {
        continue_open(&mut self.open, first_row).map_err(CudaError::Invalid)?;
        if first_row > 0 && vocab != self.open_vocab {
            return Err(CudaError::Invalid(format!("draws of a vocabulary of {vocab} queued into a set of {}", self.open_vocab)));
        }
        self.launch(logits, logits_len, vocab, specs, first_row)?;
        self.open.extend(specs.iter().map(|s| s.logprobs));
        self.open_vocab = vocab;
        Ok(())
    }

    /// Ends the set being queued (`rows` rows): queues the copy of its output to a pinned
    /// landing buffer and marks its end, so that `take` waits for this set alone.
    pub fn close(&mut self, rows: usize) -> Result<(), CudaError> {
        check_close(&mut self.open, rows, self.closed.len()).map_err(CudaError::Invalid)?;
        // Sets are taken in order, so with at most two waiting the landings alternate.
        let slot = self.next_landing;
        self.next_landing = (slot + 1) % MAX_CLOSED_SETS;
        let words = rows * OUT_WORDS;
        if self.landings[slot].as_ref().is_none_or(|l| l.len() < words) {
            self.landings[slot] = None;
            let len = words.next_power_of_two().max(4096);
            // Not write-combined (cudarc's default): the host reads these.
            // SAFETY: only the rows a copy has filled are read.
            let pinned = unsafe { self.ctx.raw().alloc_pinned_with_flags::<u32>(len, 0) }
                .ctx(|| format!("allocating {} bytes of pinned host memory for the drawn tokens", len * 4))?;
            self.landings[slot] = Some(pinned);
        }
        let copied = self.ctx.new_event("an event")?;
        if let Some(output) = self.output.as_ref().filter(|_| rows > 0) {
            let copy = copy_stream(&self.ctx, &mut self.copy_stream)?;
            // The copy waits for the draws, the compute stream not for the copy.
            let drawn = self.ctx.new_event("an event")?;
            drawn.record(self.ctx.stream()).ctx(|| "recording the end of the draws".into())?;
            copy.wait(&drawn).ctx(|| "ordering the draws' copy after them".into())?;
            let Some(landing) = self.landings[slot].as_mut() else { unreachable!("allocated above") };
            // Not cudarc's memcpy_dtoh, which copies the whole destination: the landing is
            // larger than the rows.
            let dst = landing.as_mut_ptr().ctx(|| "the drawn tokens' landing buffer".into())?;
            let src = super::backend::addr(output, &self.ctx);
            // SAFETY: the landing holds at least `words` u32 (grown above) and the output buffer
            // at least `words` (grown by `launch` for these rows); the copy follows the draws
            // (`drawn`), the next launch waits for it (`copied`, while the set is not taken)
            // before it overwrites or frees the output buffer, and the host reads the landing
            // only after `copied`.
            unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut std::ffi::c_void, src, words * 4, copy.cu_stream()) }
                .result()
                .ctx(|| "copying the drawn tokens device->host".into())?;
            copied.record(&copy).ctx(|| "recording the end of a draw set".into())?;
        } else {
            copied.record(self.ctx.stream()).ctx(|| "recording the end of a draw set".into())?;
        }
        self.feedable_rows = rows;
        let logprobs = std::mem::take(&mut self.open);
        self.closed.push_back(ClosedSet { landing: slot, logprobs, vocab: self.open_vocab, copied });
        Ok(())
    }

    /// Waits for the oldest closed set and appends its draws to `out`. A kernel fault queued
    /// before surfaces here.
    pub fn take(&mut self, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), CudaError> {
        let set = self.closed.pop_front().ok_or_else(|| CudaError::Invalid("take_draws without a closed draw set".into()))?;
        set.copied.synchronize().map_err(|e| CudaError::KernelFault { op: "waiting for a draw set".into(), msg: super::error::describe(&e) })?;
        if set.logprobs.is_empty() {
            return Ok(());
        }
        let Some(landing) = self.landings[set.landing].as_ref() else { unreachable!("allocated by close") };
        let words = landing.as_slice().ctx(|| "reading the drawn tokens".into())?;
        for (logprobs, o) in set.logprobs.iter().zip(words.chunks_exact(OUT_WORDS)) {
            out.push(decode_row(*logprobs, o, set.vocab));
        }
        Ok(())
    }

    /// Queues `tokens[pairs[2i]] = token drawn for row pairs[2i + 1]` of the last closed set, for
    /// `n_pairs` pairs at device address `pairs`, into the batch's token ids at `tokens`.
    /// `max_row` is the largest row named (checked by the caller against the plan).
    pub fn feed(&self, tokens: u64, pairs: u64, n_pairs: usize, max_row: usize) -> Result<(), CudaError> {
        if n_pairs == 0 {
            return Ok(());
        }
        let output = self.fed_output(max_row)?;
        let n = u32::try_from(n_pairs).map_err(|_| CudaError::Invalid(format!("{n_pairs} fed tokens")))?;
        let cfg = super::backend::grid_stride(n as u64);
        launch!(self.ctx, &self.feed_func, "feed_drawn_tokens", cfg, &tokens, &output, &pairs, &n)
    }

    /// The device address of the last closed set's rows, which tokens fed from rows up to
    /// `max_row` are read from; an error where the set has no such row.
    fn fed_output(&self, max_row: usize) -> Result<u64, CudaError> {
        if max_row >= self.feedable_rows {
            return Err(CudaError::Invalid(format!("a token fed from draw row {max_row} of a set of {} rows", self.feedable_rows)));
        }
        let Some(output) = self.output.as_ref() else { unreachable!("feedable rows exist") };
        Ok(super::backend::addr(output, &self.ctx))
    }

    /// Queues the batch description `packed` into device address `dst` from the launch's own
    /// parameters, then `packed[t] = token drawn for row r` of the last closed set for each pair
    /// (t, r) at words `fed_at..` of it (as [`feed`](Self::feed) does), in one launch. `max_row` is
    /// the largest row named (checked by the caller against the plan). Returns false, having
    /// queued nothing, where the description is longer than [`BATCH_IN_WORDS`] or
    /// FERRITE_CUDA_BATCH_IN=0: the caller copies it and feeds then.
    pub fn batch_in(&self, dst: u64, packed: &[u32], fed_at: usize, max_row: usize) -> Result<bool, CudaError> {
        if !batch_in_enabled() || packed.len() > BATCH_IN_WORDS {
            return Ok(false);
        }
        let n_fed = (packed.len() - fed_at) / 2;
        let out = if n_fed == 0 { 0 } else { self.fed_output(max_row)? };
        let mut words = [0u32; BATCH_IN_WORDS];
        words[..packed.len()].copy_from_slice(packed);
        // Each argument's bytes behind a pointer, the scalars as launch.rs holds them (little-endian
        // u64s, read as wide as the kernel's parameter), the description as the struct itself.
        let mut scalars: [u64; 5] = [dst, packed.len() as u64, out, fed_at as u64, n_fed as u64];
        let [d, n, o, f, nf] = scalars.each_mut().map(|w| w as *mut u64 as *mut std::ffi::c_void);
        let mut params = [d, n, words.as_mut_ptr() as *mut std::ffi::c_void, o, f, nf];
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: `params` is batch_in's parameter list (sampling.cu): dst, n_words, the words
        // (BATCH_IN_WORDS u32), out, fed_at, n_fed; dst holds the description (the caller's buffer,
        // grown for it), out the last closed set's rows (max_row checked above).
        self.ctx.check_launch(unsafe { self.ctx.launch_raw(&self.batch_in_func, cfg, &mut params) }, "batch_in")?;
        Ok(true)
    }

    /// Launches the draws of `specs` into rows `first_row..` of the output buffer.
    fn launch(&mut self, logits: u64, logits_len: usize, vocab: usize, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), CudaError> {
        let n = specs.len();
        if n == 0 {
            return Ok(());
        }
        if logits_len < n * vocab {
            return Err(CudaError::Invalid(format!("sampling {n} rows of {vocab} from a buffer of {logits_len}")));
        }
        let vocab_u = u32::try_from(vocab).map_err(|_| CudaError::Invalid(format!("a vocabulary of {vocab} tokens")))?;
        // Packed: params [n][16] | penalty ids | penalty counts | penalty in-prompt flags.
        let mut params = Vec::with_capacity(n * PARAM_WORDS);
        let (mut ids, mut counts, mut in_prompt) = (Vec::new(), Vec::new(), Vec::new());
        for spec in specs {
            let p = spec.params;
            let offset = ids.len() as u32;
            if let Some(h) = spec.history.filter(|_| p.has_penalties()) {
                for (id, count, prompt) in h.entries() {
                    ids.push(id);
                    counts.push(count);
                    in_prompt.push(prompt as u32);
                }
            }
            let key = noise::draw_key(p.seed, spec.draw_index);
            let ln_min_p = if p.min_p > 0.0 { (p.min_p as f64).ln() as f32 } else { f32::NEG_INFINITY };
            let logprobs = match spec.logprobs {
                None => NO_LOGPROBS,
                Some(k) => k.min(crate::sampling::MAX_TOP_LOGPROBS) as u32,
            };
            params.extend_from_slice(&[
                p.temperature.to_bits(),
                u32::try_from(p.top_k).unwrap_or(u32::MAX),
                p.top_p.to_bits(),
                p.min_p.to_bits(),
                p.repetition_penalty.to_bits(),
                p.presence_penalty.to_bits(),
                p.frequency_penalty.to_bits(),
                ids.len() as u32 - offset,
                offset,
                logprobs,
                key as u32,
                (key >> 32) as u32,
                ln_min_p.to_bits(),
                0,
                0,
                0,
            ]);
        }
        let n_pen = ids.len();
        let mut packed = params;
        packed.extend_from_slice(&ids);
        packed.extend_from_slice(&counts);
        packed.extend_from_slice(&in_prompt);
        // A closed set's download reads the output buffer, which this launch overwrites (or
        // frees, growing it): the last one's end covers the others (one stream, in order); a set
        // taken was waited for.
        if let Some(set) = self.closed.back() {
            self.ctx.stream().wait(&set.copied).ctx(|| "ordering the draws after the last set's copy".into())?;
        }
        grow_keeping(&self.ctx, &mut self.output, (first_row + n) * OUT_WORDS, first_row * OUT_WORDS, "the sampled tokens")?;
        let Some(output) = self.output.as_mut() else { unreachable!("grown above") };
        let copy = copy_stream(&self.ctx, &mut self.copy_stream)?;
        let slot = self.next_params;
        self.next_params = (slot + 1) % PARAM_SLOTS;
        let entry = &mut self.params[slot];
        if let Some(ParamSlot { done: Some(done), .. }) = entry.as_ref() {
            // The kernels that read this slot (after its copy), PARAM_SLOTS launches ago.
            done.synchronize().map_err(|e| CudaError::KernelFault { op: "waiting for a sampling parameter buffer".into(), msg: super::error::describe(&e) })?;
        }
        if entry.as_ref().is_none_or(|p| p.host.len() < packed.len()) {
            *entry = None;
            let len = packed.len().next_power_of_two().max(1024);
            // Not write-combined (cudarc's default): plain stores, read once by the copy.
            // SAFETY: only the prefix written below is copied.
            let host = unsafe { self.ctx.raw().alloc_pinned_with_flags::<u32>(len, 0) }
                .ctx(|| format!("allocating {} bytes of pinned host memory for the sampling parameters", len * 4))?;
            let device = self.ctx.alloc::<u32>(len, "the sampling parameters")?;
            // The allocation is ordered on the compute stream only (cuMemAllocAsync); the copy
            // stream writes the buffer next.
            let allocated = self.ctx.new_event("an event")?;
            allocated.record(self.ctx.stream()).ctx(|| "ordering a new parameter buffer".into())?;
            copy.wait(&allocated).ctx(|| "ordering a new parameter buffer".into())?;
            *entry = Some(ParamSlot { host, device, done: None });
        }
        let Some(ParamSlot { host, device, done }) = entry.as_mut() else { unreachable!("allocated above") };
        let host_ptr = host.as_mut_ptr().ctx(|| "a sampling parameter buffer".into())?;
        // SAFETY: the buffer holds at least packed.len() u32, and neither the copy nor a kernel
        // reads it now (waited above).
        unsafe { std::ptr::copy_nonoverlapping(packed.as_ptr(), host_ptr, packed.len()) };
        let base = super::backend::addr(&*device, &self.ctx);
        // SAFETY: both buffers hold at least packed.len() u32; the host buffer stays untouched
        // and the device buffer unread by other work until `done` (recorded after this launch's
        // kernels, which wait for the copy) has completed.
        unsafe { sys::cuMemcpyHtoDAsync_v2(base, host_ptr as *const std::ffi::c_void, packed.len() * 4, copy.cu_stream()) }
            .result()
            .ctx(|| "copying the sampling parameters host->device".into())?;
        let uploaded = self.ctx.new_event("an event")?;
        uploaded.record(&copy).ctx(|| "recording the end of the parameters' copy".into())?;
        self.ctx.stream().wait(&uploaded).ctx(|| "ordering the draws after their parameters' copy".into())?;
        let at = |words: usize| base + (words * 4) as u64;
        let (params_ptr, ids_ptr) = (at(0), at(n * PARAM_WORDS));
        let (counts_ptr, prompt_ptr) = (at(n * PARAM_WORDS + n_pen), at(n * PARAM_WORDS + 2 * n_pen));
        let out_ptr = super::backend::addr(&*output, &self.ctx) + (first_row * OUT_WORDS * 4) as u64;
        let (ctx, chunk_func, func, mass_func) = (&self.ctx, &self.chunk_func, &self.func, &self.mass_func);
        let (chunks, mass_bins) = (&mut self.chunks, &mut self.mass_bins);
        let launched = (|| -> Result<(), CudaError> {
            let chunk = chunk_elems(vocab, n, ctx.sms());
            // sample_chunks' shared keys hold CHUNK_ELEMS values, its shares CHUNK_THREADS each.
            debug_assert!(chunk <= CHUNK_ELEMS && chunk % CHUNK_THREADS as usize == 0, "chunk of {chunk} values");
            let (n_chunks, chunk_u) = (vocab.div_ceil(chunk), chunk as u32);
            let (mut chunks_ptr, mut n_chunks_u) = (0u64, 0u32);
            let mut mass_ptr = 0u64;
            // A block a chunk of a row: sample_chunks and sample_mass.
            let chunk_cfg = LaunchConfig { grid_dim: (n_chunks as u32, n as u32, 1), block_dim: (CHUNK_THREADS, 1, 1), shared_mem_bytes: 0 };
            if chunks_enabled() && n_chunks <= CHUNKS_MAX && n <= u16::MAX as usize {
                grow(ctx, chunks, n * n_chunks * CHUNK_WORDS, "the sampler's chunk records")?;
                let Some(chunks) = chunks.as_mut() else { unreachable!("grown above") };
                n_chunks_u = n_chunks as u32;
                launch!(ctx, chunk_func, "sample_chunks", chunk_cfg, &logits, &vocab_u, &params_ptr, &ids_ptr, &counts_ptr, &prompt_ptr, &mut *chunks, &chunk_u)?;
                chunks_ptr = super::backend::addr(&*chunks, ctx);
                let mass_words = n * n_chunks * MASS_WORDS;
                if mass_pass_enabled() && mass_words * 4 <= MASS_BYTES_MAX && specs.iter().any(|s| may_defer(s.params, vocab)) {
                    grow(ctx, mass_bins, mass_words, "the sampler's mass bins")?;
                    let Some(bins) = mass_bins.as_ref() else { unreachable!("grown above") };
                    mass_ptr = super::backend::addr(bins, ctx);
                }
            }
            let cfg = LaunchConfig { grid_dim: (n as u32, 1, 1), block_dim: (kernels::SAMPLE_THREADS, 1, 1), shared_mem_bytes: 0 };
            let phase: u32 = if mass_ptr != 0 { 1 } else { 0 };
            launch!(ctx, func, "sample_rows", cfg, &logits, &vocab_u, &params_ptr, &ids_ptr, &counts_ptr, &prompt_ptr, &chunks_ptr, &n_chunks_u, &out_ptr, &mass_ptr, &phase)?;
            if mass_ptr != 0 {
                SAMPLE_MASS_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                launch!(ctx, mass_func, "sample_mass", chunk_cfg, &logits, &vocab_u, &params_ptr, &out_ptr, &mass_ptr, &chunk_u)?;
                let phase: u32 = 2;
                launch!(ctx, func, "sample_rows", cfg, &logits, &vocab_u, &params_ptr, &ids_ptr, &counts_ptr, &prompt_ptr, &chunks_ptr, &n_chunks_u, &out_ptr, &mass_ptr, &phase)?;
            }
            Ok(())
        })();
        // Whatever the launches did: the slot's copy is queued, and its buffers must outlive it.
        let read = match done.take() {
            Some(ev) => ev,
            None => self.ctx.new_event("an event")?,
        };
        read.record(self.ctx.stream()).ctx(|| "recording the end of a sampling launch".into())?;
        *done = Some(read);
        launched
    }
}

impl Drop for DeviceSampler {
    /// The copies in flight read and write buffers dropped with the sampler (the landings, the
    /// parameter slots, the output), which nothing else orders them with.
    fn drop(&mut self) {
        if let Some(copy) = self.copy_stream.as_ref() {
            let _ = copy.synchronize();
        }
        let _ = self.ctx.stream().synchronize();
    }
}

/// The sampler's copy stream, made on first use.
fn copy_stream(ctx: &CudaContext, stream: &mut Option<Arc<CudaStream>>) -> Result<Arc<CudaStream>, CudaError> {
    if let Some(s) = stream.as_ref() {
        return Ok(s.clone());
    }
    let s = ctx.raw().new_stream().ctx(|| "creating the sampler's copy stream".into())?;
    *stream = Some(s.clone());
    Ok(s)
}

fn grow(ctx: &CudaContext, buf: &mut Option<CudaSlice<u32>>, words: usize, what: &str) -> Result<(), CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < words) {
        *buf = None;
        *buf = Some(ctx.alloc::<u32>(words.next_power_of_two().max(1024), what)?);
    }
    Ok(())
}

/// [`grow`], keeping the first `keep` words (the rows of a draw set queued so far).
fn grow_keeping(ctx: &CudaContext, buf: &mut Option<CudaSlice<u32>>, words: usize, keep: usize, what: &str) -> Result<(), CudaError> {
    if buf.as_ref().is_none_or(|b| b.len() < words) {
        let mut bigger = ctx.alloc::<u32>(words.next_power_of_two().max(1024), what)?;
        if let Some(old) = buf.as_ref().filter(|_| keep > 0) {
            ctx.stream()
                .memcpy_dtod(&old.slice(..keep), &mut bigger.slice_mut(..keep))
                .ctx(|| format!("keeping {what} while growing its buffer"))?;
        }
        *buf = Some(bigger);
    }
    Ok(())
}

/// One row of the kernel's output as the host sampler would have reported it.
fn decode_row(logprobs: Option<usize>, o: &[u32], vocab: usize) -> Result<Sampled, SamplingError> {
    match o[1] {
        0 => {}
        1 => return Err(SamplingError::NonFinite { id: o[0], value: f32::from_bits(o[2]) }),
        _ => return Err(SamplingError::NothingToSample),
    }
    let token = o[0];
    if token as usize >= vocab {
        return Err(SamplingError::BadTokenId { id: token, vocab_size: vocab });
    }
    let mut sampled = Sampled { token, logprob: None, top_logprobs: Vec::new() };
    if let Some(k) = logprobs {
        sampled.logprob = Some(f32::from_bits(o[2]));
        let n_top = (o[3] as usize).min(TOP_CAP);
        let mut top: Vec<(u32, f32)> = (0..n_top).map(|j| (o[4 + j], f32::from_bits(o[4 + TOP_CAP + j]))).collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(k.min(crate::sampling::MAX_TOP_LOGPROBS));
        sampled.top_logprobs = top;
    }
    Ok(sampled)
}

pub(super) fn queue_draws(be: &mut CudaBackend, logits: &CudaAct, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), BackendError> {
    if specs.len() > logits.capacity_rows {
        return Err(BackendError::Invalid(format!("sampling {} rows of a buffer of {}", specs.len(), logits.capacity_rows)));
    }
    let vocab = logits.width;
    if be.host_sampling {
        let mut rows = vec![0f32; specs.len() * vocab];
        crate::backend::Backend::read_rows(be, logits, specs.len(), &mut rows)?;
        return be.host_draws.queue(first_row, |out| {
            crate::sampling::sample_rows(&rows, vocab, specs, out);
            Ok(())
        });
    }
    // The penalties change the rows in place: they are this step's scratch, read by nothing else.
    let ptr = super::backend::addr(&logits.buf, &be.ctx);
    be.sampler.queue(ptr, logits.capacity_rows * vocab, vocab, specs, first_row)?;
    Ok(())
}

pub(super) fn close_draws(be: &mut CudaBackend, rows: usize) -> Result<(), BackendError> {
    if be.host_sampling {
        return be.host_draws.close(rows);
    }
    Ok(be.sampler.close(rows)?)
}

pub(super) fn take_draws(be: &mut CudaBackend, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError> {
    if be.host_sampling {
        return be.host_draws.take(out);
    }
    Ok(be.sampler.take(out)?)
}

#[cfg(test)]
mod chunk_size_tests {
    use super::{small_batch_chunk_elems, CHUNKS_MAX, CHUNK_ELEMS, CHUNK_THREADS};

    /// Launches whose rows leave most SMs idle cut a row into more, smaller chunks (Qwen2's
    /// 151,936 logits: 30 of 5,120 instead of 19 of 8,192, up to eight rows on 132 SMs); larger
    /// launches, and vocabularies that need CHUNK_ELEMS to stay within CHUNKS_MAX, keep it.
    #[test]
    fn few_rows_take_small_chunks_within_the_kernels_limits() {
        assert_eq!(small_batch_chunk_elems(151_936, 1, 132), 5120);
        assert_eq!(small_batch_chunk_elems(151_936, 8, 132), 5120);
        assert_eq!(small_batch_chunk_elems(151_936, 9, 132), CHUNK_ELEMS);
        assert_eq!(small_batch_chunk_elems(151_936, 64, 132), CHUNK_ELEMS);
        assert_eq!(small_batch_chunk_elems(151_936, 1, 14), CHUNK_ELEMS, "a GPU of few SMs");
        assert_eq!(small_batch_chunk_elems(262_144, 1, 132), CHUNK_ELEMS);
        assert_eq!(small_batch_chunk_elems(1000, 1, 132), 512);
        for vocab in [1, 511, 512, 513, 32_000, 128_256, 151_936, 152_064, 200_000, 262_144, 300_000] {
            for rows in [1, 2, 3, 8, 64] {
                let c = small_batch_chunk_elems(vocab, rows, 132);
                assert!(c % CHUNK_THREADS as usize == 0 && c <= CHUNK_ELEMS, "{vocab} {rows}: {c}");
                if vocab <= CHUNKS_MAX * CHUNK_ELEMS {
                    assert!(vocab.div_ceil(c) <= CHUNKS_MAX, "{vocab} {rows}: {c}");
                }
            }
        }
    }
}
