//! `medusa-train --model M --out DIR`: Medusa heads trained by self-distillation against M
//! (give the quantized checkpoint to train against the model that will serve them).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmq_quant::medusa_train::{train_medusa, MedusaTrainOptions};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::serve::chat::ChatTemplate;
use lmq_runtime::Cpu;

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
    let tok = &ckpt.tokenizer;
    let name = |id: Option<u32>| {
        id.and_then(|i| tok.id_to_token(i))
            .unwrap_or_default()
            .to_owned()
    };
    let template = ChatTemplate::new(
        ckpt.chat_template
            .as_deref()
            .or(tok.chat_template())
            .context("the model has no chat template")?,
        &name(tok.bos_id()),
        &name(tok.eos_id()),
    )?;
    let mut stop = ckpt.config.eos_token_ids.clone();
    stop.extend(
        ["<|im_end|>", "<|eot_id|>"]
            .iter()
            .filter_map(|t| tok.token_to_id(t)),
    );
    let opts = MedusaTrainOptions {
        heads: a.heads,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        prompts: a.prompts,
        answer_tokens: a.answer_tokens,
        ..Default::default()
    };
    let (heads, report) = train_medusa(&model, tok, &template, &stop, &opts)?;
    let out = a.out.unwrap_or_else(|| ckpt.path.join("medusa"));
    heads.save(&out)?;
    std::fs::write(
        out.join("medusa_train_report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("heads written to {}", out.display());
    Ok(())
}
