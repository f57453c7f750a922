//! Decode GEMV with the activations as int16 codes (`packed_i16`, `vpdpwssd`) against int8
//! codes (`packed_vnni`, `vpdpbusd`) on SmolLM2's decoder shapes, 4- and 8-bit weights, in
//! alternating rounds. What the int8 path would buy, before its accuracy is paid.
//!
//! `cargo run --release -p lmq-runtime --example act_codes_bench` (`LMQ_BENCH_THREADS`,
//! default 2). Output: one markdown table.

use std::hint::black_box;
use std::time::Instant;

use lmq_runtime::kernels::{packed_i16, packed_vnni};
use lmq_runtime::packed::PackedLinear;

/// `(n, k)`: q/o, k/v, gate/up, down.
const SHAPES: [(usize, usize); 5] = [(8, 576), (576, 576), (192, 576), (1536, 576), (576, 1536)];

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

fn weight(bits: u8, n: usize, k: usize, group: usize) -> PackedLinear {
    let half = (1i32 << (bits - 1)) as f32;
    let codes: Vec<i8> = data(n * k, 7)
        .iter()
        .map(|v| (v * half).floor().clamp(-half, half - 1.0) as i8)
        .collect();
    let scale: Vec<f32> = data(n * (k / group), 11)
        .iter()
        .map(|v| 0.01 + v.abs() * 0.02)
        .collect();
    PackedLinear::from_codes(bits, n, k, group, &codes, scale, None, None).expect("weight")
}

/// Median of `reps` timings of `calls` back-to-back calls, in µs per call.
fn time(calls: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..calls {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / calls as f64
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
    assert!(packed_vnni::available(), "needs AVX-512 VNNI");
    println!("decode GEMV, {threads} threads, best of 7 alternating rounds of 2000 calls; speed-ups over int16 AVX2\n");
    println!(
        "| bits | weight `[n, k]` | int16 AVX2 µs | int16 as 2 × int8 planes µs | int8 µs | planes speed-up | int8 speed-up |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (bits, group) in [(4u8, 64usize), (8, 32)] {
        for (n, k) in SHAPES {
            let w = weight(bits, n, k, group);
            let x = data(k, 3);
            let (mut t16, mut t8, mut tp) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
            for _ in 0..7 {
                tp = tp.min(time(2000, || {
                    black_box(packed_vnni::gemv_packed_vnni(
                        black_box(&x),
                        &w,
                        1,
                        packed_vnni::ActCodes::Int16,
                    ));
                }));
                t16 = t16.min(time(2000, || {
                    black_box(packed_i16::gemv_packed_i16(black_box(&x), &w, 1));
                }));
                t8 = t8.min(time(2000, || {
                    black_box(packed_vnni::gemv_packed_vnni(
                        black_box(&x),
                        &w,
                        1,
                        packed_vnni::ActCodes::Int8,
                    ));
                }));
            }
            println!(
                "| {bits} | {n} × {k} | {t16:.2} | {tp:.2} | {t8:.2} | {:.2}× | {:.2}× |",
                t16 / tp,
                t16 / t8
            );
        }
    }
}
