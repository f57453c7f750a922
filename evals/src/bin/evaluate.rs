//! `evaluate --model M --ppl wiki2`: perplexity of a checkpoint on a text file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lmq_evals::perplexity::{perplexity, PplOptions};
use lmq_evals::text;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::weights::DequantizedSource;
use lmq_runtime::Cpu;

/// Perplexity of a model on a text, GPTQ-paper protocol (non-overlapping windows, whole text
/// tokenized once without BOS, remainder dropped). Token-level perplexity: not comparable
/// with lm-eval's word/byte perplexity nor with llama.cpp's (which scores half of each chunk).
#[derive(Parser, Debug)]
#[command(name = "evaluate", version)]
struct Args {
    /// A .gguf file, an HF model directory, or a cached asset name (smollm2, qwen-0.5b, qwen-1.5b).
    #[arg(long)]
    model: String,
    /// `wiki2` (WikiText-2 raw test from ../shared/data) or a path to any text file.
    #[arg(long)]
    ppl: String,
    /// Window length in tokens.
    #[arg(long, default_value_t = 2048)]
    seqlen: usize,
    /// Evaluate only the first N windows (quick runs).
    #[arg(long)]
    max_windows: Option<usize>,
    /// Print the report as JSON on stdout (per-window NLL sums included).
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run packed (quantized) linears as dense f32, dequantized on load by the packed
    /// format's scalar reference: the check that the packed kernels compute the same model.
    #[arg(long)]
    dequantize: bool,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let mut ckpt = Checkpoint::open(&args.model)?;
    if args.dequantize {
        ckpt.weights = Box::new(DequantizedSource::new(ckpt.weights));
    }
    let text_path: PathBuf = text::resolve(&args.ppl);
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("{}: cannot read evaluation text", text_path.display()))?;
    let device = Default::default();
    let model = ckpt.load_model::<Cpu>(&device)?;
    let ids = ckpt.tokenizer.encode(&text, false)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {bar:40} {pos}/{len} windows (eta {eta})",
        )
        .expect("valid template"),
    );
    bar.set_message(format!("ppl {}", args.ppl));
    let opts = PplOptions {
        seqlen: args.seqlen,
        max_windows: args.max_windows,
    };
    let report = perplexity(&model, &ids, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["model"] = serde_json::json!(ckpt.path.display().to_string());
        v["text"] = serde_json::json!(text_path.display().to_string());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model      {}", ckpt.path.display());
        println!(
            "text       {} ({} tokens, ids sha256 {})",
            text_path.display(),
            report.tokens,
            report.ids_sha256
        );
        println!(
            "windows    {} × {} ({} predicted tokens) in {:.1} s",
            report.windows, report.seqlen, report.predicted_tokens, report.seconds
        );
        println!("perplexity {:.4}", report.ppl);
    }
    Ok(())
}
