//! `PackedMatrix`: a quantized weight matrix repacked once (at load) into row-interleaved tiles
//! that the integer matmul kernels read without reshuffling, and the matmul over it.
//!
//! Layout. Rows go in groups of 16 (`TILE_ROWS`, the last group padded with zero rows). Each
//! group holds, for every 32-column block, the integer weights as eight 64-byte vectors `W[k]`
//! whose byte `4r + j` is row `r`'s value at column `4k + j`: one AVX-512 `vpdpbusd` of `W[k]`
//! with the token's activation bytes `4k..4k+4` broadcast to every lane adds four products to
//! each row's own lane, so a block of 16 rows costs 8 instructions and no horizontal sums (the
//! scheme of llama.cpp's CPU repack). The values are stored as unsigned bytes in bit planes that
//! cost the same memory as the GGUF blocks: a 4-bit plane (two vectors per 64 bytes, low and
//! high nibbles), optional 1-bit planes for bits 4 and 5 (64-bit masks), or whole bytes (Q8_0).
//! The per-row scales live in a second array, one header per 32 or 256 columns.
//!
//! Arithmetic. Activations are quantized to i8 in blocks of 32 (`x ≈ da · a`), finer than the
//! 256 of the K formats' ggml path, so the K formats lose less to activation rounding. Each
//! stored weight is `w = s · (W - offset) - mn` with W unsigned; per row, token and block the
//! kernels compute the exact integer `Σ W·a - offset·Σa`, convert it to f32, multiply by `da`
//! and accumulate `s ·` that (and `- mn · da·Σa` for the formats with mins) with one fused
//! multiply-add per block. Every instruction-set build does exactly these f32 operations in this
//! order per row, so they all give bit-identical results (`kernel_scalar` is the oracle). Builds:
//! AVX-512 VNNI (packed_avx512.rs), AVX-VNNI and AVX2 (packed_avx2.rs), NEON with dotprod on aarch64
//! (packed_neon.rs), and the scalar one; `Isa::available` picks what the CPU runs.

use super::matmul::{unpack_row, UnpackedRow};
use super::pool::ThreadPool;
use super::{check_len, row_bytes, GgmlType, QuantError};

/// Rows per interleaved group: one AVX-512 vector of 32-bit lanes.
pub(crate) const TILE_ROWS: usize = 16;
/// Columns per integer block (one activation scale).
pub(crate) const BLOCK: usize = 32;
/// Tokens one kernel call carries through a group (accumulators held in registers).
pub(crate) const MAX_TILE_TOKENS: usize = 8;

/// How a format's per-row scales are stored and applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scales {
    /// One f16 scale `d` per row and 32-column block; `w = d · (W - offset)`.
    Legacy,
    /// Per row and 256 columns: f16 `d`, `dmin`; per 32: unsigned 6-bit `sc`, `m`;
    /// `w = d·sc · W - dmin·m`.
    KMin,
    /// Per row and 256 columns: f16 `d`; per 16 columns a signed 8-bit `sc`;
    /// `w = d·sc · (W - offset)`.
    KSigned16,
}

/// A packed format, fixed at compile time: the kernels are generic over it, so each format's
/// decode and scale code is compiled without run-time branches.
pub(crate) trait Format {
    const SCALES: Scales;
    /// Columns per scale header: 32 (legacy formats) or 256 (K formats).
    const SUPER_COLS: usize;
    /// Whole-byte values (Q8_0) instead of nibble + bit planes.
    const BYTES: bool;
    /// A plane holding bit 4 of each value.
    const HI1: bool;
    /// A plane holding bit 5 of each value.
    const HI2: bool;
    /// Subtracted from every stored value (legacy and KSigned16 formats).
    const OFFSET: i32;
    /// Non-linear formats: stored nibbles index this table of `value + OFFSET` bytes.
    const LUT: Option<[u8; 16]> = None;

    const HEADER_BYTES: usize = match Self::SCALES {
        Scales::Legacy => 2 * TILE_ROWS,
        Scales::KMin => 4 * TILE_ROWS + 2 * 8 * TILE_ROWS,
        Scales::KSigned16 => 2 * TILE_ROWS + 16 * TILE_ROWS,
    };
    const PLANE_BYTES: usize = if Self::BYTES { 512 } else { 256 + 64 * (Self::HI1 as usize + Self::HI2 as usize) };
}

