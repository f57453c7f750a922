//! Per-component decode timings on SmolLM2 (tied lm_head GEMV, one linear, one cached
//! step), for profiling the decode path: `cargo run --release -p lmq-runtime --example prof_decode`.

use lmq_runtime::burn::prelude::*;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;
use std::time::Instant;

fn main() {
    let ckpt = Checkpoint::open("smollm2").unwrap();
    let m = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    let dev = Default::default();
    let x = Tensor::<Cpu, 3>::ones([1, 1, 576], &dev);
    let t = Instant::now();
    for _ in 0..20 {
        let _ = m.logits(x.clone()).into_data();
    }
    println!("tied lm_head: {:?}", t.elapsed() / 20);
    let l = &m.layers[0];
    let t = Instant::now();
    for _ in 0..100 {
        let _ = l.mlp.gate_proj.forward(x.clone()).into_data();
    }
    println!("gate_proj: {:?}", t.elapsed() / 100);
    let t = Instant::now();
    for _ in 0..100 {
        let _ = l.self_attn.q_proj.forward(x.clone()).into_data();
    }
    println!("q_proj: {:?}", t.elapsed() / 100);
    let mut cache = m.new_cache(64);
    let ids = Tensor::<Cpu, 2, Int>::from_data(TensorData::new(vec![5i32], [1, 1]), &dev);
    let t = Instant::now();
    for _ in 0..10 {
        let _ = m.forward_hidden(ids.clone(), Some(&mut cache)).into_data();
    }
    println!("hidden step: {:?}", t.elapsed() / 10);
}
