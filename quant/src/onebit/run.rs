//! `quantize` with a recipe's `onebit:` block: SVID initialization, distillation (resuming
//! from `OUT.onebit-train/` when a previous run of the same command was interrupted), then
//! the packed checkpoint with the loss log, its plot and a report beside the weights.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::backend::Autodiff;
use indicatif::{ProgressBar, ProgressStyle};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::{run_on, DeviceSpec, OnBackend};
use lmq_runtime::model::{LinearBackend, Llama};
use serde::Serialize;
use serde_json::json;

use super::distill::{
    checkpoint_dir_for, distill, CheckpointDir, DistillOptions, StepLog, Stopped,
};
use super::init::{svid_student, SvidReport};
use super::plot::loss_svg;
use super::writer::write_onebit_checkpoint;
use crate::calibrated::calibration_set;
use crate::convert::ConvertOptions;
use crate::packed_checkpoint::QuantSummary;
use crate::recipe::{OneBitSpec, Recipe};

/// What a OneBit run did, for the summary line and the report file.
#[derive(Debug, Clone, Serialize)]
pub struct OneBitReport {
    pub steps: usize,
    /// Steps run by this process (fewer than `steps` after a resume).
    pub steps_this_run: usize,
    pub tokens_per_step: usize,
    /// Wall time of the steps this process ran.
    pub train_seconds: f64,
    /// Sum of every step's wall time, across resumed runs.
    pub train_seconds_all_runs: f64,
    pub svid_seconds: f64,
    pub final_loss: Option<f64>,
    pub svid: Vec<SvidReport>,
    pub options: DistillOptions,
    pub data: Option<String>,
}

/// The distillation options a recipe block asks for.
pub fn options_of(o: &OneBitSpec, seed: u64) -> DistillOptions {
    DistillOptions {
        steps: o.steps,
        batch: o.batch.0,
        lr: o.lr.0,
        min_lr_ratio: o.min_lr_ratio.0,
        warmup: o.warmup,
        alpha: o.alpha.0,
        weight_decay: o.weight_decay.0,
        grad_clip: o.grad_clip.0,
        seed,
        checkpoint_every: o.checkpoint_every,
    }
}

/// Stable 64-bit FNV-1a, for run fingerprints.
fn fnv1a(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Runs the recipe's `onebit:` block on `ckpt` and writes `out`. `stop_after` simulates an
/// interruption after that many steps (tests); the checkpoint directory then stays.
/// On `device` (`cpu`, or `cuda[:N]` in a build with the `cuda` feature): the teacher runs
/// on that backend and the student trains on it with burn's autodiff.
pub fn quantize_onebit(
    ckpt: &Checkpoint,
    recipe: &Recipe,
    out: &Path,
    opts: &ConvertOptions,
    device: DeviceSpec,
    stop_after: Option<usize>,
) -> Result<Option<(QuantSummary, OneBitReport)>> {
    struct Job<'a> {
        ckpt: &'a Checkpoint,
        recipe: &'a Recipe,
        out: &'a Path,
        opts: &'a ConvertOptions,
        stop_after: Option<usize>,
    }
    impl OnBackend for Job<'_> {
        type Output = Result<Option<(QuantSummary, OneBitReport)>>;
        fn run<B: LinearBackend>(self, device: B::Device) -> Self::Output {
            quantize_onebit_on::<B>(
                self.ckpt,
                self.recipe,
                self.out,
                self.opts,
                self.stop_after,
                device,
            )
        }
    }
    let job = Job {
        ckpt,
        recipe,
        out,
        opts,
        stop_after,
    };
    run_on(device, job)?
}

