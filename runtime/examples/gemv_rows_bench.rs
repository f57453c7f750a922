//! What an extra activation row costs the f32 few-row kernel on weights that do not fit in
//! cache (SmolLM2's lm_head and an MLP projection), row-major against panel layout: best of
//! several rounds, each layout and m in turn.
//! `cargo run --release -p lmq-runtime --example gemv_rows_bench -- [THREADS]`

use lmq_runtime::kernels::{matmul_f32_nt, matmul_panel_nt, PanelF32};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .map_or(2, |t| t.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    for (name, n, k, copies) in [
        ("lm_head", 49152usize, 576usize, 1usize),
        ("mlp up ×30", 1536, 576, 30),
    ] {
        let ws: Vec<Vec<f32>> = (0..copies)
            .map(|c| {
                (0..n * k)
                    .map(|i| ((i * 7 + c) % 13) as f32 * 0.01)
                    .collect()
            })
            .collect();
        let panels: Vec<PanelF32> = ws
            .iter()
            .map(|w| PanelF32::from_row_major(w, n, k))
            .collect();
        let ms = [1usize, 2, 3, 4, 6, 8];
        let mut best = [vec![f64::INFINITY; ms.len()], vec![f64::INFINITY; ms.len()]];
        for _ in 0..15 {
            for (j, &m) in ms.iter().enumerate() {
                let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
                let t = Instant::now();
                for w in &ws {
                    std::hint::black_box(matmul_f32_nt(&x, w, m, k, n));
                }
                best[0][j] = best[0][j].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for p in &panels {
                    std::hint::black_box(matmul_panel_nt(&x, p, m));
                }
                best[1][j] = best[1][j].min(t.elapsed().as_secs_f64());
            }
        }
        for (layout, b) in ["row-major", "panels"].iter().zip(&best) {
            let line: Vec<String> = ms
                .iter()
                .zip(b)
                .map(|(m, t)| format!("m{m} {:.3} ms ({:.2}×)", t * 1e3, t / b[0]))
                .collect();
            println!("{name} [{n}×{k}] {layout}: {}", line.join(", "));
        }
    }
}
