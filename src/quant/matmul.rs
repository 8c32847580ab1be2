//! `matmul`: quantized weight matrix times f32 activations, the CPU backend's projection.
//!
//! The fast path follows ggml's scheme: the activations are quantized once per call to 8-bit
//! blocks (32 elements for the 32-element weight formats, 256 for the K formats), each weight
//! row is unpacked once to i8 plus its block scales, and every token's dot product is an
//! integer dot per block, scaled in f32 afterwards. The unpacked row (a few KiB) stays in L1
//! while all tokens pass over it, so weights are read from memory once per call.
//!
//! The kernels are plain loops written for auto-vectorization; on x86_64 the same code is
//! also compiled with AVX2 enabled and picked at run time. The plain build is the fallback and
//! the oracle the tests compare the AVX2 build against.

use rayon::prelude::*;

use super::k_quants::{k4_scale_min, q3_k_scales};
use super::{block_decoder, check_len, dequantize, f16_at, row_bytes, GgmlType, QuantError};

/// How a weight type is multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// 32-element blocks with one scale and signed values: Q4_0, Q5_0, Q8_0, IQ4_NL.
    Legacy,
    /// 256-element blocks, 8 sub-blocks of 32 with a 6-bit scale and a min: Q4_K, Q5_K.
    KMin,
    /// 256-element blocks, 16 sub-blocks of 16 with a signed scale: Q6_K, Q3_K.
    KSigned,
    /// f32 weights (F32 as is; F16, BF16 and every other type dequantized per row).
    Float,
}

fn scheme(ty: GgmlType) -> Scheme {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => Scheme::Legacy,
        Q4_K | Q5_K => Scheme::KMin,
        Q6_K | Q3_K => Scheme::KSigned,
        _ => Scheme::Float,
    }
}

/// Activations quantized to i8 in blocks of `block` elements: `x ≈ d[b] · q[i]`.
pub(crate) struct QuantizedActs {
    pub(crate) q: Vec<i8>,
    pub(crate) d: Vec<f32>,
    /// Σ q over each 32-element group (the K formats' min term needs it).
    pub(crate) sum32: Vec<i32>,
}

impl QuantizedActs {
    fn new(x: &[f32], block: usize) -> Self {
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; x.len() / block];
        for ((xb, qb), db) in x.chunks_exact(block).zip(q.chunks_exact_mut(block)).zip(d.iter_mut()) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            // f32::max drops NaN; a NaN activation must still poison its outputs, as it would in
            // an f32 dot product, rather than quantize to a silent 0.
            let has_nan = xb.iter().any(|v| v.is_nan());
            let scale = if has_nan { f32::NAN } else { amax / 127.0 };
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (o, v) in qb.iter_mut().zip(xb) {
                // The clamp keeps -128 out, which the AVX2 sign trick relies on.
                *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            *db = scale;
        }
        let sum32 = q.chunks_exact(32).map(|c| c.iter().map(|&v| v as i32).sum()).collect();
        QuantizedActs { q, d, sum32 }
    }
}

/// One weight row unpacked for the integer kernels. Which fields are used depends on the scheme.
#[derive(Default)]
pub(crate) struct UnpackedRow {
    /// The integer weight values, one per column.
    pub(crate) q: Vec<i8>,
    /// Legacy: per-32 scale. K: per-256 `d`.
    pub(crate) d: Vec<f32>,
    /// K with mins: per-256 `dmin`.
    pub(crate) dmin: Vec<f32>,
    /// K: sub-block scales (8 or 16 per 256).
    pub(crate) sc: Vec<i32>,
    /// K with mins: sub-block mins (8 per 256).
    pub(crate) m: Vec<i32>,
    /// Float scheme: the dequantized row.
    pub(crate) f: Vec<f32>,
}

