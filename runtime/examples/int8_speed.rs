//! Prefill-shaped matmuls, f32 weights vs int8 weights with per-token int8 activations
//! (W8A8), on SmolLM2's linear shapes: `cargo run --release -p lmq-runtime --example
//! int8_speed [-- TOKENS]`. Both kernels side by side in one run, best of 5 alternating
//! rounds. Without AVX-512 VNNI (or with `LMQ_NO_AVX512=1`) the W8A8 kernel is the AVX2
//! byte kernel, or with `LMQ_NO_AVX2_BYTES=1` as well the older AVX2 int16 one. `azp` is
//! W8A8 with a zero point per token (`input_activations.symmetric: false`). The weight codes
//! span the full int8 range, −128 included.

use std::time::Instant;

use lmq_runtime::kernels::int8::{matmul_i8, matmul_i8_nt, quantize_per_token};
use lmq_runtime::kernels::matmul_f32_nt;
use lmq_runtime::packed::{ActQuant, Int8Linear};

fn main() {
    let m: usize = std::env::args()
        .nth(1)
        .map_or(512, |s| s.parse().expect("TOKENS"));
    println!(
        "{:>16} {:>10} {:>10} {:>12} {:>12} {:>8} {:>12}",
        "shape (out x in)",
        "f32 ms",
        "w8a8 ms",
        "w8a8 azp ms",
        "int-only ms",
        "speedup",
        "azp speedup"
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
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104_729) % 2001) as f32 / 20000.0 - 0.05)
            .collect();
        let codes: Vec<i8> = (0..n * k)
            .map(|i| ((i * 104_729) % 256) as i64 as i8)
            .collect();
        let w8 = Int8Linear::new(n, k, codes, vec![1e-3; n]).unwrap();
        let w8z = w8.clone().with_activations(ActQuant::Asymmetric);
        let reps = (2_000_000_000 / (2 * m * n * k)).clamp(1, 50);
        let time = |f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() * 1e3 / reps as f64
        };
        let xq = quantize_per_token(&x, m, k, ActQuant::Symmetric);
        // Best of 5 rounds, the kernels alternating within each: the machine is shared.
        let (mut f32_ms, mut i8_ms, mut azp_ms, mut int_ms) =
            (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..5 {
            f32_ms = f32_ms.min(time(&mut || {
                std::hint::black_box(matmul_f32_nt(&x, &w, m, k, n));
            }));
            i8_ms = i8_ms.min(time(&mut || {
                std::hint::black_box(matmul_i8_nt(&x, &w8, m));
            }));
            azp_ms = azp_ms.min(time(&mut || {
                std::hint::black_box(matmul_i8_nt(&x, &w8z, m));
            }));
            int_ms = int_ms.min(time(&mut || {
                std::hint::black_box(matmul_i8(&xq, &w8));
            }));
        }
        println!(
            "{:>16} {f32_ms:>10.2} {i8_ms:>10.2} {azp_ms:>12.2} {int_ms:>12.2} {:>8.2} {:>12.2}",
            format!("{n}x{k}"),
            f32_ms / i8_ms,
            f32_ms / azp_ms
        );
    }
}
