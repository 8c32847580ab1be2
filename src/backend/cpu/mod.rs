//! CPU backend: weights stay quantized in the GGUF memory map; projections go through
//! `quant::matmul`; activations are float32, the KV cache float32 or f16 (`kv_cache`). Parallel
//! with rayon.

mod kv_cache;

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

pub use kv_cache::CpuKvCache;
use kv_cache::KvRows;

use super::{check_width, AttnParams, Backend, BatchPlan, KvLayout, RopeParams, RopeStyle, TensorSource};
use crate::backend::BackendError;
use crate::quant::{self, GgmlType};
use crate::sampling::{self, SampleSpec, Sampled, SamplingError};

/// A tensor borrowed from the memory map. Vectors (norm weights, biases) are tiny and read on
/// every token, so they are kept dequantized as well.
pub struct CpuWeight {
    src: TensorSource,
    row_bytes: usize,
    dense: Option<Vec<f32>>,
    /// The matrix repacked into the interleaved tiles of the integer kernels (types that have
    /// them), made at load; for the token embedding, which most models only look rows up in,
    /// at its first use as a matmul weight (a tied LM head). `None` inside: not packable, or
    /// `exact_matmul`.
    packed: OnceLock<Option<quant::PackedMatrix>>,
}

impl CpuWeight {
    fn bytes(&self) -> &[u8] {
        self.src.bytes()
    }
    fn ty(&self) -> GgmlType {
        self.src.ggml_type()
    }
    fn n_cols(&self) -> usize {
        self.src.n_cols()
    }
    fn n_rows(&self) -> usize {
        self.src.n_rows()
    }
    /// The packed matrix, repacking on first use; `None` for types without packed kernels.
    fn packed(&self) -> Result<Option<&quant::PackedMatrix>, BackendError> {
        if self.packed.get().is_none() {
            let p = quant::PackedMatrix::new(self.ty(), self.bytes(), self.n_rows(), self.n_cols())?;
            let _ = self.packed.set(p);
        }
        Ok(self.packed.get().and_then(|p| p.as_ref()))
    }
    fn dense(&self) -> Result<&[f32], BackendError> {
        self.dense.as_deref().ok_or_else(|| BackendError::BadTensor {
            tensor: self.src.name().to_string(),
            problem: "used as a vector but it is a matrix".into(),
        })
    }
}

pub struct CpuAct {
    data: Vec<f32>,
    width: usize,
    capacity_rows: usize,
}

impl CpuAct {
    fn rows(&self, n_rows: usize) -> Result<&[f32], BackendError> {
        check_rows(self, n_rows)?;
        Ok(&self.data[..n_rows * self.width])
    }
    fn rows_mut(&mut self, n_rows: usize) -> Result<&mut [f32], BackendError> {
        check_rows(self, n_rows)?;
        Ok(&mut self.data[..n_rows * self.width])
    }
}

fn check_rows(a: &CpuAct, n_rows: usize) -> Result<(), BackendError> {
    if n_rows > a.capacity_rows {
        return Err(BackendError::Invalid(format!(
            "{n_rows} rows requested from a buffer of {} rows",
            a.capacity_rows
        )));
    }
    Ok(())
}

pub struct CpuBackend {
    exact_matmul: bool,
    /// The threads projections run on (the caller is one of them).
    pool: Arc<quant::ThreadPool>,
    /// With an explicit thread count, the other parallel ops (embedding, RoPE, attention,
    /// sampling) run on a rayon pool of the same size instead of rayon's global one.
    rayon: Option<Arc<rayon::ThreadPool>>,
    draws: super::draws::HostDraws,
    /// An f16 KV cache's rows widened to float32 for one layer's attention (reused), at most
    /// `widen_max_bytes` of them at once.
    widened_k: Vec<f32>,
    widened_v: Vec<f32>,
    widen_max_bytes: usize,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    /// Matmuls on `quant::pool::default_threads()` threads: the physical cores, or
    /// `RAYON_NUM_THREADS` when set.
    pub fn new() -> CpuBackend {
        CpuBackend::with_threads(quant::pool::default_threads())
    }

    /// Matmuls on `n_threads` threads (the calling thread included; 0 is taken as 1). The
    /// other CPU ops (attention, norms) run on rayon's global pool.
    pub fn with_threads(n_threads: usize) -> CpuBackend {
        CpuBackend {
            exact_matmul: false,
            pool: Arc::new(quant::ThreadPool::new(n_threads.max(1))),
            rayon: None,
            draws: Default::default(),
            widened_k: Vec::new(),
            widened_v: Vec::new(),
            widen_max_bytes: widen_max_bytes(),
        }
    }