// Header offsets (bytes) within one scale header.
pub(crate) const HDR_DMIN: usize = 2 * TILE_ROWS;
pub(crate) const HDR_KMIN_SC: usize = 4 * TILE_ROWS;
pub(crate) const HDR_KMIN_M: usize = 4 * TILE_ROWS + 8 * TILE_ROWS;
pub(crate) const HDR_KSIGNED_SC: usize = 2 * TILE_ROWS;

macro_rules! format {
    ($name:ident, $scales:ident, $super:expr, bytes $bytes:expr, hi1 $hi1:expr, hi2 $hi2:expr, offset $off:expr $(, lut $lut:expr)?) => {
        #[allow(non_camel_case_types)]
        pub(crate) struct $name;
        impl Format for $name {
            const SCALES: Scales = Scales::$scales;
            const SUPER_COLS: usize = $super;
            const BYTES: bool = $bytes;
            const HI1: bool = $hi1;
            const HI2: bool = $hi2;
            const OFFSET: i32 = $off;
            $(const LUT: Option<[u8; 16]> = Some($lut);)?
        }
    };
}

format!(FQ4_0, Legacy, 32, bytes false, hi1 false, hi2 false, offset 8);
format!(FQ5_0, Legacy, 32, bytes false, hi1 true, hi2 false, offset 16);
format!(FQ8_0, Legacy, 32, bytes true, hi1 false, hi2 false, offset 128);
format!(FIQ4NL, Legacy, 32, bytes false, hi1 false, hi2 false, offset 128, lut iq4_lut());
format!(FQ4_K, KMin, 256, bytes false, hi1 false, hi2 false, offset 0);
format!(FQ5_K, KMin, 256, bytes false, hi1 true, hi2 false, offset 0);
format!(FQ6_K, KSigned16, 256, bytes false, hi1 true, hi2 true, offset 32);

const fn iq4_lut() -> [u8; 16] {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (super::iq_quants::IQ4_LEVELS[i] as i32 + 128) as u8;
        i += 1;
    }
    t
}

/// The one table of packed formats: `$m!(FormatStruct)` for each, so every dispatch over types
/// is generated from this list.
macro_rules! for_each_format {
    ($m:ident, $ty:expr, $($args:tt)*) => {
        match $ty {
            GgmlType::Q4_0 => $m!(FQ4_0, $($args)*),
            GgmlType::Q5_0 => $m!(FQ5_0, $($args)*),
            GgmlType::Q8_0 => $m!(FQ8_0, $($args)*),
            GgmlType::IQ4_NL => $m!(FIQ4NL, $($args)*),
            GgmlType::Q4_K => $m!(FQ4_K, $($args)*),
            GgmlType::Q5_K => $m!(FQ5_K, $($args)*),
            GgmlType::Q6_K => $m!(FQ6_K, $($args)*),
            _ => None,
        }
    };
}

/// Whether `ty` has packed kernels (the other types keep `quant::matmul`'s row kernels).
pub fn can_pack(ty: GgmlType) -> bool {
    macro_rules! yes {
        ($f:ident,) => {
            Some(())
        };
    }
    for_each_format!(yes, ty,).is_some()
}

/// 64-byte aligned storage, so every 64-byte plane vector is one aligned load.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    fn zeroed(len: usize) -> Result<AlignedBytes, QuantError> {
        let n = len.div_ceil(64);
        let mut lines = Vec::new();
        lines.try_reserve_exact(n).map_err(|_| QuantError::BadShape { what: "packed weights (allocation failed)", expected_elems: len, got_elems: 0 })?;
        lines.resize(n, Line([0; 64]));
        Ok(AlignedBytes { lines, len })
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialized bytes, Line is plain bytes.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// A weight matrix of `n_rows` x `n_cols` in the packed layout (see the module docs).
pub struct PackedMatrix {
    ty: GgmlType,
    n_rows: usize,
    n_cols: usize,
    planes: AlignedBytes,
    scales: AlignedBytes,
    /// Bytes of planes / scale headers per group of 16 rows.
    group_plane_bytes: usize,
    group_scale_bytes: usize,
}

