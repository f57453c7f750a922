//! `medusa-score --model M --heads DIR`: how often Medusa heads guess right, depth by depth,
//! on M's own greedy answers to the MT-bench questions `spec-bench` asks. `medusa-train`
//! scores its held-out distillation answers; this scores the answers served guesses meet,
//! to tell a head that is weak from one that was trained on other text. With
//! `--pass-costs` it also times verification passes on this machine and prints the ceiling
//! of each tree size and of a perfectly gated chain (`lmq_quant::medusa_bound`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmq_quant::medusa_bound::speedup_bounds;
use lmq_quant::medusa_train::{benchmark_answers, score_answers};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::medusa::MedusaHeads;
use lmq_runtime::serve::chat::{chat_stop_ids, checkpoint_template};
use lmq_runtime::speculative::pass_cost::measure_pass_costs;
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
    /// Also time verification passes after this many tokens of the answers and print the
    /// speedup ceilings they and the score give.
    #[arg(long)]
    pass_costs: Option<usize>,
    /// Repetitions per timed pass (the best is kept; machines here are shared and noisy).
    #[arg(long, default_value_t = 10)]
    reps: usize,
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
    let heads = MedusaHeads::load_for(&dir, model.config.hidden_size)?;
    let depth = a.depth.unwrap_or(heads.config.num_heads);
    anyhow::ensure!(
        depth >= 1 && (heads.config.recurrent || depth <= heads.config.num_heads),
        "--depth {depth}: {} has {} head(s)",
        dir.display(),
        heads.config.num_heads
    );
    let stop = chat_stop_ids(&ckpt);
    let answers = benchmark_answers(&model, &ckpt.tokenizer, &template, &stop, a.answer_tokens)?;
    let score = score_answers(&model, &heads, &answers, depth);
    let Some(position) = a.pass_costs else {
        println!("{}", serde_json::to_string_pretty(&score)?);
        return Ok(());
    };
    // The rows of every best tree and of a chain cut anywhere, after real answer tokens.
    let mut rows: Vec<usize> = (1..=depth + 1)
        .chain(score.best_trees.iter().map(|t| t.nodes))
        .filter(|&m| m <= 64)
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let text: Vec<u32> = answers.seqs.concat().into_iter().take(position).collect();
    let costs = measure_pass_costs(&model, &text, &rows, a.reps)
        .map_err(|e| anyhow::anyhow!("--pass-costs {position}: {e}"))?;
    let bounds = speedup_bounds(&score, &costs);
    let out = serde_json::json!({ "score": score, "pass_costs": costs, "bounds": bounds });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