    /// Every op on `n_threads` threads: the matmuls' pool and a rayon pool of the same size for
    /// the rest (`Model.load(threads=n)`).
    pub fn with_all_threads(n_threads: usize) -> Result<CpuBackend, BackendError> {
        let mut b = CpuBackend::with_threads(n_threads);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n_threads.max(1))
            .build()
            .map_err(|e| BackendError::Invalid(format!("starting {n_threads} threads: {e}")))?;
        b.rayon = Some(Arc::new(pool));
        Ok(b)
    }



    /// Threads the matmuls run on.
    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// `true`: projections dequantize weight rows and multiply in float32
    /// (`quant::matmul_reference`) instead of quantizing activations to 8 bits.
    pub fn with_exact_matmul(mut self, exact: bool) -> CpuBackend {
        self.exact_matmul = exact;
        self
    }
}

/// Below this many multiply-adds an op runs on the calling thread: rayon's fork/join costs
/// more than it saves on decode-sized work.
const PAR_MIN_WORK: usize = 1 << 14;

impl CpuBackend {
    /// The pool to move to when this backend has its own rayon pool and the caller is not on it.
    fn foreign_pool(&self) -> Option<Arc<rayon::ThreadPool>> {
        self.rayon.as_ref().filter(|p| p.current_thread_index().is_none()).cloned()
    }
}

