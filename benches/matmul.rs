//! CPU matmul throughput: fused quantized kernels vs the dequantize-then-dot reference, on the
//! shapes of Qwen2.5-0.5B's FFN (4864 x 896 elements).
//!
//!     cargo bench --bench matmul            # all cores rayon sees
//!     RAYON_NUM_THREADS=2 cargo bench --bench matmul
//!
//! Weights are random valid blocks (random bytes, finite f16 scales); speed does not depend
//! on the values. Prints one table: GFLOP/s (2·rows·cols·tokens per call) and effective weight
//! bandwidth (weight bytes per call / time), each with the speed-up over the reference.

use std::time::Instant;

use ferrite::quant::{matmul, matmul_reference, GgmlType};

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
        GgmlType::Q4_K => &[0, 2],
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

/// Median seconds per call over enough calls to fill ~`budget_s`.
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
    times[n / 2]
}

fn main() {
    let threads = rayon::current_num_threads();
    println!("ferrite quant::matmul, {threads} rayon threads, median of repeated calls");
    println!(
        "{:<6} {:>11} {:>6} {:>10} {:>9} {:>10} {:>9} {:>8}",
        "type", "rows x cols", "tokens", "fused ms", "GFLOP/s", "weight GB/s", "ref ms", "speed-up"
    );
    let cases = [
        (GgmlType::Q4_K, 896, 4864),
        (GgmlType::Q6_K, 896, 4864),
        (GgmlType::Q5_0, 4864, 896),
        (GgmlType::Q8_0, 4864, 896),
        (GgmlType::F16, 4864, 896),
        (GgmlType::F32, 4864, 896),
    ];
    for (ty, n_rows, n_cols) in cases {
        let w = weights(ty, n_rows * n_cols);
        for n_tokens in [1usize, 16] {
            let x: Vec<f32> = xorshift_bytes(n_tokens * n_cols, 7).iter().map(|&b| (b as f32 - 128.0) / 64.0).collect();
            let mut out = vec![0f32; n_rows * n_tokens];
            let fused = time_it(0.5, || matmul(ty, &w, n_rows, n_cols, &x, n_tokens, &mut out).unwrap());
            let reference =
                time_it(0.5, || matmul_reference(ty, &w, n_rows, n_cols, &x, n_tokens, &mut out).unwrap());
            let flops = 2.0 * (n_rows * n_cols * n_tokens) as f64;
            println!(
                "{:<6} {:>11} {:>6} {:>10.3} {:>9.1} {:>10.2} {:>9.3} {:>7.1}x",
                ty.name(),
                format!("{n_rows}x{n_cols}"),
                n_tokens,
                fused * 1e3,
                flops / fused / 1e9,
                w.len() as f64 / fused / 1e9,
                reference * 1e3,
                reference / fused
            );
        }
    }
}