fn quantize_onebit_on<T: LinearBackend>(
    ckpt: &Checkpoint,
    recipe: &Recipe,
    out: &Path,
    opts: &ConvertOptions,
    stop_after: Option<usize>,
    device: T::Device,
) -> Result<Option<(QuantSummary, OneBitReport)>> {
    let spec = recipe.onebit.context("recipe has no `onebit:` block")?;
    let seed = recipe.calibration.as_ref().map_or(0, |c| c.seed);
    let options = options_of(&spec, seed);

    let began = Instant::now();
    let bar = ProgressBar::new(ckpt.config.num_layers as u64);
    bar.set_style(ProgressStyle::with_template(
        "onebit: SVID [{elapsed_precise}] {bar:30} layer {pos}/{len}",
    )?);
    let (student, frozen, svid) = svid_student::<Autodiff<T>>(
        &ckpt.config,
        &*ckpt.weights,
        &ckpt.path,
        spec.output_norm,
        &device,
        |l| bar.set_position(l as u64),
    )?;
    bar.finish_and_clear();
    let svid_seconds = began.elapsed().as_secs_f64();

    let (mut log, mut steps_this_run, mut train_seconds, mut data) = (vec![], 0, 0.0, None);
    let mut tokens_per_step = 0;
    let student = if options.steps == 0 {
        student
    } else {
        let calib = calibration_set(ckpt, recipe)?;
        eprintln!("onebit: training data: {}", calib.description);
        tokens_per_step = options.batch * calib.seqlen;
        data = Some(calib.description.clone());
        let teacher = Llama::<T>::load(&ckpt.config, &*ckpt.weights, &ckpt.path, &device)
            .with_context(|| format!("{}: loading the teacher", ckpt.path.display()))?;
        let dir = checkpoint_dir_for(out);
        let fingerprint = fnv1a(&[
            recipe.text.as_bytes(),
            ckpt.path.to_string_lossy().as_bytes(),
            calib.description.as_bytes(),
        ]);
        let checkpoints = CheckpointDir {
            dir: dir.clone(),
            fingerprint,
        };
        let bar = ProgressBar::new(options.steps as u64);
        bar.set_style(ProgressStyle::with_template(
            "onebit: distilling [{elapsed_precise}] {bar:30} step {pos}/{len} (eta {eta}) {msg}",
        )?);
        let t0 = Instant::now();
        let mut on_step = |s: &StepLog| {
            steps_this_run += 1;
            bar.set_position(s.step as u64);
            let line = format!(
                "loss {:.4} (ce {:.4}, mse {:.4}) lr {:.2e}, {:.1} s/step",
                s.loss, s.ce, s.mse, s.lr, s.seconds
            );
            if bar.is_hidden() && (s.step.is_multiple_of(10) || s.step == 1) {
                eprintln!("onebit: step {}/{}: {line}", s.step, options.steps);
            }
            bar.set_message(line);
        };
        let (trained, l, stopped) = distill(
            &teacher,
            student,
            &frozen,
            &calib.windows,
            &options,
            Some(&checkpoints),
            stop_after,
            &mut on_step,
        )?;
        bar.finish_and_clear();
        train_seconds = t0.elapsed().as_secs_f64();
        if stopped == Stopped::Interrupted {
            eprintln!(
                "onebit: stopped after {} steps; checkpoint in {} (rerun to resume)",
                l.len(),
                dir.display()
            );
            return Ok(None);
        }
        log = l;
        trained
    };

    let report = OneBitReport {
        steps: options.steps,
        steps_this_run,
        tokens_per_step,
        train_seconds,
        train_seconds_all_runs: log.iter().map(|s| s.seconds).sum(),
        svid_seconds,
        final_loss: log.last().map(|s| s.loss),
        svid,
        options: options.clone(),
        data,
    };
    let mut csv = String::from("step,lr,loss,ce,mse,seconds\n");
    for s in &log {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            s.step, s.lr, s.loss, s.ce, s.mse, s.seconds
        ));
    }
    let title = format!(
        "OneBit distillation: {} ({} steps × {} tokens)",
        ckpt.path.display(),
        options.steps,
        tokens_per_step
    );
    let extra = [
        (
            "onebit-report.json",
            serde_json::to_vec_pretty(&json!(report))?,
        ),
        ("loss.csv", csv.into_bytes()),
        (
            "loss.svg",
            loss_svg(&log, options.alpha, &title).into_bytes(),
        ),
    ];
    let summary = write_onebit_checkpoint(ckpt, &student, out, opts, &extra)?;
    let dir = checkpoint_dir_for(out);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| {
            format!("removing the finished run's checkpoints {}", dir.display())
        })?;
    }
    Ok(Some((summary, report)))
}
