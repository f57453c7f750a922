//! `quantize --model M --recipe R --out DIR`: applies a recipe and writes an HF directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lmq_quant::convert::{convert, ConvertOptions};
use lmq_quant::recipe::Recipe;
use lmq_quant::rtn_checkpoint::quantize_rtn;
use lmq_runtime::checkpoint::Checkpoint;

/// Quantize or convert a checkpoint according to a recipe.
#[derive(Parser, Debug)]
#[command(name = "quantize", version)]
struct Args {
    /// A .gguf file, an HF model directory, or a cached asset name (smollm2, qwen-0.5b, qwen-1.5b).
    #[arg(long)]
    model: String,
    /// Recipe YAML (see recipes/).
    #[arg(long)]
    recipe: PathBuf,
    /// Output directory (created atomically).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let recipe = Recipe::from_file(&args.recipe)?;
    let recipe_text = recipe.text.clone();
    let ckpt = Checkpoint::open(&args.model)?;
    let bar = ProgressBar::new(ckpt.weights.names().len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "writing [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    )?);
    let opts = ConvertOptions {
        dtype: recipe.output.dtype,
        force: args.force,
        recipe: Some(recipe_text),
    };
    let started = std::time::Instant::now();
    let progress = |name: &str| {
        bar.inc(1);
        bar.set_message(name.to_owned());
    };
    if recipe.is_conversion() {
        let out = convert(&ckpt, &args.out, &opts, progress)?;
        bar.finish_and_clear();
        println!("wrote {}", out.display());
    } else {
        let s = quantize_rtn(&ckpt, &recipe, &args.out, &opts, progress)?;
        bar.finish_and_clear();
        println!(
            "wrote {}: {} linears quantized, model.safetensors {:.1} MB, {:.1} s",
            s.out.display(),
            s.quantized_tensors,
            s.bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