#[inline(always)]
pub(crate) fn unpack_row(ty: GgmlType, row: &[u8], n_cols: usize, u: &mut UnpackedRow) {
    use GgmlType::*;
    u.q.resize(n_cols, 0);
    u.d.clear();
    u.dmin.clear();
    u.sc.clear();
    u.m.clear();
    let bb = ty.block_bytes();
    let be = ty.block_elems();
    for (b, q) in row.chunks_exact(bb).zip(u.q.chunks_exact_mut(be)) {
        match ty {
            Q8_0 => {
                u.d.push(f16_at(b, 0));
                for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                    *o = v as i8;
                }
            }
            Q4_0 => {
                u.d.push(f16_at(b, 0));
                for j in 0..16 {
                    q[j] = (b[2 + j] & 0x0F) as i8 - 8;
                    q[j + 16] = (b[2 + j] >> 4) as i8 - 8;
                }
            }
            IQ4_NL => {
                u.d.push(f16_at(b, 0));
                for j in 0..16 {
                    q[j] = super::iq_quants::IQ4_LEVELS[(b[2 + j] & 0x0F) as usize];
                    q[j + 16] = super::iq_quants::IQ4_LEVELS[(b[2 + j] >> 4) as usize];
                }
            }
            Q5_0 => {
                u.d.push(f16_at(b, 0));
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let lo = (b[6 + j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                    let hi = (b[6 + j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                    q[j] = lo as i8 - 16;
                    q[j + 16] = hi as i8 - 16;
                }
            }
            Q4_K | Q5_K => {
                u.d.push(f16_at(b, 0));
                u.dmin.push(f16_at(b, 2));
                let (sc, m) = k4_scale_min(&b[4..16]);
                u.sc.extend(sc.iter().map(|&v| v as i32));
                u.m.extend(m.iter().map(|&v| v as i32));
                let (qh, qs) = if ty == Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
                for sub in 0..8 {
                    let bytes = &qs[(sub / 2) * 32..(sub / 2) * 32 + 32];
                    let shift = 4 * (sub % 2);
                    let out = &mut q[sub * 32..sub * 32 + 32];
                    for mm in 0..32 {
                        out[mm] = ((bytes[mm] >> shift) & 0x0F) as i8;
                    }
                    if let Some(qh) = qh {
                        for mm in 0..32 {
                            out[mm] |= (((qh[mm] >> sub) & 1) << 4) as i8;
                        }
                    }
                }
            }
            Q6_K => {
                u.d.push(f16_at(b, 208));
                u.sc.extend(b[192..208].iter().map(|&v| v as i8 as i32));
                let (ql, qh) = (&b[0..128], &b[128..192]);
                for half in 0..2 {
                    for k in 0..128 {
                        let lo = (ql[half * 64 + k % 64] >> (4 * (k / 64))) & 0x0F;
                        let hi = (qh[half * 32 + k % 32] >> (2 * (k / 32))) & 0x03;
                        q[half * 128 + k] = (lo | (hi << 4)) as i8 - 32;
                    }
                }
            }
            Q3_K => {
                u.d.push(f16_at(b, 108));
                u.sc.extend(q3_k_scales(&b[96..108]).iter().map(|&v| v as i32));
                let (hmask, qs) = (&b[0..32], &b[32..96]);
                for half in 0..2 {
                    for s in 0..4 {
                        for mm in 0..32 {
                            let e = half * 128 + s * 32 + mm;
                            let lo = ((qs[half * 32 + mm] >> (2 * s)) & 3) as i8;
                            let hbit = ((hmask[mm] >> (e / 32)) & 1) as i8;
                            q[e] = lo - ((hbit ^ 1) << 2);
                        }
                    }
                }
            }
            _ => unreachable!("unpack_row called for a type without an integer scheme"),
        }
    }
}

/// Σ a·b over i8 slices of equal length, in i32. Each product fits i16, which lets LLVM use
/// pmaddwd-style multiply-add.
#[inline(always)]
fn idot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| (x as i16 * y as i16) as i32).sum()
}

/// Σ a·b in f32 with 16 independent partial sums, so the loop vectorizes without reassociating
/// a single accumulator (a single running sum is one dependent chain of adds, one element per
/// add latency: CPU attention's q·k products ran that way, several times slower on long
/// prompts). The order is fixed, so results do not depend on the batch or the threads.
#[inline(always)]
pub(crate) fn fdot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, ar) = (a.chunks_exact(16), a.chunks_exact(16).remainder());
    let br = b.chunks_exact(16).remainder();
    for (x, y) in ac.zip(b.chunks_exact(16)) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// The dot product of one unpacked weight row with token `t`'s quantized activations.
