//! `spec-bench`: Spec-Bench-style table for speculative decoding. For the first turn of MT-bench
//! questions (8 categories), rendered with the target's chat template, greedy, batch 1: mean
//! tokens per target step τ and wall-clock speedup over the runtime's own autoregressive
//! decoding, measured side by side (each question runs plain, then speculative).
//!
//! Proposers: `lookup` (prompt lookup), `draft:M` (model M as the draft, e.g. `qwen-0.5b` for
//! `--model qwen-1.5b`), `early-exit:N` (the target's first N layers as its own draft).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::generate::generate;
use lmq_runtime::medusa::tree::{DEFAULT_CHOICES, SMALL_CHOICES};
use lmq_runtime::medusa::{generate_medusa, MedusaHeads, Tree};
use lmq_runtime::model::Llama;
use lmq_runtime::sampling::SamplingParams;
use lmq_runtime::serve::chat::{chat_stop_ids, checkpoint_template, ChatMessage};
use lmq_runtime::speculative::choose::{proposer_with, ProposerOptions, DEFAULT_DRAFT_P_MIN};
use lmq_runtime::speculative::{generate_speculative, mt_bench, Proposer, SpecStats};
use lmq_runtime::Cpu;
use std::path::Path;

#[derive(Parser, Debug)]
#[command(name = "spec-bench", version)]
struct Args {
    /// Target model.
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Proposers, comma-separated: lookup, draft:M, early-exit:N, medusa:DIR (tree
    /// verification), medusa-chain:DIR (the heads' guesses as a chain, as served: one a
    /// step, when head 1 gives it 0.45 or more), or any `--speculative` form (`X@K`, `X~P`,
    /// `A+B`).
    #[arg(long, value_delimiter = ',', default_value = "lookup")]
    proposers: Vec<String>,
    /// Questions per category (the first ones).
    #[arg(long, default_value_t = 2)]
    per_category: usize,
    #[arg(long, default_value_t = 128)]
    max_new: usize,
    /// Proposed tokens per step.
    #[arg(long, default_value_t = 4)]
    k: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Medusa candidate tree: `default` (24 nodes) or `small` (8 nodes).
    #[arg(long, default_value = "small")]
    tree: String,
    /// A draft model stops guessing after a token it gave less than this probability.
    #[arg(long, default_value_t = DEFAULT_DRAFT_P_MIN)]
    draft_p_min: f64,
}

/// Totals for one (proposer, category) cell.
#[derive(Default, Clone, Copy)]
struct Cell {
    plain_s: f64,
    spec_s: f64,
    stats: SpecStats,
    tokens: usize,
}

impl Cell {
    fn add(&mut self, o: &Cell) {
        self.plain_s += o.plain_s;
        self.spec_s += o.spec_s;
        self.tokens += o.tokens;
        self.stats += o.stats;
    }
}

/// A proposer, or Medusa heads with their tree (verified by tree attention instead).
enum Method {
    Proposer(Box<dyn Proposer + Send>),
    Medusa(MedusaHeads, Tree),
}

impl Method {
    fn of(
        spec: &str,
        target: &Llama<Cpu>,
        dir: &Path,
        tree: &str,
        opts: &ProposerOptions,
    ) -> Result<Self> {
        if let Some(dir) = spec.strip_prefix("medusa:") {
            let heads = MedusaHeads::load_for(Path::new(dir), target.config.hidden_size)?;
            let choices = if tree == "default" {
                DEFAULT_CHOICES
            } else {
                SMALL_CHOICES
            };
            let tree =
                Tree::for_heads(choices, &heads).map_err(|e| anyhow::anyhow!("{dir}: {e}"))?;
            return Ok(Self::Medusa(heads, tree));
        }
        // `medusa-chain:DIR`: the heads as the chain proposer `generate` and `serve-local` use.
        let spec = match spec.strip_prefix("medusa-chain:") {
            Some(d) => format!("medusa:{d}"),
            None => spec.to_owned(),
        };
        let p = proposer_with(&spec, opts, target, dir, &Default::default())?
            .with_context(|| format!("`{spec}` proposes nothing"))?;
        Ok(Self::Proposer(p))
    }
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
    let target = ckpt.load_model::<Cpu>(&Default::default())?;
    let tok = &ckpt.tokenizer;
    let template = checkpoint_template(&ckpt)?.context("the target has no chat template")?;
    let stop = chat_stop_ids(&ckpt);
    let questions = mt_bench::read(&ensure(Asset::MtBench)?)?;
    if a.per_category > mt_bench::BENCHMARK_PER_CATEGORY {
        eprintln!(
            "warning: questions past the first {} of a category are Medusa training prompts \
             (medusa-train's MT-bench kind); heads trained by this tool have seen them",
            mt_bench::BENCHMARK_PER_CATEGORY
        );
    }
    let (kept, _) = mt_bench::split(&questions, a.per_category);
    let by_cat: BTreeMap<String, Vec<String>> = kept
        .into_iter()
        .map(|(c, qs)| (c, qs.into_iter().map(|q| q.turns[0].clone()).collect()))
        .collect();
    let params = SamplingParams::default();
    println!(
        "target {}, greedy, batch 1, {} threads, k {}, draft p_min {}, {} new tokens max, {} question(s) per category",
        a.model, a.threads, a.k, a.draft_p_min, a.max_new, a.per_category
    );
    let opts = ProposerOptions {
        draft_p_min: a.draft_p_min,
        ..Default::default()
    };
    for spec in &a.proposers {
        let mut method = Method::of(spec, &target, &ckpt.path, &a.tree, &opts)?;
        let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
        for (cat, qs) in &by_cat {
            for q in qs {
                let msgs = vec![ChatMessage {
                    role: "user".into(),
                    content: q.clone(),
                }];
                let prompt = tok.encode(&template.render(&msgs)?, false)?;
                let t0 = Instant::now();
                let plain = generate(&target, &prompt, a.max_new, params.clone(), &stop, |_| {})?;
                let plain_s = t0.elapsed().as_secs_f64();
                let t0 = Instant::now();
                let (out, stats) = match &mut method {
                    Method::Proposer(p) => generate_speculative(
                        &target,
                        p.as_mut(),
                        &prompt,
                        a.max_new,
                        a.k,
                        params.clone(),
                        &stop,
                        |_| {},
                    )?,
                    Method::Medusa(heads, tree) => {
                        generate_medusa(&target, heads, tree, &prompt, a.max_new, &stop, |_| {})?
                    }
                };
                let spec_s = t0.elapsed().as_secs_f64();
                if out != plain {
                    eprintln!("warning: {spec} on a {cat} question differs from plain greedy");
                }
                cells.entry(cat.clone()).or_default().add(&Cell {
                    plain_s,
                    spec_s,
                    stats,
                    tokens: out.len(),
                });
            }
        }
        println!("\n{spec}:\n| category | tokens | τ | acceptance | plain tok/s | speculative tok/s | speedup |");
        println!("|---|---|---|---|---|---|---|");
        let mut all = Cell::default();
        cells.values().for_each(|c| all.add(c));
        for (cat, c) in cells.iter().chain([(&"overall".to_string(), &all)]) {
            println!(
                "| {cat} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2}x |",
                c.tokens,
                c.stats.tau(),
                c.stats.acceptance(),
                c.tokens as f64 / c.plain_s,
                c.tokens as f64 / c.spec_s,
                c.plain_s / c.spec_s
            );
        }
    }
    Ok(())
}
