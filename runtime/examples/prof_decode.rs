//! Where one decode step's time goes: the whole cached step against the same step's linears
//! run back to back (each through `LinearBackend::apply_linear`, as the model calls them).
//! The difference is everything else: norms, RoPE, attention, burn's op dispatch, copies and
//! thread hand-offs. `cargo run --release -p lmq-runtime --example prof_decode -- [MODEL] [THREADS]`

use lmq_runtime::burn::prelude::*;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::model::{HostWeight, LinearBackend};
use lmq_runtime::Cpu;
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let spec = args.next().unwrap_or_else(|| "smollm2".into());
    let threads: usize = args.next().map_or(2, |t| t.parse().expect("threads"));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let ckpt = Checkpoint::open(&spec).unwrap();
    let m = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let dev = Default::default();
    let reps = 40;
    let rounds = 6;
    // Best of `rounds` batches of `reps`: these machines are shared and noisy.
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

    let mut cache = m.new_cache(reps * rounds + 32);
    let step = |cache: &mut _| {
        let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![5i32], [1, 1]), &dev);
        m.forward_last(ids, Some(cache))
    };
    for _ in 0..20 {
        step(&mut cache);
    }
    let whole = best(&mut || {
        step(&mut cache);
    });

    let mut weights = Vec::new();
    for l in &m.layers {
        let a = &l.self_attn;
        for p in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
            weights.push(&p.weight);
        }
        for p in [&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj] {
            weights.push(&p.weight);
        }
    }
    weights.push(m.lm_head.as_ref().map_or(&m.embed_tokens, |h| &h.weight));
    let xs: Vec<_> = weights
        .iter()
        .map(|w| Tensor::<Cpu, 2>::ones([1, Cpu::weight_dims(w).1], &dev))
        .collect();
    let linears = best(&mut || {
        for (w, x) in weights.iter().zip(&xs) {
            let _ = Cpu::apply_linear(x.clone(), w);
        }
    });
    let hx: Vec<Vec<f32>> = weights
        .iter()
        .map(|w| vec![1.0f32; Cpu::weight_dims(w).1])
        .collect();
    let kernels = best(&mut || {
        for (w, x) in weights.iter().zip(&hx) {
            let _ = host_linear(x, w);
        }
    });
    // Dense weights' kernels on the checkpoint's row-major layout, for comparison with the
    // panel layout they are held in.
    let row_major: Vec<Option<(Vec<f32>, usize, usize)>> = weights
        .iter()
        .map(|w| match w {
            HostWeight::Dense(d) => Some((d.to_row_major(), d.out_features, d.in_features)),
            _ => None,
        })
        .collect();
    let kernels_rm = best(&mut || {
        for ((w, x), rm) in weights.iter().zip(&hx).zip(&row_major) {
            match rm {
                Some((data, n, k)) => {
                    let _ = lmq_runtime::kernels::matmul_f32_nt(x, data, 1, *k, *n);
                }
                None => {
                    let _ = host_linear(x, w);
                }
            }
        }
    });
    let head = weights.last().unwrap();
    let head_t = best(&mut || {
        let _ = Cpu::apply_linear(xs.last().unwrap().clone(), head);
    });
    // Each kind of projection across all layers (7 kinds, in the model's order).
    let kinds = ["q", "k", "v", "o", "gate", "up", "down"];
    let mut per_kind = Vec::new();
    for (j, name) in kinds.iter().enumerate() {
        let t = best(&mut || {
            for (w, x) in weights
                .iter()
                .zip(&hx)
                .skip(j)
                .step_by(7)
                .take(m.layers.len())
            {
                let _ = host_linear(x, w);
            }
        });
        let (n, k) = Cpu::weight_dims(weights[j]);
        per_kind.push(format!(
            "{name} [{n}×{k}] {:.1} µs",
            t * 1e6 / m.layers.len() as f64
        ));
    }
    println!("per call: {}", per_kind.join(", "));
    println!("model {spec}, {threads} threads");
    println!(
        "whole decode step   {:8.3} ms  ({:.1} tok/s)",
        whole * 1e3,
        1.0 / whole
    );
    println!(
        "its {} linears     {:8.3} ms  (lm_head {:.3} ms)",
        weights.len(),
        linears * 1e3,
        head_t * 1e3
    );
    println!("same, kernels only  {:8.3} ms", kernels * 1e3);
    println!("same, row-major f32 {:8.3} ms", kernels_rm * 1e3);
    println!("everything else     {:8.3} ms", (whole - linears) * 1e3);
}

fn host_linear(x: &[f32], w: &HostWeight) -> Vec<f32> {
    use lmq_runtime::kernels::{
        int8::matmul_i8_nt, matmul_panel_nt, onebit::matmul_onebit_nt, packed_q::matmul_packed_nt,
    };
    match w {
        HostWeight::Dense(d) => matmul_panel_nt(x, &d.panels, 1),
        HostWeight::Packed(p) => matmul_packed_nt(x, p, 1),
        HostWeight::Int8(w) => matmul_i8_nt(x, w, 1),
        HostWeight::OneBit(w) => matmul_onebit_nt(x, w, 1),
    }
}
