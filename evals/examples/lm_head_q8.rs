//! What an 8-bit vocabulary projection would buy a small model's CPU decode (issue #8): the
//! tied 49152×576 f32 embedding doubles as SmolLM2's lm_head, 113 MB read per token, more
//! than all the 4-bit layers together. This loads a checkpoint, swaps in an int8 per-row RTN
//! copy of that matrix as the lm_head (the embedding lookup stays exact), and prints decode
//! tokens/s and wiki2 perplexity side by side. An experiment, not a product option.
//!
//! `cargo run --release -p lmq-evals --example lm_head_q8 -- MODEL [THREADS]`

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use lmq_evals::perplexity::{perplexity, PplOptions};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::generate::last_logits;
use lmq_runtime::model::{HostWeight, Linear, Llama};
use lmq_runtime::packed::PackedLinear;
use lmq_runtime::sampling::argmax;
use lmq_runtime::Cpu;

/// Best decode tokens/s over 3 runs of 128 greedy tokens after a 512-token prompt.
fn decode_tok_s(model: &Llama<Cpu>, prompt: &[u32]) -> f64 {
    let device = model.device();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let mut cache = model.new_cache(prompt.len() + 130);
        let ids: Vec<i32> = prompt.iter().map(|&x| x as i32).collect();
        let input =
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, prompt.len()]), &device);
        let mut next = argmax(&last_logits(model.forward(input, Some(&mut cache))));
        let t0 = Instant::now();
        for _ in 0..128 {
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(vec![next as i32], [1, 1]),
                &device,
            );
            next = argmax(&last_logits(model.forward(input, Some(&mut cache))));
        }
        best = best.max(128.0 / t0.elapsed().as_secs_f64());
    }
    best
}

/// Per-row symmetric int8 RTN of `[rows, cols]` as a packed 8-bit weight.
fn int8_rows(data: &[f32], rows: usize, cols: usize) -> PackedLinear {
    let mut codes = vec![0i8; rows * cols];
    let mut scale = vec![0.0f32; rows];
    for r in 0..rows {
        let row = &data[r * cols..(r + 1) * cols];
        let amax = row.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        scale[r] = s;
        for (c, &v) in row.iter().enumerate() {
            codes[r * cols + c] = (v / s).round().clamp(-128.0, 127.0) as i8;
        }
    }
    PackedLinear::from_codes(8, rows, cols, cols, &codes, scale, None, None)
        .expect("valid int8 rows")
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map_or("smollm2", String::as_str);
    let threads: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let ckpt = Checkpoint::open(spec)?;
    let text = std::fs::read_to_string(lmq_evals::text::wiki2_path())?;
    let ids = ckpt.tokenizer.encode(&text, false)?;
    let opts = PplOptions {
        seqlen: 512,
        max_windows: Some(20),
        through_decode: false,
    };
    let base = ckpt.load_model::<Cpu>(&Default::default())?;
    anyhow::ensure!(
        base.lm_head.is_none(),
        "{spec}: lm_head is not tied to the embedding"
    );
    let HostWeight::Dense(embed) = &base.embed_tokens else {
        anyhow::bail!("{spec}: the embedding is not dense f32");
    };
    let mut q8 = base.clone();
    q8.lm_head = Some(Linear {
        weight: HostWeight::Packed(Arc::new(int8_rows(
            &embed.to_row_major(),
            embed.out_features,
            embed.in_features,
        ))),
        bias: None,
    });
    println!("| lm_head | decode tok/s ({threads} threads) | wiki2 ppl 20 × 512 |\n|---|---|---|");
    for (label, model) in [("f32 (tied embedding)", &base), ("int8 per row", &q8)] {
        let tg = decode_tok_s(model, &ids[..512]);
        let ppl = perplexity(model, &ids, &opts, |_, _| {})?.ppl;
        println!("| {label} | {tg:.1} | {ppl:.4} |");
    }
    Ok(())
}
