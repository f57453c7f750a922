//! `quantize --model M --recipe R --out DIR`: applies a recipe and writes an HF directory.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use lmq_quant::calibrated::{calibration_set, quantize_calibrated};
use lmq_quant::convert::{convert, ConvertOptions};
use lmq_quant::medusa_train::{train_for_checkpoint, MedusaTrainOptions};
use lmq_quant::onebit::run::quantize_onebit;
use lmq_quant::packed_checkpoint::quantize_rtn;
use lmq_quant::pipeline::{CalibratedModel, PipelineEvent, PipelineOptions};
use lmq_quant::plan::QuantPlan;
use lmq_quant::recipe::Recipe;
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::DeviceSpec;
use lmq_runtime::sysinfo::peak_rss_mib;

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
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where the heavy work runs (`cuda[:N]` needs a build with `--features cuda`). Calibrated
    /// recipes run the Hessian sums, GPTQ's column loop and every linear product of the
    /// calibration forwards and of AWQ's scale search there; OneBit distillation runs its
    /// teacher and student there. RTN and conversions refuse it (seconds on the CPU).
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Also write the calibration windows to this file (raw little-endian int32, row-major
    /// [windows, seqlen]), so that a peer tool can be calibrated on the very same tokens
    /// (e.g. through a `tokens:` source or numpy.fromfile).
    #[arg(long)]
    save_calibration: Option<PathBuf>,
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
    let started = Instant::now();
    let recipe = Recipe::from_file(&args.recipe)?;
    // Fail before minutes of calibration, not after.
    if args.out.exists() && !args.force {
        bail!(
            "{}: already exists (remove it or pass --force)",
            args.out.display()
        );
    }
    let ckpt = Checkpoint::open(&args.model)?;
    let opts = ConvertOptions {
        dtype: recipe.output.dtype,
        force: args.force,
        recipe: Some(recipe.text.clone()),
    };
    if recipe.onebit.is_some() {
        let Some((s, r)) = quantize_onebit(&ckpt, &recipe, &args.out, &opts, args.device, None)?
        else {
            bail!("onebit: training stopped early");
        };
        println!(
            "wrote {}: {} linears as OneBit, model.safetensors {:.1} MB; SVID {:.1} s, \
             {} distillation steps ({} this run, {} tokens each) in {:.1} s, final loss {}, \
             {:.1} s total, peak RSS {:.0} MiB",
            s.out.display(),
            s.quantized_tensors,
            s.bytes as f64 / 1e6,
            r.svid_seconds,
            r.steps,
            r.steps_this_run,
            r.tokens_per_step,
            r.train_seconds,
            r.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        return Ok(());
    }
    let bar = ProgressBar::new(ckpt.weights.names().len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "writing [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    )?);
    let progress = |name: &str| {
        bar.inc(1);
        bar.set_message(name.to_owned());
    };
    if recipe.is_conversion() {
        if args.device != DeviceSpec::Cpu {
            bail!(
                "--device {}: a conversion runs on the CPU; omit --device",
                args.device
            );
        }
        let out = convert(&ckpt, &args.out, &opts, progress)?;
        bar.finish_and_clear();
        println!("wrote {}", out.display());
        return medusa_stage(&recipe, &args.out);
    }
    let plan = QuantPlan::from_recipe(&recipe, &*ckpt.weights, ckpt.config.tie_word_embeddings)?;
    if args.device != DeviceSpec::Cpu && !plan.needs_calibration() {
        bail!(
            "--device {}: this recipe has no calibrated pass (RTN or a conversion runs in \
             seconds on the CPU); omit --device",
            args.device
        );
    }
    // Opened before calibration so a missing GPU fails at once.
    let quant_device = lmq_quant::device::for_spec(args.device)?;
    if let Some(d) = &quant_device {
        eprintln!(
            "device {}: Hessian sums, GPTQ's column loop and the layers' linear products run \
             there; the f64 factorisation of H⁻¹, attention softmax, norms and AWQ's clipping \
             search stay on the CPU",
            d.describe()
        );
    }
    if !plan.needs_calibration() {
        let s = quantize_rtn(&ckpt, &recipe, &args.out, &opts, progress)?;
        bar.finish_and_clear();
        println!(
            "wrote {}: {} linears quantized, model.safetensors {:.1} MB, {:.1} s, peak RSS {:.0} MiB",
            s.out.display(),
            s.quantized_tensors,
            s.bytes as f64 / 1e6,
            started.elapsed().as_secs_f64(),
            peak_rss_mib()
        );
        return medusa_stage(&recipe, &args.out);
    }
    drop(bar);

    let spinner = ProgressBar::new_spinner();
    spinner.set_message("calibration: loading and tokenizing the source");
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let calib = calibration_set(&ckpt, &recipe)?;
    spinner.finish_and_clear();
    if let Some(path) = &args.save_calibration {
        calib
            .write_le_i32(path)
            .with_context(|| format!("--save-calibration {}", path.display()))?;
        eprintln!(
            "calibration windows: {} x {} tokens written to {} (sha256 of the int32s {})",
            calib.num_samples(),
            calib.seqlen,
            path.display(),
            calib.sha256_le_i32()
        );
    }
    eprintln!("calibration: {}", calib.description);
    if let Some(note) = &calib.note {
        eprintln!("calibration: note: {note}");
    }

    let bar = ProgressBar::new(ckpt.config.num_layers as u64);
    bar.set_style(ProgressStyle::with_template(
        "quantizing [{elapsed_precise}] {bar:30} layer {pos}/{len} (eta {eta}) {msg}",
    )?);
    let mut on_event = |e: PipelineEvent| match e {
        PipelineEvent::Start { tokens, layers } => {
            bar.set_length(layers as u64);
            bar.set_message(format!("{tokens} calibration tokens embedded"))
        }
        PipelineEvent::Stage { layer, what } => bar.set_message(format!("layer {layer}: {what}")),
        PipelineEvent::LayerDone(r) => {
            let line = layer_line(r);
            // A hidden bar (stderr not a terminal: CI logs, `2> file`) swallows println.
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
            bar.inc(1);
        }
    };
    let pipeline_opts = PipelineOptions {
        device: quant_device,
        ..PipelineOptions::default()
    };
    let (s, model) = quantize_calibrated(
        &ckpt,
        &plan,
        &calib,
        &args.out,
        &opts,
        pipeline_opts,
        &mut on_event,
    )?;
    bar.finish_and_clear();
    print_summary(&model);
    println!(
        "wrote {}: {} linears quantized, model.safetensors {:.1} MB, {:.1} s total \
         ({:.1} s pipeline), peak RSS {:.0} MiB",
        s.out.display(),
        s.quantized_tensors,
        s.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        model.seconds,
        peak_rss_mib()
    );
    medusa_stage(&recipe, &args.out)
}

/// The recipe's `medusa:` block: heads trained against the model just written (loaded back
/// from `out`, packed weights and all), saved in `out/medusa/`.
fn medusa_stage(recipe: &Recipe, out: &std::path::Path) -> Result<()> {
    let Some(m) = recipe.medusa else {
        return Ok(());
    };
    let opts = MedusaTrainOptions {
        heads: m.heads.0,
        layers: m.layers.0,
        steps: m.steps.0,
        lr: m.lr.0,
        batch: m.batch.0,
        prompts: m.prompts.0,
        answer_tokens: m.answer_tokens.0,
        vocab: m.vocab,
        mt_bench: m.mt_bench,
        token_input: m.token_input,
        recurrent: m.recurrent,
        ..Default::default()
    };
    let dir = out.join("medusa");
    let model = out.to_string_lossy();
    let r = train_for_checkpoint(&model, &dir, &opts)
        .with_context(|| format!("medusa: training heads for {}", out.display()))?;
    println!(
        "medusa: {} heads trained on {} positions ({} steps, {:.0} s generating + {:.0} s training), \
         held-out top-1 {:?}; written to {}",
        opts.heads,
        r.positions,
        r.steps,
        r.generate_seconds,
        r.train_seconds,
        r.heldout_top1.iter().map(|a| format!("{a:.3}")).collect::<Vec<_>>(),
        dir.display()
    );
    Ok(())
}

/// One line per finished layer: GPTQ's and RTN's output errors, AWQ's chosen exponents and
/// block errors relative to plain rounding.
fn layer_line(r: &lmq_quant::pipeline::LayerReport) -> String {
    let mut line = format!("layer {:>3}: {:6.1} s", r.index, r.seconds);
    let (g, rt) = mean_errors(r.linears.iter());
    if g.is_finite() {
        line += &format!("   output error GPTQ {g:.3e}  RTN {rt:.3e}");
    }
    for s in &r.smoothquant {
        let short = s.mapping.split('→').next_back().unwrap_or(s.mapping);
        line += &format!(
            "   SmoothQuant {short} outliers {:.0}→{:.1}",
            s.outlier_ratio_before, s.outlier_ratio_after
        );
        match (s.alpha, s.loss, s.loss_unsmoothed) {
            (Some(a), Some(l), Some(l0)) => line += &format!(" α={a:.1} ×{:.2}", l / l0),
            (None, Some(_), _) => line += " unsmoothed",
            _ => {}
        }
    }
    if let Some(a) = &r.awq {
        line += "   AWQ";
        for m in &a.mappings {
            let short = m.mapping.split('→').next_back().unwrap_or(m.mapping);
            match m.ratio {
                Some(ratio) => {
                    line += &format!(" {short} r={ratio:.2} ×{:.2}", m.loss_awq / m.loss_rtn)
                }
                None => line += &format!(" {short} unscaled"),
            }
        }
    }
    line
}

/// Mean relative output errors (calibrated method, RTN) over linears that have them.
fn mean_errors<'a>(
    linears: impl Iterator<Item = &'a lmq_quant::pipeline::LinearReport>,
) -> (f64, f64) {
    let (mut g, mut r, mut n) = (0.0, 0.0, 0usize);
    for l in linears {
        if let (Some(a), Some(b)) = (l.rel_output_error, l.rtn_rel_output_error) {
            g += a;
            r += b;
            n += 1;
        }
    }
    if n == 0 {
        (f64::NAN, f64::NAN)
    } else {
        (g / n as f64, r / n as f64)
    }
}

/// Per-projection means and the worst linears: where quantization hurts.
fn print_summary(model: &CalibratedModel) {
    let all: Vec<_> = model.layers.iter().flat_map(|l| &l.linears).collect();
    println!("relative output error ‖(W−Ŵ)X‖²/‖WX‖² on the calibration inputs (mean over layers):");
    println!(
        "{:<12} {:>12} {:>12} {:>8}",
        "projection", "calibrated", "RTN", "ratio"
    );
    for proj in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ] {
        let sel = all.iter().copied().filter(|l| l.name.contains(proj));
        let (g, r) = mean_errors(sel);
        if g.is_finite() {
            println!("{proj:<12} {g:>12.4e} {r:>12.4e} {:>8.3}", g / r);
        }
    }
    let mut worst: Vec<_> = all
        .iter()
        .filter(|l| l.rel_output_error.is_some())
        .collect();
    worst.sort_by(|a, b| b.rel_output_error.partial_cmp(&a.rel_output_error).unwrap());
    println!("worst linears:");
    for l in worst.iter().take(5) {
        println!(
            "  {:<40} {:.4e} (RTN {:.4e}, loss {:.4e}, dampening {:?}, {:.2} s)",
            l.name,
            l.rel_output_error.unwrap_or(f64::NAN),
            l.rtn_rel_output_error.unwrap_or(f64::NAN),
            l.gptq_loss.unwrap_or(f64::NAN),
            l.dampening_used,
            l.seconds
        );
    }
    let retried: Vec<_> = all.iter().filter(|l| l.retries > 0).collect();
    for l in &retried {
        println!(
            "  note: {}: Cholesky failed {} time(s); dampening raised to {:?}",
            l.name, l.retries, l.dampening_used
        );
    }
    let (g, r) = mean_errors(all.iter().copied());
    if g.is_finite() {
        println!("all linears: calibrated {g:.4e}, RTN {r:.4e}");
    }
    print_awq_summary(model);
}