#[inline(always)]
fn row_dot(s: Scheme, u: &UnpackedRow, acts: &QuantizedActs, n_cols: usize, t: usize) -> f32 {
    let aq = &acts.q[t * n_cols..(t + 1) * n_cols];
    match s {
        Scheme::Legacy => {
            let ad = &acts.d[t * n_cols / 32..(t + 1) * n_cols / 32];
            let mut acc = 0f32;
            for (b, (wd, a_d)) in u.d.iter().zip(ad).enumerate() {
                let sumi = idot(&u.q[b * 32..b * 32 + 32], &aq[b * 32..b * 32 + 32]);
                acc += (wd * a_d) * sumi as f32;
            }
            acc
        }
        Scheme::KMin => {
            let nb = n_cols / 256;
            let ad = &acts.d[t * nb..(t + 1) * nb];
            let asum = &acts.sum32[t * n_cols / 32..(t + 1) * n_cols / 32];
            let mut acc = 0f32;
            for b in 0..nb {
                let mut isum = 0i32;
                let mut msum = 0i32;
                for j in 0..8 {
                    let at = b * 256 + j * 32;
                    isum += u.sc[b * 8 + j] * idot(&u.q[at..at + 32], &aq[at..at + 32]);
                    msum += u.m[b * 8 + j] * asum[b * 8 + j];
                }
                acc += (u.d[b] * ad[b]) * isum as f32 - (u.dmin[b] * ad[b]) * msum as f32;
            }
            acc
        }
        Scheme::KSigned => {
            let nb = n_cols / 256;
            let ad = &acts.d[t * nb..(t + 1) * nb];
            let mut acc = 0f32;
            for b in 0..nb {
                let mut isum = 0i32;
                for j in 0..16 {
                    let at = b * 256 + j * 16;
                    isum += u.sc[b * 16 + j] * idot(&u.q[at..at + 16], &aq[at..at + 16]);
                }
                acc += (u.d[b] * ad[b]) * isum as f32;
            }
            acc
        }
        Scheme::Float => unreachable!("float rows use fdot"),
    }
}

pub(crate) fn check_shapes(x_elems: usize, out_elems: usize, n_rows: usize, n_cols: usize, n_tokens: usize) -> Result<(), QuantError> {
    let want = |a: usize, b: usize| a.saturating_mul(b);
    if x_elems != want(n_tokens, n_cols) {
        return Err(QuantError::BadShape { what: "activations (n_tokens x n_cols)", expected_elems: want(n_tokens, n_cols), got_elems: x_elems });
    }
    if out_elems != want(n_tokens, n_rows) {
        return Err(QuantError::BadShape { what: "output (n_tokens x n_rows)", expected_elems: want(n_tokens, n_rows), got_elems: out_elems });
    }
    Ok(())
}

/// Everything one parallel task needs besides its output slice.
struct Job<'a> {
    ty: GgmlType,
    scheme: Scheme,
    w: &'a [u8],
    row_len_bytes: usize,
    n_cols: usize,
    x: &'a [f32],
    acts: Option<&'a QuantizedActs>,
    n_tokens: usize,
}

/// Computes rows `first_row..` of `out_rows` (row-major `[rows][n_tokens]`).
#[inline(always)]
unsafe fn rows_kernel(isa: Isa, job: &Job<'_>, first_row: usize, out_rows: &mut [f32], u: &mut UnpackedRow) {
    let n_cols = job.n_cols;
    for (i, out_r) in out_rows.chunks_exact_mut(job.n_tokens).enumerate() {
        let r = first_row + i;
        let row = &job.w[r * job.row_len_bytes..(r + 1) * job.row_len_bytes];
        match (job.scheme, job.acts) {
            (Scheme::Float, _) => {
                let weights: &[f32] = if job.ty == GgmlType::F32 {
                    // Whole-row copy keeps this safe for any alignment of the mapped file.
                    u.f.resize(n_cols, 0.0);
                    super::float::f32_block(row, &mut u.f);
                    &u.f
                } else {
                    u.f.resize(n_cols, 0.0);
                    let decode = block_decoder(job.ty).expect("checked before the parallel loop");
                    let (bb, be) = (job.ty.block_bytes(), job.ty.block_elems());
                    if job.ty == GgmlType::F16 && isa != Isa::Portable {
                        #[cfg(target_arch = "x86_64")]
                        super::matmul_avx2::f16_row(row, &mut u.f);
                    } else if be == 1 {
                        decode(row, &mut u.f);
                    } else {
                        for (b, o) in row.chunks_exact(bb).zip(u.f.chunks_exact_mut(be)) {
                            decode(b, o);
                        }
                    }
                    &u.f
                };
                for (t, o) in out_r.iter_mut().enumerate() {
                    let xt = &job.x[t * n_cols..(t + 1) * n_cols];
                    *o = match isa {
                        Isa::Portable => fdot(weights, xt),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2 => super::matmul_avx2::fdot(weights, xt),
                    };
                }
            }
            (s, Some(acts)) => match isa {
                Isa::Portable => {
                    unpack_row(job.ty, row, n_cols, u);
                    for (t, o) in out_r.iter_mut().enumerate() {
                        *o = row_dot(s, u, acts, n_cols, t);
                    }
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => {
                    if !super::matmul_avx2::unpack_row(job.ty, row, n_cols, u) {
                        unpack_row(job.ty, row, n_cols, u);
                    }
                    for (t, o) in out_r.iter_mut().enumerate() {
                        *o = super::matmul_avx2::row_dot(s, u, acts, n_cols, t);
                    }
                }
            },
            (_, None) => unreachable!("integer schemes always quantize activations"),
        }
    }
}

/// The same loop compiled with AVX2 enabled, so the portable helpers it inlines vectorize with
/// it too.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_kernel_avx2(job: &Job<'_>, first_row: usize, out_rows: &mut [f32], u: &mut UnpackedRow) {
    rows_kernel(Isa::Avx2, job, first_row, out_rows, u)
}

