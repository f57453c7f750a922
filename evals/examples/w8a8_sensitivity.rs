//! How much W8A8 perplexity moves when the activations move by float noise: scales every
//! RMSNorm weight by (1 + ε·u), u uniform in [−1, 1], and recomputes wiki2 perplexity on the
//! CPU. Per-token int8 activation codes flip where a value sits near a rounding boundary, so
//! W8A8 amplifies differences (another summation order, TF32 matmuls on a GPU) that leave an
//! f32 model's perplexity unchanged.
//!
//! `cargo run --release -p lmq-evals --example w8a8_sensitivity -- MODEL [WINDOWS]`

use burn::prelude::*;
use lmq_evals::perplexity::{perplexity, PplOptions};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::Cpu;
use rand::{Rng, SeedableRng};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map_or("smollm2", String::as_str);
    let windows: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let ckpt = Checkpoint::open(spec)?;
    let text = std::fs::read_to_string(lmq_evals::text::wiki2_path())?;
    let ids = ckpt.tokenizer.encode(&text, false)?;
    let opts = PplOptions {
        seqlen: 512,
        max_windows: Some(windows),
        through_decode: false,
    };
    println!("| ε | ppl |\n|---|---|");
    for eps in [0.0f32, 1e-6, 1e-5, 1e-4] {
        let mut model = ckpt.load_model::<Cpu>(&Default::default())?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut jitter = |w: &Tensor<Cpu, 1>| -> Tensor<Cpu, 1> {
            let d = w.dims()[0];
            let f: Vec<f32> = (0..d)
                .map(|_| 1.0 + eps * rng.gen_range(-1.0f32..1.0))
                .collect();
            w.clone() * Tensor::<Cpu, 1>::from_data(TensorData::new(f, [d]), &w.device())
        };
        for layer in &mut model.layers {
            layer.input_layernorm = jitter(&layer.input_layernorm);
            layer.post_attention_layernorm = jitter(&layer.post_attention_layernorm);
        }
        model.norm = jitter(&model.norm);
        let r = perplexity(&model, &ids, &opts, |_, _| {})?;
        println!("| {eps:e} | {:.4} |", r.ppl);
    }
    Ok(())
}
