//! `bench`: prefill and decode speed of a model on this machine, and peak memory, the figures
//! the spine issue compares with llama.cpp's `llama-bench -p 512 -n 128`.

use std::time::Instant;

use anyhow::Result;
use burn::prelude::*;
use clap::Parser;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::model::Llama;
use lmq_runtime::speculative::pass_cost::measure_pass_costs;
use lmq_runtime::sysinfo::peak_rss_mib;
use lmq_runtime::Cpu;

/// Time prefill of a P-token prompt and decode of N tokens (greedy), like llama-bench.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Args {
    /// A .gguf file, an HF model directory, or a cached asset name.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Prompt tokens for the prefill figure.
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    /// Generated tokens for the decode figure.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Repetitions (the best is reported, as machines here are shared and noisy).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Decode after the prompt instead of from an empty cache (llama-bench's tg starts empty).
    #[arg(long)]
    decode_after_prompt: bool,
    #[arg(long)]
    json: bool,
    /// Instead: time one Medusa verification pass (the tree's rows and their logits) of each
    /// of these row counts after the prompt, against one decode step there. What a tree of
    /// m nodes costs bounds what it can gain: speedup ≤ τ / (pass ÷ step).
    #[arg(long, value_delimiter = ',')]
    tree_rows: Vec<usize>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;
    let ckpt = Checkpoint::open(&args.model)?;
    let device = Default::default();
    let model = ckpt.load_model::<Cpu>(&device)?;
    // A deterministic prompt of real text tokens.
    let text = std::fs::read_to_string(lmq_evals::text::wiki2_path())
        .unwrap_or_else(|_| "hello world ".repeat(400));
    let mut prompt = ckpt
        .tokenizer
        .encode(&text[..text.len().min(20_000)], false)?;
    prompt.truncate(args.prompt);
    anyhow::ensure!(
        prompt.len() == args.prompt,
        "not enough text for a {}-token prompt",
        args.prompt
    );

    if !args.tree_rows.is_empty() {
        return tree_pass_costs(&model, &prompt, &args);
    }
    let (mut best_prefill, mut best_decode) = (0.0f64, 0.0f64);
    for _ in 0..args.reps {
        let mut cache = model.new_cache(args.prompt + args.decode + 1);
        let ids: Vec<i32> = prompt.iter().map(|&x| x as i32).collect();
        let input =
            Tensor::<Cpu, 2, Int>::from_data(TensorData::new(ids, [1, args.prompt]), &device);
        let t0 = Instant::now();
        let logits = model.forward_last(input, Some(&mut cache));
        best_prefill = best_prefill.max(args.prompt as f64 / t0.elapsed().as_secs_f64());
        let mut next = lmq_runtime::sampling::argmax(&logits);
        // Decode as llama-bench's tg: from an empty cache, one token at a time (after the
        // prompt, attention over its positions adds to every step).
        if !args.decode_after_prompt {
            cache = model.new_cache(args.decode + 1);
        }
        let t0 = Instant::now();
        for _ in 0..args.decode {
            let input = Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(vec![next as i32], [1, 1]),
                &device,
            );
            let logits = model.forward_last(input, Some(&mut cache));
            next = lmq_runtime::sampling::argmax(&logits);
        }
        best_decode = best_decode.max(args.decode as f64 / t0.elapsed().as_secs_f64());
    }
    let rss = peak_rss_mib();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"model": ckpt.path, "threads": args.threads, "prefill_tokens": args.prompt,
                "decode_tokens": args.decode, "prefill_tok_s": best_prefill, "decode_tok_s": best_decode, "peak_rss_mib": rss})
        );
    } else {
        println!(
            "| model | threads | pp{} tok/s | tg{} tok/s | peak RSS MiB |",
            args.prompt, args.decode
        );
        println!("|---|---|---|---|---|");
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} |",
            ckpt.path.file_name().unwrap_or_default().to_string_lossy(),
            args.threads,
            best_prefill,
            best_decode,
            rss
        );
    }
    Ok(())
}

/// Prints, per row count m, the best time of a verification pass over m rows plus their
/// logits after `prompt`, and that time in decode steps at the same position.
fn tree_pass_costs(model: &Llama<Cpu>, prompt: &[u32], args: &Args) -> Result<()> {
    let costs = measure_pass_costs(model, prompt, &args.tree_rows, args.reps)
        .map_err(|e| anyhow::anyhow!("--tree-rows: {e}"))?;
    println!(
        "decode step after {} positions: {:.2} ms\n\n| rows | ms | decode steps |",
        costs.position,
        costs.step_seconds * 1e3
    );
    println!("|---|---|---|");
    for &(m, t) in &costs.passes {
        println!("| {m} | {:.2} | {:.2} |", t * 1e3, t / costs.step_seconds);
    }
    Ok(())
}