/// The packed geometry of one format, at run time.
#[derive(Clone, Copy)]
struct Geometry {
    scales: Scales,
    super_cols: usize,
    header_bytes: usize,
    plane_bytes: usize,
    bytes: bool,
    hi1: bool,
    hi2: bool,
    offset: i32,
    lut: Option<[u8; 16]>,
}

fn geometry(ty: GgmlType) -> Option<Geometry> {
    macro_rules! geo {
        ($f:ident,) => {
            Some(Geometry {
                scales: $f::SCALES,
                super_cols: $f::SUPER_COLS,
                header_bytes: $f::HEADER_BYTES,
                plane_bytes: $f::PLANE_BYTES,
                bytes: $f::BYTES,
                hi1: $f::HI1,
                hi2: $f::HI2,
                offset: $f::OFFSET,
                lut: $f::LUT,
            })
        };
    }
    for_each_format!(geo, ty,)
}

impl PackedMatrix {
    /// Repacks `w` (GGUF blocks of `ty`, `n_rows` rows of `n_cols`). `Ok(None)` for types
    /// without packed kernels.
    pub fn new(ty: GgmlType, w: &[u8], n_rows: usize, n_cols: usize) -> Result<Option<PackedMatrix>, QuantError> {
        let Some(g) = geometry(ty) else { return Ok(None) };
        let row_len = row_bytes(ty, n_cols)?;
        check_len(ty, w.len(), n_rows.saturating_mul(n_cols))?;
        let n_groups = n_rows.div_ceil(TILE_ROWS);
        let group_plane_bytes = n_cols / BLOCK * g.plane_bytes;
        let group_scale_bytes = n_cols / g.super_cols * g.header_bytes;
        let mut planes = AlignedBytes::zeroed(n_groups * group_plane_bytes)?;
        let mut scales = AlignedBytes::zeroed(n_groups * group_scale_bytes)?;
        if n_groups > 0 && n_cols > 0 {
            use rayon::prelude::*;
            planes
                .as_mut_slice()
                .par_chunks_mut(group_plane_bytes)
                .zip(scales.as_mut_slice().par_chunks_mut(group_scale_bytes))
                .enumerate()
                .for_each_init(RepackScratch::default, |scratch, (gi, (pl, sc))| {
                    let rows = gi * TILE_ROWS..((gi + 1) * TILE_ROWS).min(n_rows);
                    pack_group(ty, &g, &w[rows.start * row_len..rows.end * row_len], rows.len(), n_cols, pl, sc, scratch);
                });
        }
        Ok(Some(PackedMatrix { ty, n_rows, n_cols, planes, scales, group_plane_bytes, group_scale_bytes }))
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }
    /// Heap bytes held (planes and scales).
    pub fn size_bytes(&self) -> usize {
        self.planes.len + self.scales.len
    }

    /// `out[t * n_rows + r] = Σ_c w[r, c] · x[t * n_cols + c]`, on `pool`'s threads with the
    /// fastest kernels this CPU runs.
    pub fn matmul(&self, x: &[f32], n_tokens: usize, out: &mut [f32], pool: &ThreadPool) -> Result<(), QuantError> {
        self.matmul_with(Isa::best(), x, n_tokens, out, pool)
    }