/// AWQ's effect per mapping (block output error at the chosen scales / with plain rounding,
/// mean over layers) and clipping's per linear kind.
fn print_awq_summary(model: &CalibratedModel) {
    let awq: Vec<_> = model.layers.iter().filter_map(|l| l.awq.as_ref()).collect();
    if awq.is_empty() {
        return;
    }
    println!("AWQ block output error relative to plain rounding on the search tokens (mean over layers):");
    let mut names: Vec<&str> = awq
        .iter()
        .flat_map(|a| a.mappings.iter().map(|m| m.mapping))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let ms: Vec<_> = awq
            .iter()
            .flat_map(|a| &a.mappings)
            .filter(|m| m.mapping == name)
            .collect();
        let ratio = ms.iter().map(|m| m.loss_awq / m.loss_rtn).sum::<f64>() / ms.len() as f64;
        let scaled = ms.iter().filter(|m| m.ratio.is_some()).count();
        println!(
            "  {name:<36} ×{ratio:.3}   scaled in {scaled}/{} layers",
            ms.len()
        );
    }
    let clips: Vec<_> = awq.iter().flat_map(|a| &a.clips).collect();
    if !clips.is_empty() {
        let groups: usize = clips.iter().map(|c| c.clipped_groups).sum();
        let ratio = clips
            .iter()
            .map(|c| c.loss_after / c.loss_before.max(f64::MIN_POSITIVE))
            .sum::<f64>()
            / clips.len() as f64;
        println!(
            "  clipping: {groups} groups shrunk, group output error ×{ratio:.3} (mean over {} linears)",
            clips.len()
        );
    }
    if let Some(skip) = awq.first().map(|a| &a.skipped) {
        for s in skip {
            println!("  skipped {s}");
        }
    }
}
