//! Prefill-shaped products with a 4-bit `pack-quantized` weight (g64, SmolLM2's shapes):
//! the int16-code VNNI GEMM against the banded dequantize + f32 GEMM it replaces, and the
//! f32 GEMM on an already dense weight, side by side in one run, best of 5 alternating
//! rounds: `cargo run --release -p lmq-runtime --example packed_prefill_bench [-- TOKENS]`.

use std::time::Instant;

use lmq_runtime::kernels::matmul_f32_nt;
use lmq_runtime::kernels::packed_gemm_i16;
use lmq_runtime::kernels::packed_q::matmul_banded;
use lmq_runtime::kernels::packed_vnni::{quantize_acts, ActCodes};
use lmq_runtime::packed::PackedLinear;

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .map_or(512, |s| s.parse().expect("TOKENS"));
    println!(
        "{:>16} {:>10} {:>14} {:>12} {:>14}",
        "shape (out x in)", "f32 ms", "dequant+f32 ms", "int16 ms", "int16 speedup"
    );
    for (n, k) in [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let codes: Vec<i8> = (0..n * k).map(|i| ((i * 104_729) % 16) as i8 - 8).collect();
        let groups = k / 64;
        let scale: Vec<f32> = (0..n * groups)
            .map(|i| 1e-3 + (i % 7) as f32 * 1e-4)
            .collect();
        let w = PackedLinear::from_codes(4, n, k, 64, &codes, scale, None, None).unwrap();
        let dense = w.dequantize_ref();
        let reps = (2_000_000_000 / (2 * m * n * k)).clamp(1, 50);
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let (mut f32_ms, mut deq_ms, mut int_ms) = (f64::MAX, f64::MAX, f64::MAX);
        let (mut q_ms, mut g_ms) = (f64::MAX, f64::MAX);
        let a0 = quantize_acts(&x, m, k, ActCodes::Int16);
        for _ in 0..5 {
            f32_ms = f32_ms.min(time(&mut || {
                std::hint::black_box(matmul_f32_nt(&x, &dense, m, k, n));
            }));
            deq_ms = deq_ms.min(time(&mut || {
                std::hint::black_box(matmul_banded(&x, &w, m));
            }));
            int_ms = int_ms.min(time(&mut || {
                let a = quantize_acts(&x, m, k, ActCodes::Int16);
                std::hint::black_box(packed_gemm_i16::matmul(&a, &w));
            }));
            q_ms = q_ms.min(time(&mut || {
                std::hint::black_box(quantize_acts(&x, m, k, ActCodes::Int16));
            }));
            g_ms = g_ms.min(time(&mut || {
                std::hint::black_box(packed_gemm_i16::matmul(&a0, &w));
            }));
        }
        println!(
            "{:>16} {f32_ms:>10.2} {deq_ms:>14.2} {int_ms:>12.2} {:>14.2}",
            format!("{n}x{k}"),
            deq_ms / int_ms
        );
        println!("   codes {q_ms:.2} ms, gemm alone {g_ms:.2} ms");
    }
}
