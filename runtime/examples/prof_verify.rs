//! Where a speculative verification step's time goes, against a plain decode step at the
//! same context length: the pass over `1 + k` rows, their vocabulary logits, the host
//! copies, and the Medusa heads' guess. What a step costs in decode steps decides whether a
//! proposer with a given τ can win on this machine.
//! `cargo run --release -p lmq-runtime --example prof_verify -- MODEL HEADS_DIR [CONTEXT] [THREADS]`

use lmq_runtime::burn::prelude::*;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::generate::host_f32;
use lmq_runtime::medusa::{HeadProjection, MedusaHeads};
use lmq_runtime::Cpu;
use std::path::Path;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "smollm2".into());
    let heads_dir = args.next().expect("heads directory");
    let context: usize = args.next().map_or(300, |t| t.parse().expect("context"));
    let threads: usize = args.next().map_or(2, |t| t.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let ckpt = Checkpoint::open(&spec).unwrap();
    let m = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let heads = MedusaHeads::load(Path::new(&heads_dir)).unwrap();
    let projection = HeadProjection::new(&m, &heads);
    let dev = Default::default();
    let ids = |t: &[u32]| {
        let v: Vec<i32> = t.iter().map(|&x| x as i32).collect();
        Tensor::<Cpu, 2, Int>::from_data(TensorData::new(v, [1, t.len()]), &dev)
    };
    let mut cache = m.new_cache(context + 64);
    let prompt: Vec<u32> = (0..context as u32).map(|i| 100 + (i * 37) % 5000).collect();
    let _ = m.forward_last(ids(&prompt), Some(&mut cache));
    let reps = 20;
    let rounds = 5;
    let best = |f: &mut dyn FnMut()| {
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    let plain = best(&mut || {
        let _ = m.forward_last(ids(&[7]), Some(&mut cache));
        cache.truncate(context);
    });
    println!("model {spec}, {threads} threads, context {context}");
    println!("plain decode step          {:7.3} ms", plain * 1e3);
    // `PROF_ROWS=m`: only passes of m rows, for a minute (to profile under `perf`).
    if let Some(rows) = std::env::var("PROF_ROWS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let toks: Vec<u32> = (0..rows as u32).map(|i| 7 + i).collect();
        let t = Instant::now();
        let mut n = 0;
        while t.elapsed().as_secs() < 30 {
            let h = m.forward_hidden(ids(&toks), Some(&mut cache));
            std::hint::black_box(host_f32(m.logits(h)));
            cache.truncate(context);
            n += 1;
        }
        println!(
            "{rows} rows: {:.3} ms a pass",
            t.elapsed().as_secs_f64() * 1e3 / n as f64
        );
        return;
    }
    let h0 = vec![0.5f32; m.config.hidden_size];
    for rows in [1usize, 2, 3, 5] {
        let toks: Vec<u32> = (0..rows as u32).map(|i| 7 + i).collect();
        let mut hidden_t = 0.0;
        let mut logits_t = 0.0;
        let whole = best(&mut || {
            let t = Instant::now();
            let h = m.forward_hidden(ids(&toks), Some(&mut cache));
            let hh = host_f32(h.clone());
            hidden_t += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let l = host_f32(m.logits(h));
            logits_t += t.elapsed().as_secs_f64();
            cache.truncate(context);
            std::hint::black_box((hh, l));
        });
        let n = (reps * rounds) as f64;
        println!(
            "verify {rows} row(s): whole {:7.3} ms = {:.2} steps (pass {:.3} ms, logits {:.3} ms, means)",
            whole * 1e3,
            whole / plain,
            hidden_t / n * 1e3,
            logits_t / n * 1e3
        );
    }
    for k in 1..=heads.config.num_heads {
        let t = best(&mut || {
            std::hint::black_box(projection.best_with_prob(&m, &heads, &h0, 0, k));
        });
        println!(
            "heads' guesses, k {k}: {:7.3} ms = {:.3} steps",
            t * 1e3,
            t / plain
        );
    }
}