    pub(crate) fn matmul_with(&self, isa: Isa, x: &[f32], n_tokens: usize, out: &mut [f32], pool: &ThreadPool) -> Result<(), QuantError> {
        super::matmul::check_shapes(x.len(), out.len(), self.n_rows, self.n_cols, n_tokens)?;
        if n_tokens == 0 || self.n_rows == 0 {
            return Ok(());
        }
        let g = geometry(self.ty).expect("packed types have a geometry");
        let acts = Acts::new(x, n_tokens, self.n_cols, &g);
        let n_groups = self.n_rows.div_ceil(TILE_ROWS);
        // Groups per task: enough weights (~128 KiB) that a prefill's token tiles reuse them from
        // L2, but at least 4 tasks per thread so a preempted core does not hold the others up.
        let by_cache = (128 * 1024 / self.group_plane_bytes.max(1)).max(1);
        let by_balance = n_groups.div_ceil(4 * pool.n_threads()).max(1);
        let groups_per_task = by_cache.min(by_balance);
        let n_tasks = n_groups.div_ceil(groups_per_task);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let task = |i: usize| {
            let first = i * groups_per_task;
            let last = (first + groups_per_task).min(n_groups);
            let mut t0 = 0;
            while t0 < n_tokens {
                let nt = (n_tokens - t0).min(MAX_TILE_TOKENS);
                for gi in first..last {
                    let job = GroupJob {
                        planes: &self.planes.as_slice()[gi * self.group_plane_bytes..(gi + 1) * self.group_plane_bytes],
                        scales: &self.scales.as_slice()[gi * self.group_scale_bytes..(gi + 1) * self.group_scale_bytes],
                        n_cols: self.n_cols,
                        acts: &acts,
                        t0,
                        nt,
                        first_row: gi * TILE_ROWS,
                        valid_rows: (self.n_rows - gi * TILE_ROWS).min(TILE_ROWS),
                        n_rows: self.n_rows,
                    };
                    // SAFETY: tasks own disjoint row ranges of `out`, whose size check_shapes
                    // verified; the ISA was detected on this CPU (Isa::best or a test).
                    unsafe { run_group(isa, self.ty, &job, out_ptr.get()) };
                }
                t0 += nt;
            }
        };
        pool.run(n_tasks, &task);
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint rows from the pool's threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Activations quantized for one matmul: `x ≈ d[t, b] · q[t, c]` in blocks of 32, plus the
/// per-block terms the format's offset or mins need.
pub(crate) struct Acts {
    pub(crate) q: Vec<i8>,
    /// `[token][block]`.
    pub(crate) d: Vec<f32>,
    /// `[token][sub-block]`: `-offset · Σ q` over each 32-column block (16 for KSigned16),
    /// the start value of the integer accumulator.
    pub(crate) init: Vec<i32>,
    /// KMin, `[token][block]`: `d · Σ q`, what the mins multiply.
    pub(crate) dsum: Vec<f32>,
}

impl Acts {
    fn new(x: &[f32], n_tokens: usize, n_cols: usize, g: &Geometry) -> Acts {
        let nb = n_cols / BLOCK;
        let mut q = vec![0i8; n_tokens * n_cols];
        let mut d = vec![0f32; n_tokens * nb];
        quantize_blocks(x, &mut q, &mut d);
        let sub = if g.scales == Scales::KSigned16 { 16 } else { BLOCK };
        let init = match g.scales {
            Scales::KMin => Vec::new(),
            _ => q.chunks_exact(sub).map(|c| -g.offset * c.iter().map(|&v| v as i32).sum::<i32>()).collect(),
        };
        let dsum = match g.scales {
            Scales::KMin => q.chunks_exact(BLOCK).zip(&d).map(|(c, &db)| db * c.iter().map(|&v| v as i32).sum::<i32>() as f32).collect(),
            _ => Vec::new(),
        };
        Acts { q, d, init, dsum }
    }
}

/// i8 quantization of each 32-element block with scale `amax / 127` (f32, not rounded to f16).
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::best() == Isa::Avx512Vnni {
        // SAFETY: AVX-512 detected.
        return unsafe { super::packed_avx512::quantize_blocks(x, q, d) };
    }
    quantize_blocks_scalar(x, q, d)
}

pub(crate) fn quantize_blocks_scalar(x: &[f32], q: &mut [i8], d: &mut [f32]) {
    for ((xb, qb), db) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)).zip(d.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        // f32::max drops NaN; a NaN activation must still poison its outputs, as it would in an
        // f32 dot product, rather than quantize to a silent 0.
        let scale = if xb.iter().any(|v| v.is_nan()) { f32::NAN } else { amax / 127.0 };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (o, v) in qb.iter_mut().zip(xb) {
            // Round half to even, as the vector builds' cvtps2dq does; the clamp keeps -128 out.
            *o = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        *db = scale;
    }
}

/// One kernel call: tokens `t0..t0 + nt` through one group of 16 rows.
pub(crate) struct GroupJob<'a> {
    pub(crate) planes: &'a [u8],
    pub(crate) scales: &'a [u8],
    pub(crate) n_cols: usize,
    pub(crate) acts: &'a Acts,
    pub(crate) t0: usize,
    pub(crate) nt: usize,
    pub(crate) first_row: usize,
    pub(crate) valid_rows: usize,
    pub(crate) n_rows: usize,
}

