//! `generate --model M --prompt TEXT`: a completion from the command line (greedy by default).

use std::io::Write;

use anyhow::{bail, Result};
use clap::Parser;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::{run_on, DeviceSpec, OnBackend};
use lmq_runtime::generate::generate;
use lmq_runtime::medusa::tree::{DEFAULT_CHOICES, SMALL_CHOICES};
use lmq_runtime::medusa::{generate_medusa_with, Acceptance, MedusaHeads, Tree, Typical};
use lmq_runtime::model::LinearBackend;
use lmq_runtime::sampling::SamplingParams;
use lmq_runtime::speculative::choose::{proposer_with, ProposerOptions, DEFAULT_DRAFT_P_MIN};
use lmq_runtime::speculative::generate_speculative;

/// Generate a continuation of a prompt.
#[derive(Parser, Debug)]
#[command(name = "generate", version)]
struct Args {
    /// A .gguf file, an HF model directory, or a cached asset name (smollm2, qwen-0.5b, qwen-1.5b).
    #[arg(long)]
    model: String,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the generated token ids as JSON instead of text.
    #[arg(long)]
    ids: bool,
    /// off, lookup[:MIN_NGRAM], draft:MODEL, early-exit:LAYERS or medusa[:DIR] (heads in
    /// DIR, default MODEL/medusa) for speculative decoding: same output when greedy, the same
    /// distribution when sampling. `X@K` proposes at most K tokens a step; `X~P` (a draft or
    /// Medusa) proposes only guesses it gives probability P or more; `A+B` takes A's guess
    /// where it has one, else B's (`lookup:2+medusa` was the fastest on SmolLM2 f32,
    /// `lookup:3@2` on its 4-bit AWQ form).
    #[arg(long, default_value = "off")]
    speculative: String,
    /// Tokens proposed per speculative step.
    #[arg(long, default_value_t = 4)]
    speculative_k: usize,
    /// `draft:`/`early-exit:` stop guessing after a token the draft gave less than this
    /// probability (llama.cpp's `--draft-p-min`).
    #[arg(long, default_value_t = DEFAULT_DRAFT_P_MIN)]
    draft_p_min: f64,
    /// `--speculative medusa-tree[:DIR]` (a candidate tree instead of a chain) with sampling:
    /// Medusa's typical acceptance, posterior threshold ε (it accepts more than exact
    /// rejection sampling, and does not keep the model's exact distribution).
    #[arg(long, default_value_t = 0.09)]
    typical_threshold: f64,
    /// Typical acceptance's α (the bar is min(ε, α·exp(−entropy))).
    #[arg(long, default_value_t = 0.3)]
    typical_alpha: f64,
    /// `cpu`, or `cuda[:N]` (a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let ckpt = Checkpoint::open(&args.model)?;
    run_on(
        args.device,
        Generate {
            args: &args,
            ckpt: &ckpt,
        },
    )?
}

/// The completion on whichever backend `--device` picks.
struct Generate<'a> {
    args: &'a Args,
    ckpt: &'a Checkpoint,
}

impl OnBackend for Generate<'_> {
    type Output = Result<()>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Result<()> {
        complete::<B>(self.args, self.ckpt, device)
    }
}

fn complete<B: LinearBackend>(args: &Args, ckpt: &Checkpoint, device: B::Device) -> Result<()> {
    let model = ckpt.load_model::<B>(&device)?;
    let prompt = ckpt.tokenizer.encode(&args.prompt, true)?;
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    let stop = ckpt.config.eos_token_ids.clone();
    let mut shown = 0usize;
    let mut so_far = Vec::new();
    let tok = &ckpt.tokenizer;
    // Heads and drafts are read before the prompt is echoed, so bad ones end in the error
    // line alone.
    let tree_heads = match args.speculative.strip_prefix("medusa-tree") {
        Some(rest) => Some(medusa_tree(rest, &ckpt.path, model.config.hidden_size)?),
        None => None,
    };
    let mut proposer = match tree_heads {
        Some(_) => None,
        None => {
            let opts = ProposerOptions {
                draft_p_min: args.draft_p_min,
                ..Default::default()
            };
            proposer_with(&args.speculative, &opts, &model, &ckpt.path, &device)?
        }
    };
    if !args.ids {
        print!("{}", args.prompt);
    }
    let on_token = |t: u32| {
        if args.ids {
            return;
        }
        so_far.push(t);
        // Print only whole characters: decode everything and emit the new suffix.
        if let Ok(text) = tok.decode(&so_far, true) {
            if text.len() > shown && !text.ends_with('\u{fffd}') {
                print!("{}", &text[shown..]);
                let _ = std::io::stdout().flush();
                shown = text.len();
            }
        }
    };
    let out = match proposer.as_deref_mut() {
        None if tree_heads.is_some() => {
            let (heads, tree) = tree_heads.as_ref().expect("checked");
            let acceptance = if params.temperature <= 0.0 {
                Acceptance::Greedy
            } else {
                Acceptance::Typical {
                    params,
                    typical: Typical {
                        threshold: args.typical_threshold,
                        alpha: args.typical_alpha,
                    },
                }
            };
            let (out, stats) = generate_medusa_with(
                &model,
                heads,
                tree,
                &acceptance,
                &prompt,
                args.max_tokens,
                &stop,
                on_token,
            )?;
            eprintln!(
                "\n[medusa tree of {} nodes: {} steps, τ {:.2}]",
                tree.len(),
                stats.steps,
                stats.tau()
            );
            out
        }
        None => generate(&model, &prompt, args.max_tokens, params, &stop, on_token)?,
        Some(p) => {
            let (out, stats) = generate_speculative(
                &model,
                p,
                &prompt,
                args.max_tokens,
                args.speculative_k,
                params,
                &stop,
                on_token,
            )?;
            eprintln!(
                "\n[speculative {}: {} steps, τ {:.2}, acceptance {:.2}]",
                args.speculative,
                stats.steps,
                stats.tau(),
                stats.acceptance()
            );
            out
        }
    };
    if args.ids {
        println!(
            "{}",
            serde_json::json!({"prompt_ids": prompt, "generated_ids": out})
        );
    } else {
        println!();
    }
    Ok(())
}

/// Heads and the default candidate tree for `--speculative medusa-tree[:DIR]` (`rest` is what
/// follows `medusa-tree`; DIR defaults to MODEL/medusa).
fn medusa_tree(
    rest: &str,
    model_dir: &std::path::Path,
    hidden_size: usize,
) -> Result<(MedusaHeads, Tree)> {
    let dir = match rest.strip_prefix(':') {
        Some(d) => std::path::PathBuf::from(d),
        None if rest.is_empty() => model_dir.join("medusa"),
        None => bail!("unknown --speculative `medusa-tree{rest}`: use medusa-tree[:DIR]"),
    };
    let heads = MedusaHeads::load_for(&dir, hidden_size)?;
    let choices = if heads.config.num_heads >= 4 {
        DEFAULT_CHOICES
    } else {
        SMALL_CHOICES
    };
    let tree =
        Tree::for_heads(choices, &heads).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    Ok((heads, tree))
}
