//! Decode GEMV `[1, k] × [n, k]ᵀ`: the dense f32 kernel against the fused 4-bit
//! `pack-quantized` kernel and the OneBit sign-sum kernel, on SmolLM2-shaped weights (`1536 × 576`: an MLP projection, L2/L3
//! resident; `49152 × 576`: the tied lm_head, 113 MiB in f32 and 14 MiB packed).
//!
//! `cargo run --release -p lmq-runtime --example packed_gemv_bench` (rayon pool: 2 threads,
//! `LMQ_BENCH_THREADS` overrides). Each case: warm-up, then the best of N runs. Output: one
//! markdown table with the time and the weight bytes read per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lmq_runtime::kernels::matmul_f32_nt;
use lmq_runtime::kernels::onebit::matmul_onebit_nt;
use lmq_runtime::kernels::packed_q::matmul_packed_nt;
use lmq_runtime::packed::onebit::pack_signs;
use lmq_runtime::packed::{OneBitLinear, PackedLinear};

/// `(n, k)` of the weights timed.
const SHAPES: [(usize, usize); 3] = [(1536, 576), (576, 1536), (49152, 576)];
/// Group size of the 4-bit weight (576 = 9 × 64; compressed-tensors needs it to divide k).
const GROUP: usize = 64;

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Best wall time over N runs after a warm-up, N chosen for about 1 s of work.
fn best(mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    let mut runs = 0u32;
    while runs < 3 || t.elapsed() < Duration::from_millis(50) {
        f();
        runs += 1;
    }
    let per_run = t.elapsed() / runs;
    let iters = (1.0 / per_run.as_secs_f64()).clamp(10.0, 300.0) as usize;
    (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// A 4-bit asymmetric weight with arbitrary codes and scales (timing does not depend on the
/// values).
fn packed_weight(n: usize, k: usize) -> PackedLinear {
    let codes: Vec<i8> = data(n * k, 7)
        .iter()
        .map(|v| (v * 8.0).floor().clamp(-8.0, 7.0) as i8)
        .collect();
    let n_groups = k / GROUP;
    let scale: Vec<f32> = data(n * n_groups, 11)
        .iter()
        .map(|v| 0.01 + v.abs() * 0.02)
        .collect();
    let zero: Vec<i8> = data(n * n_groups, 13)
        .iter()
        .map(|v| (v * 8.0).floor().clamp(-8.0, 7.0) as i8)
        .collect();
    PackedLinear::from_codes(4, n, k, GROUP, &codes, scale, Some(zero), None)
        .expect("valid packed weight")
}

fn main() {
    let threads = std::env::var("LMQ_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("rayon pool");
    println!("decode GEMV, {threads} threads, best of N\n");
    println!(
        "| weight `[n, k]` | f32 | f32 GB/s | 4-bit g{GROUP} | 4-bit GB/s | speed-up | 1-bit | 1-bit GB/s | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, k) in SHAPES {
        let x = data(k, 3);
        let w = packed_weight(n, k);
        let dense = w.dequantize_ref();
        let t_f32 = best(|| {
            black_box(matmul_f32_nt(black_box(&x), black_box(&dense), 1, k, n));
        });
        let t_q4 = best(|| {
            black_box(matmul_packed_nt(black_box(&x), black_box(&w), 1));
        });
        let signs = data(n * k, 17);
        let ob = OneBitLinear::new(
            n,
            k,
            pack_signs(&signs, n, k),
            data(n, 19),
            data(k, 23),
            true,
        )
        .expect("valid 1-bit weight");
        let t_q1 = best(|| {
            black_box(matmul_onebit_nt(black_box(&x), black_box(&ob), 1));
        });
        let bytes_q1 = (ob.signs.len() * 4 + (n + k) * 4) as f64;
        let bytes_f32 = (n * k * 4) as f64;
        let bytes_q4 = (w.packed.len() * 4 + w.scale.len() * 4 + n * k / GROUP) as f64;
        println!(
            "| {n} × {k} | {:.3} ms | {:.1} | {:.3} ms | {:.1} | {:.2}× | {:.3} ms | {:.1} | {:.2}× |",
            t_f32.as_secs_f64() * 1e3,
            bytes_f32 / t_f32.as_secs_f64() / 1e9,
            t_q4.as_secs_f64() * 1e3,
            bytes_q4 / t_q4.as_secs_f64() / 1e9,
            t_f32.as_secs_f64() / t_q4.as_secs_f64(),
            t_q1.as_secs_f64() * 1e3,
            bytes_q1 / t_q1.as_secs_f64() / 1e9,
            t_f32.as_secs_f64() / t_q1.as_secs_f64(),
        );
    }
}