/// Which build of the kernels runs; `Scalar` is the oracle for the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// The 256-bit `vpdpbusd` (Intel client CPUs without AVX-512).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// Tests only: AVX-VNNI's arithmetic with AVX-512 VL's encoding (see packed_avx2.rs).
    #[cfg(all(target_arch = "x86_64", test))]
    Avx512Ymm,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// NEON with the dot-product extension (`sdot`).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Isa {
    pub(crate) fn best() -> Isa {
        use std::sync::OnceLock;
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let all = Isa::available();
            *all.last().expect("scalar is always available")
        })
    }

    /// Every build this CPU can run, slowest first.
    pub(crate) fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2 {
                v.push(Isa::Avx2);
            }
            if avx2 && is_x86_feature_detected!("avxvnni") {
                v.push(Isa::AvxVnni);
            }
            let avx512 = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni");
            #[cfg(test)]
            if avx2 && avx512 && is_x86_feature_detected!("avx512vl") {
                v.push(Isa::Avx512Ymm);
            }
            if avx512 {
                v.push(Isa::Avx512Vnni);
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa::NeonDot);
            }
        }
        v
    }
}

/// SAFETY: `isa` must run on this CPU; `out` must hold `n_tokens * n_rows` floats and no other
/// thread may write this group's rows.
unsafe fn run_group(isa: Isa, ty: GgmlType, job: &GroupJob<'_>, out: *mut f32) {
    macro_rules! go {
        ($f:ident, $isa:expr, $job:expr, $out:expr) => {{
            match $isa {
                Isa::Scalar => kernel_scalar::<$f>($job, $out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => super::packed_avx2::avx2::kernel::<$f>($job, $out),
                #[cfg(target_arch = "x86_64")]
                Isa::AvxVnni => super::packed_avx2::avx_vnni::kernel::<$f>($job, $out),
                #[cfg(all(target_arch = "x86_64", test))]
                Isa::Avx512Ymm => super::packed_avx2::avx512_ymm::kernel::<$f>($job, $out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512Vnni => super::packed_avx512::kernel::<$f>($job, $out),
                #[cfg(target_arch = "aarch64")]
                Isa::NeonDot => super::packed_neon::kernel::<$f>($job, $out),
            }
            Some(())
        }};
    }
    for_each_format!(go, ty, isa, job, out).expect("run_group called for a packed type");
}

/// The value of row `r`, column `4k + j` of block plane `p` (the layout the kernels decode).
#[inline(always)]
pub(crate) fn plane_value(g_bytes: bool, hi1: bool, hi2: bool, lut: Option<[u8; 16]>, p: &[u8], k: usize, r: usize, j: usize) -> u8 {
    let at = 4 * r + j;
    if g_bytes {
        return p[64 * k + at];
    }
    let nib = (p[64 * (k / 2) + at] >> (4 * (k % 2))) & 0x0F;
    if let Some(t) = lut {
        return t[nib as usize];
    }
    let mut v = nib;
    let bit = |plane: usize| (u64::from_le_bytes(p[256 + 64 * plane + 8 * k..256 + 64 * plane + 8 * k + 8].try_into().unwrap()) >> at) & 1;
    if hi1 {
        v |= (bit(0) as u8) << 4;
    }
    if hi2 {
        v |= (bit(hi1 as usize) as u8) << 5;
    }
    v
}

fn f16_le(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The portable kernel: the arithmetic every vector build reproduces bit for bit.
///
/// # Safety
/// `out` must hold `n_rows` floats per token from `job.t0` to `job.t0 + job.nt`.
pub(crate) unsafe fn kernel_scalar<F: Format>(job: &GroupJob<'_>, out: *mut f32) {
    let n_cols = job.n_cols;
    let nb = n_cols / BLOCK;
    let blocks_per_super = F::SUPER_COLS / BLOCK;
    let a = job.acts;
    for r in 0..job.valid_rows {
        for t in job.t0..job.t0 + job.nt {
            let mut acc = 0f32;
            for b in 0..nb {
                let hdr = &job.scales[b / blocks_per_super * F::HEADER_BYTES..];
                let p = &job.planes[b * F::PLANE_BYTES..(b + 1) * F::PLANE_BYTES];
                let aq = &a.q[t * n_cols + b * BLOCK..t * n_cols + (b + 1) * BLOCK];
                let da = a.d[t * nb + b];
                let dot = |cols: std::ops::Range<usize>| -> i32 {
                    cols.map(|c| plane_value(F::BYTES, F::HI1, F::HI2, F::LUT, p, c / 4, r, c % 4) as i32 * aq[c] as i32).sum()
                };
                let d = f16_le(hdr, 2 * r);
                match F::SCALES {
                    Scales::Legacy => {
                        let i = a.init[t * nb + b] + dot(0..32);
                        acc = d.mul_add(i as f32 * da, acc);
                    }
                    Scales::KMin => {
                        let j = b % blocks_per_super;
                        let s = d * hdr[HDR_KMIN_SC + TILE_ROWS * j + r] as f32;
                        let mn = f16_le(hdr, HDR_DMIN + 2 * r) * hdr[HDR_KMIN_M + TILE_ROWS * j + r] as f32;
                        acc = s.mul_add(dot(0..32) as f32 * da, acc);
                        acc = (-mn).mul_add(a.dsum[t * nb + b], acc);
                    }
                    Scales::KSigned16 => {
                        let j = b % blocks_per_super;
                        for h in 0..2 {
                            let s = d * hdr[HDR_KSIGNED_SC + TILE_ROWS * (2 * j + h) + r] as i8 as f32;
                            let i = a.init[t * 2 * nb + 2 * b + h] + dot(16 * h..16 * h + 16);
                            acc = s.mul_add(i as f32 * da, acc);
                        }
                    }
                }
            }
            *out.add(t * job.n_rows + job.first_row + r) = acc;
        }
    }
}

#[derive(Default)]
struct RepackScratch {
    u: UnpackedRow,
    w: Vec<u8>,
}

/// Packs rows `0..n_valid` of one group (`rows`: their GGUF bytes) into `pl` and `sc`.
#[allow(clippy::too_many_arguments)]
fn pack_group(ty: GgmlType, g: &Geometry, rows: &[u8], n_valid: usize, n_cols: usize, pl: &mut [u8], sc: &mut [u8], s: &mut RepackScratch) {
    let row_len = rows.len() / n_valid.max(1);
    let blocks_per_super = g.super_cols / BLOCK;
    s.w.resize(TILE_ROWS * n_cols, 0);
    s.w.fill(0);
    for r in 0..n_valid {
        unpack_row(ty, &rows[r * row_len..(r + 1) * row_len], n_cols, &mut s.u);
        let w = &mut s.w[r * n_cols..(r + 1) * n_cols];
        // Stored values are unsigned: the GGUF value plus the offset (or the LUT index).
        for (o, &q) in w.iter_mut().zip(&s.u.q) {
            *o = match g.lut {
                Some(t) => t.iter().position(|&l| l as i32 == q as i32 + g.offset).expect("IQ4_NL level") as u8,
                None => (q as i32 + g.offset) as u8,
            };
        }
        let f16b = |v: f32| half::f16::from_f32(v).to_le_bytes();
        for si in 0..n_cols / g.super_cols {
            let h = &mut sc[si * g.header_bytes..(si + 1) * g.header_bytes];
            h[2 * r..2 * r + 2].copy_from_slice(&f16b(s.u.d[si]));
            match g.scales {
                Scales::Legacy => {}
                Scales::KMin => {
                    h[HDR_DMIN + 2 * r..HDR_DMIN + 2 * r + 2].copy_from_slice(&f16b(s.u.dmin[si]));
                    for j in 0..blocks_per_super {
                        h[HDR_KMIN_SC + TILE_ROWS * j + r] = s.u.sc[si * 8 + j] as u8;
                        h[HDR_KMIN_M + TILE_ROWS * j + r] = s.u.m[si * 8 + j] as u8;
                    }
                }
                Scales::KSigned16 => {
                    for j in 0..16 {
                        h[HDR_KSIGNED_SC + TILE_ROWS * j + r] = s.u.sc[si * 16 + j] as i8 as u8;
                    }
                }
            }
        }
    }
    for b in 0..n_cols / BLOCK {
        let p = &mut pl[b * g.plane_bytes..(b + 1) * g.plane_bytes];
        for r in 0..TILE_ROWS {
            for c in 0..BLOCK {
                let v = s.w[r * n_cols + b * BLOCK + c];
                let (k, at) = (c / 4, 4 * r + c % 4);
                if g.bytes {
                    p[64 * k + at] = v;
                    continue;
                }
                p[64 * (k / 2) + at] |= (v & 0x0F) << (4 * (k % 2));
                let mut plane = 0;
                for (has, bit) in [(g.hi1, 4), (g.hi2, 5)] {
                    if has {
                        if (v >> bit) & 1 == 1 {
                            p[256 + 64 * plane + 8 * k + at / 8] |= 1 << (at % 8);
                        }
                        plane += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::matmul::tests::{random_acts_with, random_weights};
    use crate::quant::{dequantize, matmul_reference};

    const PACKED: [GgmlType; 7] =
        [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::IQ4_NL, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K];

    fn run(isa: Isa, m: &PackedMatrix, x: &[f32], n_tokens: usize, pool: &ThreadPool) -> Vec<f32> {
        let mut out = vec![f32::NAN; m.n_rows() * n_tokens];
        m.matmul_with(isa, x, n_tokens, &mut out, pool).unwrap();
        out
    }

    /// The packed planes decode back to exactly the GGUF values: repacking loses nothing.
    #[test]
    fn repacking_round_trips_every_value_and_scale() {
        for ty in PACKED {
            let (n_rows, n_cols) = (21, 512);
            let w = random_weights(ty, n_rows * n_cols, 40 + ty.id() as u64);
            let m = PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap().unwrap();
            let g = geometry(ty).unwrap();
            let mut want = vec![0f32; n_rows * n_cols];
            dequantize(ty, &w, &mut want).unwrap();
            for r in 0..n_rows {
                let (gi, rr) = (r / TILE_ROWS, r % TILE_ROWS);
                let pl = &m.planes.as_slice()[gi * m.group_plane_bytes..];
                let sc = &m.scales.as_slice()[gi * m.group_scale_bytes..];
                for c in 0..n_cols {
                    let b = c / BLOCK;
                    let p = &pl[b * g.plane_bytes..];
                    let hdr = &sc[c / g.super_cols * g.header_bytes..];
                    let v = plane_value(g.bytes, g.hi1, g.hi2, g.lut, p, (c % BLOCK) / 4, rr, c % 4) as f32;
                    let d = f16_le(hdr, 2 * rr);
                    let j = b % (g.super_cols / BLOCK);
                    let got = match g.scales {
                        Scales::Legacy => d * (v - g.offset as f32),
                        Scales::KMin => {
                            d * hdr[HDR_KMIN_SC + TILE_ROWS * j + rr] as f32 * v
                                - f16_le(hdr, HDR_DMIN + 2 * rr) * hdr[HDR_KMIN_M + TILE_ROWS * j + rr] as f32
                        }
                        Scales::KSigned16 => {
                            let sub = (c % 256) / 16;
                            d * hdr[HDR_KSIGNED_SC + TILE_ROWS * sub + rr] as i8 as f32 * (v - g.offset as f32)
                        }
                    };
                    let exp = want[r * n_cols + c];
                    assert!((got - exp).abs() <= 1e-6 * exp.abs().max(1e-3), "{ty} row {r} col {c}: {got} vs {exp}");
                }
            }
        }
    }

    /// Every vector build this CPU runs gives the scalar kernel's floats bit for bit, for odd
    /// row counts (a partial last group), widths of 1..many blocks, 1..19 tokens (partial token
    /// tiles) and pools of 1 and 3 threads.
    #[test]
    fn every_isa_matches_the_scalar_kernel_bit_for_bit() {
        let isas = Isa::available();
        eprintln!("packed kernels tested on {isas:?}");
        let pools = [ThreadPool::new(1), ThreadPool::new(3)];
        for ty in PACKED {
            let unit = if geometry(ty).unwrap().super_cols == 256 { 256 } else { 32 };
            for (n_rows, n_cols) in [(1, unit), (17, unit * 3), (45, 896usize.div_ceil(unit) * unit), (16, 2 * unit)] {
                let w = random_weights(ty, n_rows * n_cols, 7 + n_rows as u64 + ty.id() as u64);
                let m = PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap().unwrap();
                for n_tokens in [1, 2, 8, 19] {
                    let x = random_acts_with(n_tokens * n_cols, 3 + n_tokens as u64, true);
                    let want = run(Isa::Scalar, &m, &x, n_tokens, &pools[0]);
                    assert!(want.iter().all(|v| v.is_finite()));
                    for &isa in &isas[1..] {
                        for pool in &pools {
                            let got = run(isa, &m, &x, n_tokens, pool);
                            for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                                assert!(a.to_bits() == b.to_bits(), "{ty} {isa:?} {n_rows}x{n_cols} {n_tokens} tokens, out {i}: scalar {a} vs {b}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The packed product differs from the exact f32 one only by the activation rounding: each
    /// activation moves by at most half its 32-block's step amax / 127, so
    /// |packed - exact| <= Σ_c |w_c| · step_c / 2 (+ f32 rounding, 1e-5 of Σ |w_c x_c|).
    #[test]
    fn packed_matmul_is_within_the_activation_rounding_bound() {
        let pool = ThreadPool::new(2);
        for ty in PACKED {
            for outliers in [false, true] {
                let (n_rows, n_cols, n_tokens) = (19, 768, 5);
                let w = random_weights(ty, n_rows * n_cols, 11 + ty.id() as u64);
                let x = random_acts_with(n_tokens * n_cols, 5, outliers);
                let m = PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap().unwrap();
                let got = run(Isa::best(), &m, &x, n_tokens, &pool);
                let mut exact = vec![0f32; n_rows * n_tokens];
                matmul_reference(ty, &w, n_rows, n_cols, &x, n_tokens, &mut exact).unwrap();
                let mut wf = vec![0f32; n_rows * n_cols];
                dequantize(ty, &w, &mut wf).unwrap();
                let (mut err2, mut ref2) = (0f64, 0f64);
                for t in 0..n_tokens {
                    let xt = &x[t * n_cols..(t + 1) * n_cols];
                    for r in 0..n_rows {
                        let (mut bound, mut mag) = (0f64, 0f64);
                        for c in 0..n_cols {
                            let b0 = c / BLOCK * BLOCK;
                            let amax = xt[b0..b0 + BLOCK].iter().fold(0f32, |m, v| m.max(v.abs()));
                            bound += wf[r * n_cols + c].abs() as f64 * amax as f64 / 127.0 / 2.0;
                            mag += (wf[r * n_cols + c] as f64 * xt[c] as f64).abs();
                        }
                        let bound = bound * (1.0 + 1e-5) + 1e-5 * mag + 1e-30;
                        let (f, e) = (got[t * n_rows + r] as f64, exact[t * n_rows + r] as f64);
                        assert!((f - e).abs() <= bound, "{ty} row {r} token {t}: packed {f} exact {e} bound {bound}");
                        err2 += (f - e) * (f - e);
                        ref2 += e * e;
                    }
                }
                eprintln!("{ty}: packed relative RMS error vs f32 {:.2e} (outliers {outliers})", (err2 / ref2).sqrt());
            }
        }
    }

    #[test]
    fn nan_activations_propagate_and_bad_shapes_are_errors() {
        let pool = ThreadPool::new(2);
        for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let (n_rows, n_cols) = (5, 256);
            let w = random_weights(ty, n_rows * n_cols, 1);
            let m = PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap().unwrap();
            let mut x = random_acts_with(2 * n_cols, 2, false);
            x[n_cols + 17] = f32::NAN;
            let out = run(Isa::best(), &m, &x, 2, &pool);
            assert!(out[..n_rows].iter().all(|v| v.is_finite()) && out[n_rows..].iter().all(|v| v.is_nan()), "{ty}: {out:?}");
            let mut small = vec![0f32; n_rows];
            assert!(matches!(m.matmul(&x, 2, &mut small, &pool), Err(QuantError::BadShape { .. })));
            assert!(matches!(m.matmul(&x[1..], 2, &mut vec![0f32; 2 * n_rows], &pool), Err(QuantError::BadShape { .. })));
        }
        assert!(PackedMatrix::new(GgmlType::Q2_K, &[], 0, 256).unwrap().is_none());
        assert!(matches!(PackedMatrix::new(GgmlType::Q5_0, &[0u8; 21], 1, 32), Err(QuantError::SizeMismatch { .. })));
        assert!(matches!(PackedMatrix::new(GgmlType::Q4_K, &[0u8; 144], 1, 255), Err(QuantError::PartialBlock { .. })));
    }
}