/// Which build of the kernels to run; `Portable` is the oracle for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

fn best_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
        return Isa::Avx2;
    }
    Isa::Portable
}

/// Rows per rayon task: about 64 KiB of weights (at least 4 rows) to amortize scheduling, but
/// no fewer than 4 tasks per thread so uneven cores still balance.
fn rows_per_task(row_len_bytes: usize, n_rows: usize) -> usize {
    let by_bytes = (64 * 1024 / row_len_bytes.max(1)).max(4);
    by_bytes.min(n_rows.div_ceil(rayon::current_num_threads() * 4).max(1))
}

/// `out[t * n_rows + r] = Σ_c w[r, c] · x[t * n_cols + c]`: a quantized weight of `n_rows` rows
/// by `n_cols` columns (GGUF dims `[n_cols, n_rows]`) times `n_tokens` activation rows.
///
/// Q4_0, Q5_0, Q8_0, IQ4_NL, Q3_K, Q4_K, Q5_K and Q6_K weights use fused integer dot products
/// against 8-bit-quantized activations (relative error ~1e-3 against exact f32, see the tests);
/// F32 is exact f32; every other dequantizable type is dequantized row by row and dotted in f32.
/// Types `dequantize` rejects are `QuantError::Unsupported` here too.
pub fn matmul(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    matmul_with(best_isa(), ty, w, n_rows, n_cols, x, n_tokens, out)
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_with(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    if block_decoder(ty).is_none() {
        return Err(QuantError::Unsupported(ty));
    }
    let row_len_bytes = row_bytes(ty, n_cols)?;
    check_len(ty, w.len(), n_rows.saturating_mul(n_cols))?;
    check_shapes(x.len(), out.len(), n_rows, n_cols, n_tokens)?;
    if n_tokens == 0 || n_rows == 0 {
        return Ok(());
    }
    let scheme = scheme(ty);
    let acts = match scheme {
        Scheme::Legacy => Some(QuantizedActs::new(x, 32)),
        Scheme::KMin | Scheme::KSigned => Some(QuantizedActs::new(x, 256)),
        Scheme::Float => None,
    };
    let job = Job { ty, scheme, w, row_len_bytes, n_cols, x, acts: acts.as_ref(), n_tokens };
    let per_task = rows_per_task(row_len_bytes, n_rows);
    let run = |(i, chunk): (usize, &mut [f32]), u: &mut UnpackedRow| match isa {
        // SAFETY: the portable kernel needs no CPU features.
        Isa::Portable => unsafe { rows_kernel(Isa::Portable, &job, i * per_task, chunk, u) },
        // SAFETY: Avx2 is only chosen after detecting avx2, fma and f16c on this CPU (best_isa,
        // or a test that checks the same).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { rows_kernel_avx2(&job, i * per_task, chunk, u) },
    };
    if n_tokens == 1 {
        // out is already [rows] for one token: write in place.
        out.par_chunks_mut(per_task).enumerate().for_each_init(UnpackedRow::default, |u, c| run(c, u));
    } else {
        let mut by_row = vec![0f32; n_rows * n_tokens];
        by_row
            .par_chunks_mut(per_task * n_tokens)
            .enumerate()
            .for_each_init(UnpackedRow::default, |u, c| run(c, u));
        for r in 0..n_rows {
            for t in 0..n_tokens {
                out[t * n_rows + r] = by_row[r * n_tokens + t];
            }
        }
    }
    Ok(())
}

/// The oracle for `matmul`: dequantize each weight row to f32, dot it with every token in f32.
/// Same contract as `matmul`.
pub fn matmul_reference(
    ty: GgmlType,
    w: &[u8],
    n_rows: usize,
    n_cols: usize,
    x: &[f32],
    n_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let row_len_bytes = row_bytes(ty, n_cols)?;
    check_len(ty, w.len(), n_rows.saturating_mul(n_cols))?;
    check_shapes(x.len(), out.len(), n_rows, n_cols, n_tokens)?;
    let mut by_row = vec![0f32; n_rows * n_tokens];
    by_row.par_chunks_mut(n_tokens.max(1)).enumerate().try_for_each_init(
        || vec![0f32; n_cols],
        |row, (r, out_r)| {
            dequantize(ty, &w[r * row_len_bytes..(r + 1) * row_len_bytes], row)?;
            for (t, o) in out_r.iter_mut().enumerate() {
                *o = row.iter().zip(&x[t * n_cols..(t + 1) * n_cols]).map(|(a, b)| a * b).sum();
            }
            Ok::<(), QuantError>(())
        },
    )?;
    for r in 0..n_rows {
        for t in 0..n_tokens {
            out[t * n_rows + r] = by_row[r * n_tokens + t];
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::tests::random_bytes;
    use half::f16;

    #[test]
    fn fdot_matches_a_float64_dot_at_every_length() {
        let mut state = 0x2545_f491_u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for n in [0usize, 1, 7, 15, 16, 17, 31, 33, 64, 80, 96, 128, 256] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let scale: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum::<f64>().max(1e-30);
            let got = fdot(&a, &b) as f64;
            assert!((got - exact).abs() <= 4.0 * f32::EPSILON as f64 * scale, "n={n}: {got} vs {exact}");
        }
    }

    /// Byte offsets of the f16 scale fields of one block, as in tests/test_dequant.py.
    fn f16_fields(ty: GgmlType) -> &'static [usize] {
        use GgmlType::*;
        match ty {
            Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
            Q2_K => &[80, 82],
            Q3_K => &[108],
            Q6_K => &[208],
            TQ1_0 => &[52],
            TQ2_0 => &[64],
            _ => &[0],
        }
    }

    /// Random valid weights: random bytes, with finite scales of magnitude ~2^-8..2^-4 (so the
    /// products stay in a realistic range) and, for float types, finite random values.
    pub(crate) fn random_weights(ty: GgmlType, n_elems: usize, seed: u64) -> Vec<u8> {
        let n_blocks = n_elems / ty.block_elems();
        let mut bytes = random_bytes(n_blocks * ty.block_bytes(), seed);
        let noise = random_bytes(n_blocks * 8, seed + 1);
        let scale = |i: usize| {
            let v = 2f32.powf(-8.0 + 4.0 * noise[i] as f32 / 255.0) * if noise[i + 1] & 1 == 1 { -1.0 } else { 1.0 };
            f16::from_f32(v).to_bits().to_le_bytes()
        };
        match ty {
            GgmlType::F32 => {
                for (i, c) in bytes.chunks_exact_mut(4).enumerate() {
                    c.copy_from_slice(&((noise[i % noise.len()] as f32 - 127.5) / 64.0).to_le_bytes());
                }
            }
            GgmlType::F16 | GgmlType::BF16 => {
                for (i, c) in bytes.chunks_exact_mut(2).enumerate() {
                    let v = (noise[i % noise.len()] as f32 - 127.5) / 64.0 + (i % 7) as f32 * 0.01;
                    let bits = if ty == GgmlType::F16 { f16::from_f32(v).to_bits() } else { (v.to_bits() >> 16) as u16 };
                    c.copy_from_slice(&bits.to_le_bytes());
                }
            }
            _ => {
                for (i, b) in bytes.chunks_exact_mut(ty.block_bytes()).enumerate() {
                    for (k, &at) in f16_fields(ty).iter().enumerate() {
                        b[at..at + 2].copy_from_slice(&scale(i * 8 + 2 * k));
                    }
                }
            }
        }
        bytes
    }

    fn random_acts(n: usize, seed: u64) -> Vec<f32> {
        random_acts_with(n, seed, true)
    }

    /// Roughly Gaussian values (sum of two uniforms); with `outliers`, every 97th is 20x larger,
    /// like the few huge channels of real transformer activations (the hard case for 8-bit
    /// block quantization, since one outlier sets its whole block's step).
    pub(crate) fn random_acts_with(n: usize, seed: u64, outliers: bool) -> Vec<f32> {
        let r = random_bytes(2 * n, seed);
        (0..n)
            .map(|i| {
                let v = (r[2 * i] as f32 + r[2 * i + 1] as f32 - 255.0) / 128.0;
                if outliers && i % 97 == 0 { v * 20.0 } else { v }
            })
            .collect()
    }

    const FUSED: [GgmlType; 8] = [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The fused result may differ from the exact f32 product only by the activation rounding:
    /// each activation moves by at most half its block's step d_b = amax_b / 127, so
    /// |fused - exact| <= Σ_i |w_i| · d_b(i) / 2, plus f32 rounding of the sums (bounded here
    /// by 1e-5 of Σ |w_i x_i| + Σ |w_i| d_b / 2, generous for rows of a few thousand).
    fn assert_within_quantization_bound(ty: GgmlType, n_rows: usize, n_cols: usize, n_tokens: usize) {
        for outliers in [false, true] {
            assert_within_bound_for(ty, n_rows, n_cols, n_tokens, outliers);
        }
    }

    fn assert_within_bound_for(ty: GgmlType, n_rows: usize, n_cols: usize, n_tokens: usize, outliers: bool) {
        let w = random_weights(ty, n_rows * n_cols, 11 + ty.id() as u64);
        let x = random_acts_with(n_tokens * n_cols, 5 + n_tokens as u64, outliers);
        let mut fused = vec![0f32; n_rows * n_tokens];
        let mut exact = vec![0f32; n_rows * n_tokens];
        matmul(ty, &w, n_rows, n_cols, &x, n_tokens, &mut fused).unwrap();
        matmul_reference(ty, &w, n_rows, n_cols, &x, n_tokens, &mut exact).unwrap();
        let mut wf = vec![0f32; n_rows * n_cols];
        dequantize(ty, &w, &mut wf).unwrap();
        let block = match scheme(ty) {
            Scheme::Legacy => 32,
            Scheme::KMin | Scheme::KSigned => 256,
            Scheme::Float => 0,
        };
        let (mut err2, mut ref2) = (0f64, 0f64);
        for t in 0..n_tokens {
            let xt = &x[t * n_cols..(t + 1) * n_cols];
            for r in 0..n_rows {
                let wr = &wf[r * n_cols..(r + 1) * n_cols];
                let mut bound = 0f64;
                let mut mag = 0f64;
                for c in 0..n_cols {
                    mag += (wr[c] as f64 * xt[c] as f64).abs();
                    if block > 0 {
                        let b0 = c / block * block;
                        let amax = xt[b0..b0 + block].iter().fold(0f32, |m, v| m.max(v.abs()));
                        bound += wr[c].abs() as f64 * amax as f64 / 127.0 / 2.0;
                    }
                }
                let bound = bound * (1.0 + 1e-5) + 1e-5 * mag + 1e-30;
                let (f, e) = (fused[t * n_rows + r] as f64, exact[t * n_rows + r] as f64);
                assert!((f - e).abs() <= bound, "{ty} row {r} token {t}: fused {f} exact {e} bound {bound}");
                err2 += (f - e) * (f - e);
                ref2 += e * e;
            }
        }
        assert!(ref2 > 0.0, "{ty}: degenerate all-zero product");
        let rel = (err2 / ref2).sqrt();
        let kind = if outliers { "with outliers" } else { "gaussian" };
        eprintln!("{ty}: {n_rows}x{n_cols}, {n_tokens} tokens, {kind}: relative RMS error vs f32 {rel:.2e}");
    }

    #[test]
    fn fused_kernels_are_within_the_activation_rounding_bound() {
        for ty in FUSED {
            for n_tokens in [1, 3, 16] {
                assert_within_quantization_bound(ty, 7, 768, n_tokens);
            }
        }
    }

    #[test]
    fn float_and_fallback_types_match_the_reference_closely() {
        // F32/F16/BF16 and the dequantize-then-dot fallback compute the same f32 products in a
        // different summation order: the difference is f32 rounding only.
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q2_K, GgmlType::IQ2_XS, GgmlType::Q4_1] {
            for n_tokens in [1, 5] {
                assert_within_quantization_bound(ty, 9, 512, n_tokens);
            }
        }
    }

    /// The AVX2 kernels compute the same exact integer block sums as the portable ones; only
    /// the f32 accumulation order differs, so the two agree to f32 rounding of the row sum:
    /// within 1e-5 · Σ_c |w_c · x_c| (about 100 ulps of the largest partial sum).
    #[test]
    fn avx2_build_matches_the_portable_build_to_rounding() {
        #[cfg(target_arch = "x86_64")]
        if best_isa() == Isa::Avx2 {
            for ty in FUSED.into_iter().chain([GgmlType::F32, GgmlType::F16, GgmlType::Q2_K]) {
                let (n_rows, n_cols, n_tokens) = (13, 512, 4);
                let w = random_weights(ty, n_rows * n_cols, 3);
                let x = random_acts(n_tokens * n_cols, 4);
                let mut a = vec![0f32; n_rows * n_tokens];
                let mut b = vec![0f32; n_rows * n_tokens];
                matmul_with(Isa::Portable, ty, &w, n_rows, n_cols, &x, n_tokens, &mut a).unwrap();
                matmul_with(Isa::Avx2, ty, &w, n_rows, n_cols, &x, n_tokens, &mut b).unwrap();
                let mut wf = vec![0f32; n_rows * n_cols];
                dequantize(ty, &w, &mut wf).unwrap();
                for t in 0..n_tokens {
                    for r in 0..n_rows {
                        let mag: f32 = (0..n_cols).map(|c| (wf[r * n_cols + c] * x[t * n_cols + c]).abs()).sum();
                        let (p, v) = (a[t * n_rows + r], b[t * n_rows + r]);
                        assert!((p - v).abs() <= 1e-5 * mag, "{ty} row {r} token {t}: portable {p} avx2 {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn batched_tokens_equal_one_token_at_a_time() {
        for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::F32] {
            let (n_rows, n_cols, n_tokens) = (37, 512, 6);
            let w = random_weights(ty, n_rows * n_cols, 9);
            let x = random_acts(n_tokens * n_cols, 10);
            let mut all = vec![0f32; n_rows * n_tokens];
            matmul(ty, &w, n_rows, n_cols, &x, n_tokens, &mut all).unwrap();
            for t in 0..n_tokens {
                let mut one = vec![0f32; n_rows];
                matmul(ty, &w, n_rows, n_cols, &x[t * n_cols..(t + 1) * n_cols], 1, &mut one).unwrap();
                assert_eq!(&all[t * n_rows..(t + 1) * n_rows], &one[..], "{ty} token {t}");
            }
        }
    }

    #[test]
    fn nan_activations_propagate_and_bad_inputs_are_errors() {
        let (n_rows, n_cols) = (3, 256);
        let w = random_weights(GgmlType::Q4_K, n_rows * n_cols, 1);
        let mut x = random_acts(n_cols, 2);
        x[17] = f32::NAN;
        let mut out = vec![0f32; n_rows];
        matmul(GgmlType::Q4_K, &w, n_rows, n_cols, &x, 1, &mut out).unwrap();
        assert!(out.iter().all(|v| v.is_nan()), "{out:?}");

        let err = matmul(GgmlType::Q8_K, &[0u8; 292], 1, 256, &x, 1, &mut out[..1]).unwrap_err();
        assert!(matches!(err, QuantError::Unsupported(GgmlType::Q8_K)));
        let err = matmul(GgmlType::Q4_K, &w, n_rows, 255, &x[..255], 1, &mut out).unwrap_err();
        assert!(matches!(err, QuantError::PartialBlock { .. }));
        let err = matmul(GgmlType::Q4_K, &w[..w.len() - 1], n_rows, n_cols, &x, 1, &mut out).unwrap_err();
        assert!(matches!(err, QuantError::SizeMismatch { .. }));
        let err = matmul(GgmlType::Q4_K, &w, n_rows, n_cols, &x, 2, &mut out).unwrap_err();
        assert!(matches!(err, QuantError::BadShape { .. }), "{err}");
        let err = matmul(GgmlType::Q4_K, &w, n_rows, n_cols, &x, 1, &mut out[..2]).unwrap_err();
        assert!(matches!(err, QuantError::BadShape { .. }), "{err}");
    }
}
