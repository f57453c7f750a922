//! `medusa-train --model M --out DIR`: Medusa heads trained by self-distillation against M
//! (give the quantized checkpoint to train against the model that will serve them).

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use lmq_quant::medusa_train::{
    train_for_checkpoint, MedusaTrainOptions, DEFAULT_FEATURE_WEIGHT, DEFAULT_HEAD_VOCAB,
};

#[derive(Parser, Debug)]
#[command(name = "medusa-train", version)]
struct Args {
    #[arg(long)]
    model: String,
    /// Directory for `medusa_config.json` and `medusa_heads.safetensors` (default: MODEL/medusa).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// ResBlocks per head.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 96)]
    prompts: usize,
    #[arg(long, default_value_t = 96)]
    answer_tokens: usize,
    /// Tokens the heads may guess: the most frequent in the answers (0: the whole vocabulary).
    #[arg(long, default_value_t = DEFAULT_HEAD_VOCAB)]
    vocab: usize,
    /// Also answer the MT-bench questions `spec-bench` does not ask.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    mt_bench: bool,
    /// With --mt-bench, also answer their second turns (after the first turn and the
    /// model's answer to it; with --answers FILE, kept in FILE's stem + `.turn2.json`).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    second_turns: bool,
    /// Token-aware heads: each also reads the embedding of the token the model chose from the
    /// hidden state (false: Medusa-1 heads).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    token_input: bool,
    /// One recurrent head instead of --heads independent ones: it reads its own state and
    /// the token it guessed to guess the next, trained unrolled --heads positions ahead
    /// (needs --token-input true).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    recurrent: bool,
    /// A recurrent head's loss weight for matching the model's next hidden state.
    #[arg(long, default_value_t = DEFAULT_FEATURE_WEIGHT)]
    feature_weight: f64,
    /// Reuse the distillation answers in FILE (written there the first time), to train
    /// several head settings against one model without answering the prompts again.
    #[arg(long, value_name = "FILE")]
    answers: Option<PathBuf>,
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
    let opts = MedusaTrainOptions {
        heads: a.heads,
        layers: a.layers,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        prompts: a.prompts,
        answer_tokens: a.answer_tokens,
        vocab: a.vocab,
        mt_bench: a.mt_bench,
        second_turns: a.second_turns,
        token_input: a.token_input,
        recurrent: a.recurrent,
        feature_weight: a.feature_weight,
        answers_file: a.answers,
        ..Default::default()
    };
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(&a.model).join("medusa"));
    let report = train_for_checkpoint(&a.model, &out, &opts)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("heads written to {}", out.display());
    Ok(())
}
