//! CPU matmul throughput on the shapes of Qwen2.5-0.5B: the packed kernels the CPU backend uses
//! (`PackedMatrix`, weights repacked at load, run on `quant::pool::default_threads()` threads)
//! against `quant::matmul`'s row kernels (weights read in GGUF layout) and the
//! dequantize-then-dot reference.
//!
//!     cargo bench --bench matmul            # the physical cores
//!     RAYON_NUM_THREADS=1 cargo bench --bench matmul
//!
//! Weights are random valid blocks (random bytes, finite f16 scales); speed does not depend
//! on the values. "hot" repeats one matrix (it stays in the CPU caches); "cold" cycles through
//! copies totalling >= 256 MB, like a forward pass streaming every layer's weights from DRAM. Prints one table: GFLOP/s (2·rows·cols·tokens per call) and effective weight
//! bandwidth (weight bytes per call / time), each with the speed-up over the reference.

use std::time::Instant;

use ferrite::quant::{matmul, matmul_reference, pool, GgmlType, PackedMatrix};

fn xorshift_bytes(n: usize, mut s: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn weights(ty: GgmlType, n_elems: usize) -> Vec<u8> {
    let mut w = xorshift_bytes(n_elems / ty.block_elems() * ty.block_bytes(), 42);
    let scale = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    let fields: &[usize] = match ty {
        GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::F32 => {
            for c in w.chunks_exact_mut(4) {
                c.copy_from_slice(&((c[0] as f32 - 128.0) / 128.0).to_le_bytes());
            }
            &[]
        }
        GgmlType::F16 => {
            for c in w.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32((c[0] as f32 - 128.0) / 128.0).to_bits().to_le_bytes());
            }
            &[]
        }
        _ => &[0],
    };
    if !fields.is_empty() {
        for b in w.chunks_exact_mut(ty.block_bytes()) {
            for &at in fields {
                b[at..at + 2].copy_from_slice(&scale);
            }
        }
    }
    w
}

/// Best (minimum) seconds per call over enough calls to fill ~`budget_s`: on a shared machine
/// the minimum is the run least disturbed by other processes.
fn time_it(budget_s: f64, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let one = t0.elapsed().as_secs_f64().max(1e-7);
    let n = ((budget_s / one) as usize).clamp(3, 2000);
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[0]
}

fn main() {
    let threads = pool::default_threads();
    let pool = pool::global_pool();
    println!("ferrite matmul, {threads} threads (packed: ferrite's pool, row kernels: rayon), best of repeated calls");
    println!(
        "{:<6} {:>12} {:>6} {:>10} {:>9} {:>10} {:>11} {:>10} {:>9} {:>9}",
        "type", "rows x cols", "tokens", "packed ms", "GFLOP/s", "GB/s", "cold GB/s", "rows ms", "vs rows", "vs ref"
    );
    let cases = [
        (GgmlType::Q5_0, 896, 896),
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q6_K, 896, 4864),
        (GgmlType::Q8_0, 151936, 896),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::F16, 4864, 896),
    ];
    for (ty, n_rows, n_cols) in cases {
        let w = weights(ty, n_rows * n_cols);
        let packed = PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap();
        // "cold": cycle through copies totalling >= 256 MB, as a forward pass streams its layers.
        let copies: Vec<PackedMatrix> = match &packed {
            Some(_) => (0..(256_000_000 / w.len()).max(2).min(64))
                .map(|_| PackedMatrix::new(ty, &w, n_rows, n_cols).unwrap().unwrap())
                .collect(),
            None => Vec::new(),
        };
        for n_tokens in [1usize, 128] {
            let x: Vec<f32> = xorshift_bytes(n_tokens * n_cols, 7).iter().map(|&b| (b as f32 - 128.0) / 64.0).collect();
            let mut out = vec![0f32; n_rows * n_tokens];
            let budget = if n_rows * n_tokens > 1 << 22 { 0.3 } else { 0.5 };
            let rows = time_it(budget, || matmul(ty, &w, n_rows, n_cols, &x, n_tokens, &mut out).unwrap());
            let (fast, cold) = match &packed {
                Some(p) => {
                    let hot = time_it(budget, || p.matmul(&x, n_tokens, &mut out, pool).unwrap());
                    let mut next = 0;
                    let cold = time_it(budget, || {
                        next = (next + 1) % copies.len();
                        copies[next].matmul(&x, n_tokens, &mut out, pool).unwrap()
                    });
                    (hot, cold)
                }
                None => (rows, f64::NAN),
            };
            let reference = if n_rows * n_tokens <= 1 << 20 {
                time_it(budget, || matmul_reference(ty, &w, n_rows, n_cols, &x, n_tokens, &mut out).unwrap())
            } else {
                f64::NAN
            };
            let flops = 2.0 * (n_rows * n_cols * n_tokens) as f64;
            println!(
                "{:<6} {:>12} {:>6} {:>10.3} {:>9.1} {:>10.2} {:>11.2} {:>10.3} {:>8.2}x {:>8.1}x",
                ty.name(),
                format!("{n_rows}x{n_cols}"),
                n_tokens,
                fast * 1e3,
                flops / fast / 1e9,
                w.len() as f64 / fast / 1e9,
                w.len() as f64 / cold / 1e9,
                rows * 1e3,
                rows / fast,
                reference / fast
            );
        }
    }
}