/// Most bytes of float32 keys and values an f16 cache's rows are widened into at once (see
/// `attention`): 64 MiB, or `FERRITE_CPU_WIDEN_MAX_BYTES` (a test hook: a small value puts each
/// sequence of a batch in a group of its own).
fn widen_max_bytes() -> usize {
    std::env::var("FERRITE_CPU_WIDEN_MAX_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(64 << 20)
}

/// Positions of sequence `seq`'s context that the batch's tokens attend to: up to its last
/// token's, inclusive (0 when it has no token here).
fn seq_context(batch: &BatchPlan, seq: usize) -> usize {
    let t1 = batch.token_seq.partition_point(|&s| (s as usize) <= seq);
    let t0 = batch.token_seq.partition_point(|&s| (s as usize) < seq);
    batch.positions[t0..t1].iter().map(|&p| p as usize + 1).max().unwrap_or(0)
}

/// Causal attention of the rows of `os` (tokens `t0..` of the batch, `[token][n_heads *
/// head_dim]`) over keys and values in `kc` / `vc`, where position `j` of sequence `seq` starts
/// at `row_of(seq, j)` (all KV heads, `kv_width` floats). One task per (token, query head).
#[allow(clippy::too_many_arguments)]
fn attend(
    qs: &[f32],
    os: &mut [f32],
    t0: usize,
    batch: &BatchPlan,
    p: &AttnParams,
    q_width: usize,
    kc: &[f32],
    vc: &[f32],
    row_of: impl Fn(usize, usize) -> usize + Sync,
) {
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let head_task = |scores: &mut Vec<f32>, (idx, o): (usize, &mut [f32])| {
        let (t, h) = (t0 + idx / p.n_heads, idx % p.n_heads);
        let seq = batch.token_seq[t] as usize;
        let n_ctx = batch.positions[t] as usize + 1;
        let qh = &qs[t * q_width + h * hd..t * q_width + (h + 1) * hd];
        let kvh = h / group;
        let key_at = |j: usize| row_of(seq, j) + kvh * hd;
        scores.clear();
        let mut max = f32::NEG_INFINITY;
        for j in 0..n_ctx {
            let off = key_at(j);
            let dot = quant::fdot(qh, &kc[off..off + hd]) * scale;
            max = max.max(dot);
            scores.push(dot);
        }
        let mut sum = 0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, &w) in scores.iter().enumerate() {
            let off = key_at(j);
            let w = w * inv;
            for (oo, &vv) in o.iter_mut().zip(&vc[off..off + hd]) {
                *oo += w * vv;
            }
        }
    };
    let n_tokens = os.len() / q_width;
    let work: usize = batch.positions[t0..t0 + n_tokens].iter().map(|&p| p as usize + 1).sum::<usize>() * q_width;
    if work < PAR_MIN_WORK {
        let mut scores = Vec::new();
        os.chunks_exact_mut(hd).enumerate().for_each(|item| head_task(&mut scores, item));
    } else {
        os.par_chunks_exact_mut(hd).enumerate().for_each_init(Vec::new, head_task);
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Act = CpuAct;
    type KvCache = CpuKvCache;
    type Batch = BatchPlan;

    fn device(&self) -> String {
        "cpu".to_string()
    }

    fn load_weight(&mut self, src: &TensorSource) -> Result<CpuWeight, BackendError> {
        let ty = src.ggml_type();
        let row_bytes = quant::row_bytes(ty, src.n_cols())?;
        quant::check_len(ty, src.bytes().len(), src.n_cols() * src.n_rows())?;
        let dense = if src.n_rows() == 1 {
            let mut v = vec![0f32; src.n_cols()];
            quant::dequantize(ty, src.bytes(), &mut v)?;
            Some(v)
        } else {
            // Fail at load, not at the first token, when this type cannot be computed with.
            let mut probe = vec![0f32; src.n_cols()];
            quant::dequantize(ty, &src.bytes()[..row_bytes], &mut probe)?;
            None
        };
        let w = CpuWeight { src: src.clone(), row_bytes, dense, packed: OnceLock::new() };
        if w.dense.is_some() || self.exact_matmul {
            let _ = w.packed.set(None);
        } else if !src.name().ends_with("token_embd.weight") {
            w.packed()?;
        }
        Ok(w)
    }

    fn alloc_act(&mut self, capacity_rows: usize, width: usize) -> Result<CpuAct, BackendError> {
        let n = capacity_rows
            .checked_mul(width)
            .ok_or_else(|| BackendError::Invalid(format!("activation {capacity_rows} x {width} overflows")))?;
        Ok(CpuAct { data: vec![0f32; n], width, capacity_rows })
    }

    fn alloc_kv_cache(&mut self, layout: &KvLayout) -> Result<CpuKvCache, BackendError> {
        CpuKvCache::new(layout)
    }

    fn upload_batch(&mut self, plan: &BatchPlan) -> Result<BatchPlan, BackendError> {
        let mut batch = plan.clone();
        self.draws.feed(plan, &mut batch.tokens)?;
        Ok(batch)
    }

    fn embed(&mut self, table: &CpuWeight, batch: &BatchPlan, out: &mut CpuAct) -> Result<(), BackendError> {
        if let Some(pool) = self.foreign_pool() {
            return pool.install(|| self.embed(table, batch, out));
        }
        let width = table.n_cols();
        check_width("embedding output", out.width, width)?;
        let n = batch.n_tokens();
        let rows = out.rows_mut(n)?;
        let bytes = table.bytes();
        rows.par_chunks_mut(width).zip(batch.tokens.par_iter()).try_for_each(|(row, &tok)| {
            let t = tok as usize;
            if t >= table.n_rows() {
                return Err(BackendError::BadTokenId { id: tok, vocab_size: table.n_rows() });
            }
            quant::dequantize(table.ty(), &bytes[t * table.row_bytes..(t + 1) * table.row_bytes], row)?;
            Ok(())
        })
    }

    fn rms_norm(&mut self, x: &CpuAct, weight: &CpuWeight, eps: f32, n_rows: usize, out: &mut CpuAct) -> Result<(), BackendError> {
        let w = weight.dense()?;
        check_width("rms_norm input", x.width, w.len())?;
        check_width("rms_norm output", out.width, w.len())?;
        let width = w.len();
        let xs = x.rows(n_rows)?;
        let os = out.rows_mut(n_rows)?;
        for (xr, or) in xs.chunks_exact(width).zip(os.chunks_exact_mut(width)) {
            // Sum of squares in f64: hidden states of Qwen2 reach magnitudes in the thousands.
            let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let inv = (1.0 / (ss / width as f64 + eps as f64).sqrt()) as f32;
            for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * inv * g;
            }
        }
        Ok(())
    }

    fn matmul(
        &mut self,
        w: &CpuWeight,
        bias: Option<&CpuWeight>,
        x: &CpuAct,
        n_rows: usize,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        let (n_in, n_out) = (w.n_cols(), w.n_rows());
        check_width("matmul input", x.width, n_in)?;
        check_width("matmul output", out.width, n_out)?;
        let xs = x.rows(n_rows)?;
        let os = out.rows_mut(n_rows)?;
        if self.exact_matmul {
            quant::matmul_reference(w.ty(), w.bytes(), n_out, n_in, xs, n_rows, os)?;
        } else if let Some(p) = w.packed()? {
            p.matmul(xs, n_rows, os, &self.pool)?;
        } else {
            quant::matmul(w.ty(), w.bytes(), n_out, n_in, xs, n_rows, os)?;
        }
        if let Some(b) = bias {
            let b = b.dense()?;
            check_width("matmul bias", b.len(), n_out)?;
            for row in os.chunks_exact_mut(n_out) {
                for (o, &bv) in row.iter_mut().zip(b) {
                    *o += bv;
                }
            }
        }
        Ok(())
    }

    fn rope(&mut self, x: &mut CpuAct, batch: &BatchPlan, p: &RopeParams) -> Result<(), BackendError> {
        if let Some(pool) = self.foreign_pool() {
            return pool.install(|| self.rope(x, batch, p));
        }
        let hd = p.head_dim;
        check_width("rope input", x.width, p.n_heads * hd)?;
        let half = hd / 2;
        let n = batch.n_tokens();
        let width = x.width;
        let rows = x.rows_mut(n)?;
        // theta_i = pos / scale * base^(-2i/hd); angles in f64 so long positions keep precision.
        let inv_freq: Vec<f64> = (0..half).map(|i| (p.freq_base as f64).powf(-2.0 * i as f64 / hd as f64)).collect();
        let rotate = |(row, &pos): (&mut [f32], &u32)| {
            let pos = pos as f64 / p.scale as f64;
            let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
            for i in 0..half {
                let (s, c) = (pos * inv_freq[i]).sin_cos();
                cos[i] = c as f32;
                sin[i] = s as f32;
            }
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = match p.style {
                        RopeStyle::Neox => (i, i + half),
                        RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        };
        if n * width < PAR_MIN_WORK {
            rows.chunks_exact_mut(width).zip(batch.positions.iter()).for_each(rotate);
        } else {
            rows.par_chunks_exact_mut(width).zip(batch.positions.par_iter()).for_each(rotate);
        }
        Ok(())
    }

    fn attention(
        &mut self,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        cache: &mut CpuKvCache,
        layer: usize,
        batch: &BatchPlan,
        p: &AttnParams,
        out: &mut CpuAct,
    ) -> Result<(), BackendError> {
        if let Some(pool) = self.foreign_pool() {
            return pool.install(|| self.attention(q, k, v, cache, layer, batch, p, out));
        }
        let lay = cache.layout;
        let (q_width, kv_width) = p.check_shapes(q.width, k.width, v.width, out.width, &lay, layer)?;
        let n = batch.n_tokens();
        let capacity = lay.capacity_tokens();
        let layer_base = layer * capacity * kv_width;
        let layer_len = capacity * kv_width;

        // Append the new keys and values at their slots.
        let (ks, vs) = (k.rows(n)?, v.rows(n)?);
        for t in 0..n {
            let slot = batch.slots[t] as usize;
            if slot >= capacity {
                return Err(BackendError::Invalid(format!("KV slot {slot} past capacity {capacity}")));
            }
            let dst = layer_base + slot * kv_width;
            cache.k.write(dst, &ks[t * kv_width..(t + 1) * kv_width]);
            cache.v.write(dst, &vs[t * kv_width..(t + 1) * kv_width]);
        }

        let qs = q.rows(n)?;
        let os = out.rows_mut(n)?;
        let layer_range = layer_base..layer_base + layer_len;
        match (cache.k.rows(layer_range.clone()), cache.v.rows(layer_range)) {
            (KvRows::F32(kc), KvRows::F32(vc)) => {
                let row_of = |seq: usize, j: usize| batch.slot_of(&batch.seqs[seq], j) * kv_width;
                attend(qs, os, 0, batch, p, q_width, kc, vc, row_of);
            }
            (kc, vc) => {
                // An f16 cache: each sequence's rows of this layer widened once into float32,
                // which every query head of a KV head then reads. Widening per head and key
                // instead did it `n_heads / n_kv_heads` times over: a token at 1,500 positions
                // of context took 36-40 ms on 2 cores against float32's 28-30 (Qwen2-0.5B).
                // Sequences go in groups whose rows fit `widen_max_bytes` (a long one alone).
                let ctx: Vec<usize> = (0..batch.seqs.len()).map(|s| seq_context(batch, s)).collect();
                let max_rows = (self.widen_max_bytes / (2 * kv_width * std::mem::size_of::<f32>())).max(1);
                let mut first = 0;
                while first < batch.seqs.len() {
                    let mut last = first + 1;
                    let mut rows = ctx[first];
                    while last < batch.seqs.len() && rows + ctx[last] <= max_rows {
                        rows += ctx[last];
                        last += 1;
                    }
                    // Row `base[s] + j` holds position j of sequence first + s.
                    let base: Vec<usize> = ctx[first..last].iter().scan(0, |acc, &c| Some(std::mem::replace(acc, *acc + c))).collect();
                    let slots: Vec<usize> =
                        (first..last).flat_map(|s| (0..ctx[s]).map(move |j| batch.slot_of(&batch.seqs[s], j) * kv_width)).collect();
                    let (wk, wv) = (&mut self.widened_k, &mut self.widened_v);
                    wk.resize(rows * kv_width, 0.0);
                    wv.resize(rows * kv_width, 0.0);
                    let widen = |((dk, dv), &at): ((&mut [f32], &mut [f32]), &usize)| {
                        kc.widen(at, dk);
                        vc.widen(at, dv);
                    };
                    let pairs = wk.chunks_exact_mut(kv_width).zip(wv.chunks_exact_mut(kv_width));
                    if rows * kv_width < PAR_MIN_WORK {
                        pairs.zip(&slots).for_each(widen);
                    } else {
                        wk.par_chunks_exact_mut(kv_width).zip(wv.par_chunks_exact_mut(kv_width)).zip(&slots).for_each(widen);
                    }
                    // The group's tokens: sequences' tokens are consecutive, in sequence order.
                    let t0 = batch.token_seq.partition_point(|&s| (s as usize) < first);
                    let t1 = batch.token_seq.partition_point(|&s| (s as usize) < last);
                    let row_of = |seq: usize, j: usize| (base[seq - first] + j) * kv_width;
                    attend(qs, &mut os[t0 * q_width..t1 * q_width], t0, batch, p, q_width, wk, wv, row_of);
                    first = last;
                }
            }
        }
        Ok(())
    }

    fn swiglu(&mut self, gate: &CpuAct, up: &CpuAct, n_rows: usize, out: &mut CpuAct) -> Result<(), BackendError> {
        check_width("swiglu up", up.width, gate.width)?;
        check_width("swiglu out", out.width, gate.width)?;
        let (g, u) = (gate.rows(n_rows)?, up.rows(n_rows)?);
        for ((o, &g), &u) in out.rows_mut(n_rows)?.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
        Ok(())
    }

    fn add_assign(&mut self, x: &mut CpuAct, y: &CpuAct, n_rows: usize) -> Result<(), BackendError> {
        check_width("add", y.width, x.width)?;
        let ys = y.rows(n_rows)?;
        for (a, &b) in x.rows_mut(n_rows)?.iter_mut().zip(ys) {
            *a += b;
        }
        Ok(())
    }

    fn gather_rows(&mut self, x: &CpuAct, batch: &BatchPlan, first: usize, count: usize, out: &mut CpuAct) -> Result<(), BackendError> {
        check_width("gather", out.width, x.width)?;
        let w = x.width;
        let picks = batch
            .logit_rows
            .get(first..first + count)
            .ok_or_else(|| BackendError::Invalid(format!("logit rows {first}..{} out of range", first + count)))?;
        let xs = x.rows(batch.n_tokens())?;
        let os = out.rows_mut(count)?;
        for (o, &r) in os.chunks_exact_mut(w).zip(picks) {
            let r = r as usize;
            o.copy_from_slice(&xs[r * w..(r + 1) * w]);
        }
        Ok(())
    }

    fn read_rows(&mut self, x: &CpuAct, n_rows: usize, out: &mut [f32]) -> Result<(), BackendError> {
        let xs = x.rows(n_rows)?;
        check_width("read_rows destination", out.len(), xs.len())?;
        out.copy_from_slice(xs);
        Ok(())
    }

    fn queue_draws(&mut self, logits: &CpuAct, specs: &[SampleSpec<'_>], first_row: usize) -> Result<(), BackendError> {
        let rows = logits.rows(specs.len())?;
        let pool = self.foreign_pool();
        self.draws.queue(first_row, |out| {
            match pool {
                Some(pool) => pool.install(|| sampling::sample_rows(rows, logits.width, specs, out)),
                None => sampling::sample_rows(rows, logits.width, specs, out),
            }
            Ok(())
        })
    }

    fn close_draws(&mut self, rows: usize) -> Result<(), BackendError> {
        self.draws.close(rows)
    }

    fn take_draws(&mut self, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError> {
        self.draws.take(out)
    }
}

