//! `cargo xtask bench models --models A,B,…`: our runtime's prefill and decode speed, peak
//! RSS and weight size for several checkpoints (any `--model` form: asset names, HF
//! directories, GGUF files) side by side. Every round runs each model once, in turn, and the
//! best of the rounds is kept, so the shared machine's noise hits every row alike (issue #9
//! compares the 1-bit model with the 4-bit and f32 ones this way).

use std::path::Path;

use anyhow::Result;

use crate::bench_decode::{ours, size_bytes, Speed};
use crate::build_release_bins;

/// What `bench models` was asked for.
pub struct ModelsBenchArgs {
    pub models: Vec<String>,
    pub threads: usize,
    pub reps: usize,
    pub rounds: usize,
}

/// Builds `bench`, runs the rounds, prints the table.
pub fn run(args: ModelsBenchArgs) -> Result<()> {
    let [bench] = build_release_bins([("lmq-evals", "bench")])?;
    let mut best = vec![Speed::default(); args.models.len()];
    for round in 0..args.rounds {
        for (m, b) in args.models.iter().zip(best.iter_mut()) {
            let s = ours(&bench, Path::new(m), args.threads, args.reps)?;
            eprintln!("[bench] round {} {m}: {s:?}", round + 1);
            b.pp = b.pp.max(s.pp);
            b.tg = b.tg.max(s.tg);
            b.rss_mib = if b.rss_mib == 0.0 {
                s.rss_mib
            } else {
                b.rss_mib.min(s.rss_mib)
            };
        }
    }
    let base = best.first().copied().unwrap_or_default();
    println!(
        "\n{} thread(s), best of {} rounds × {} reps",
        args.threads, args.rounds, args.reps
    );
    println!("| model | weights MB | pp512 tok/s | tg128 tok/s | tg vs first | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for (m, s) in args.models.iter().zip(&best) {
        let p = Path::new(m);
        let mb = if p.exists() {
            format!("{:.1}", size_bytes(p) as f64 / 1e6)
        } else {
            "-".into()
        };
        println!(
            "| {m} | {mb} | {:.1} | {:.1} | {:.2}× | {:.0} |",
            s.pp,
            s.tg,
            s.tg / base.tg.max(f64::MIN_POSITIVE),
            s.rss_mib
        );
    }
    Ok(())
}
