//! `medusa-score --model M --heads DIR`: how often Medusa heads guess right, depth by depth,
//! on M's own greedy answers to the MT-bench questions `spec-bench` asks. `medusa-train`
//! scores its held-out distillation answers; this scores the answers served guesses meet,
//! to tell a head that is weak from one that was trained on other text.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmq_quant::medusa_train::score_on_benchmark;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::medusa::MedusaHeads;
use lmq_runtime::serve::chat::{chat_stop_ids, checkpoint_template};
use lmq_runtime::Cpu;

#[derive(Parser, Debug)]
#[command(name = "medusa-score", version)]
struct Args {
    #[arg(long)]
    model: String,
    /// Directory with `medusa_config.json` and `medusa_heads.safetensors` (default: MODEL/medusa).
    #[arg(long)]
    heads: Option<PathBuf>,
    /// Tokens the model answers each question with (spec-bench's `--max-new`).
    #[arg(long, default_value_t = 128)]
    answer_tokens: usize,
    /// Depths scored (default: the heads' count; a recurrent head's unrolled steps).
    #[arg(long)]
    depth: Option<usize>,
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build_global()?;
    let ckpt = Checkpoint::open(&a.model)?;
    let model = ckpt.load_model::<Cpu>(&Default::default())?;
    let template = checkpoint_template(&ckpt)?.context("the model has no chat template")?;
    let dir = a
        .heads
        .unwrap_or_else(|| PathBuf::from(&a.model).join("medusa"));
    let heads = MedusaHeads::load(&dir)?;
    anyhow::ensure!(
        heads.config.hidden_size == model.config.hidden_size,
        "Medusa heads in {} are for hidden size {}, the model's is {}",
        dir.display(),
        heads.config.hidden_size,
        model.config.hidden_size
    );
    let depth = a.depth.unwrap_or(heads.config.num_heads);
    anyhow::ensure!(
        depth >= 1 && (heads.config.recurrent || depth <= heads.config.num_heads),
        "--depth {depth}: {} has {} head(s)",
        dir.display(),
        heads.config.num_heads
    );
    let stop = chat_stop_ids(&ckpt);
    let score = score_on_benchmark(
        &model,
        &ckpt.tokenizer,
        &template,
        &stop,
        &heads,
        a.answer_tokens,
        depth,
    )?;
    println!("{}", serde_json::to_string_pretty(&score)?);
    Ok(())
}
