//! Prefill speed of the pipeline's host-side layer forward vs the runtime's burn model on one
//! 512-token window of SmolLM2 (what perplexity evaluation spends its time on).

use std::time::Instant;

use lmq_quant::pipeline::layer::{rms_norm, HostLayer, LayerGeometry};
use lmq_runtime::burn::prelude::*;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::kernels::matmul_f32_nt;
use lmq_runtime::Cpu;

fn main() {
    let ckpt = Checkpoint::open("smollm2").unwrap();
    let c = &ckpt.config;
    let t = 512;
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919) % 49152).collect();
    let layers: Vec<HostLayer> = (0..c.num_layers)
        .map(|i| HostLayer::load(&*ckpt.weights, c, i).unwrap())
        .collect();
    let embed = ckpt.weights.load_f32("model.embed_tokens.weight").unwrap();
    let norm = ckpt.weights.load_f32("model.norm.weight").unwrap();
    let g = LayerGeometry::new(c, t);
    let model = ckpt.load_model::<Cpu>(&Default::default()).unwrap();
    for rep in 0..3 {
        let t0 = Instant::now();
        let d = c.hidden_size;
        let mut x: Vec<f32> = ids
            .iter()
            .flat_map(|&i| embed[i as usize * d..][..d].to_vec())
            .collect();
        for l in &layers {
            x = l.forward(&g, &x);
        }
        let xn = rms_norm(&x, &norm, c.rms_norm_eps as f32);
        let logits = matmul_f32_nt(&xn, &embed, t, d, c.vocab_size);
        let host = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let input = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&v| v as i32).collect::<Vec<_>>(), [1, t]),
            &Default::default(),
        );
        let l2 = model
            .forward(input, None)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let burn = t1.elapsed().as_secs_f64();
        let diff = logits
            .iter()
            .zip(&l2)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        println!(
            "rep {rep}: host {:.0} tok/s, burn {:.0} tok/s, max |Δlogit| {diff:.2e}",
            t as f64 / host,
            t as f64 / burn
        );
    }
}
