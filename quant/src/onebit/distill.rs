//! Knowledge distillation of the OneBit student from the full-precision teacher:
//!
//! `loss = CE(p_teacher, p_student) + α · Σ_layers mean_tokens ‖ĥ_s − ĥ_t‖²`,
//!
//! where `CE` is the cross-entropy of the student's next-token distribution against the
//! teacher's (soft labels, every position) and `ĥ` is a block's output L2-normalized per
//! token (OneBit's loss). AdamW with linear warmup and cosine decay; gradient-norm clipping.
//!
//! Runs stop and resume: every `checkpoint_every` steps the student, the optimizer state and
//! the loss log are written to a checkpoint directory (a new copy next to the old one, then
//! renamed over it, so an interruption leaves the previous checkpoint intact). The batch of
//! step `s` depends only on the seed and `s`, so a resumed run sees the same data in the same
//! order as an uninterrupted one and reaches the same loss.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::AutodiffBackend;
use lmq_runtime::model::{LinearBackend, Llama};
use serde::{Deserialize, Serialize};

use super::student::{Frozen, Student};

/// Training hyper-parameters (the recipe's `onebit:` block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistillOptions {
    /// Optimizer steps (0: SVID initialization only).
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Steps of linear warmup.
    pub warmup: usize,
    /// Weight of the hidden-state loss.
    pub alpha: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    pub grad_clip: f64,
    /// Data order.
    pub seed: u64,
    /// Steps between checkpoints (0: none).
    pub checkpoint_every: usize,
}

impl Default for DistillOptions {
    fn default() -> Self {
        Self {
            steps: 200,
            batch: 2,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 20,
            alpha: 1.0,
            weight_decay: 0.0,
            grad_clip: 1.0,
            seed: 0,
            checkpoint_every: 25,
        }
    }
}

/// One optimizer step as logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based.
    pub step: usize,
    pub lr: f64,
    pub loss: f64,
    /// Distillation cross-entropy (includes the teacher's entropy, a constant).
    pub ce: f64,
    /// Hidden-state term before `α`.
    pub mse: f64,
    /// Wall time of the step.
    pub seconds: f64,
}

/// The learning rate of step `step` (0-based): linear warmup to `lr`, then cosine decay to
/// `lr · min_lr_ratio` at the last step.
pub fn lr_at(o: &DistillOptions, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let span = o.steps.saturating_sub(o.warmup).max(1) as f64;
    let progress = ((step - o.warmup) as f64 / span).min(1.0);
    let min = o.lr * o.min_lr_ratio;
    min + 0.5 * (o.lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Windows of step `step`: consecutive slices of a per-epoch permutation of `0..n` drawn
/// from `seed` and the epoch, so the order depends on nothing but the step.
pub fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    assert!(n > 0, "no training windows");
    (step * batch..(step + 1) * batch)
        .map(|i| {
            let (epoch, pos) = (i / n, i % n);
            permutation(n, seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))[pos]
        })
        .collect()
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    let mut s = seed.wrapping_add(0x2545_F491_4F6C_DD1D);
    for i in (1..n).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        p.swap(i, (s % (i as u64 + 1)) as usize);
    }
    p
}

/// What a checkpoint directory records besides the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct TrainState {
    /// Steps done.
    step: usize,
    /// Identifies the run (recipe, model, data); a checkpoint of another run is refused.
    fingerprint: String,
    log: Vec<StepLog>,
}

/// Where a run keeps its checkpoints: `dir/current` (complete) and `dir/next` (being
/// written).
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    pub dir: PathBuf,
    pub fingerprint: String,
}

type Rec = BinFileRecorder<FullPrecisionSettings>;

impl CheckpointDir {
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    fn load_state(&self) -> Result<Option<TrainState>> {
        let path = self.current().join("state.json");
        if !path.exists() {
            return Ok(None);
        }
        let state: TrainState = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not a training state", path.display()))?;
        if state.fingerprint != self.fingerprint {
            bail!(
                "{}: a checkpoint of a different run (other recipe, model or data); remove {} \
                 to start over",
                path.display(),
                self.dir.display()
            );
        }
        Ok(Some(state))
    }

    fn save<B: AutodiffBackend, O: Optimizer<Student<B>, B>>(
        &self,
        student: &Student<B>,
        optim: &O,
        state: &TrainState,
    ) -> Result<()> {
        let next = self.dir.join("next");
        if next.exists() {
            std::fs::remove_dir_all(&next)?;
        }
        std::fs::create_dir_all(&next).with_context(|| format!("creating {}", next.display()))?;
        let rec = Rec::new();
        student
            .clone()
            .save_file(next.join("student"), &rec)
            .with_context(|| format!("writing {}", next.display()))?;
        rec.record(optim.to_record(), next.join("optimizer"))
            .with_context(|| format!("writing {}", next.display()))?;
        std::fs::write(next.join("state.json"), serde_json::to_string(state)?)?;
        let current = self.current();
        if current.exists() {
            std::fs::remove_dir_all(&current)?;
        }
        std::fs::rename(&next, &current).with_context(|| format!("renaming {}", next.display()))?;
        Ok(())
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Finished,
    /// `stop_after` steps were reached (a simulated interruption, for tests).
    Interrupted,
}

/// Trains `student` against `teacher` on token `windows` (all of one length). With a
/// checkpoint directory holding a checkpoint of this run, training resumes from it.
/// `stop_after` ends the run after that many steps in total (after checkpointing).
#[allow(clippy::too_many_arguments)]
pub fn distill<T: LinearBackend, B: AutodiffBackend>(
    teacher: &Llama<T>,
    mut student: Student<B>,
    frozen: &Frozen<B>,
    windows: &[Vec<u32>],
    opts: &DistillOptions,
    checkpoints: Option<&CheckpointDir>,
    stop_after: Option<usize>,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<(Student<B>, Vec<StepLog>, Stopped)> {
    let device = frozen.embed.device();
    let mut config = AdamWConfig::new().with_weight_decay(opts.weight_decay as f32);
    if opts.grad_clip > 0.0 {
        config = config.with_grad_clipping(Some(
            burn::optim::grad_clipping::GradientClippingConfig::Norm(opts.grad_clip as f32),
        ));
    }
    let mut optim = config.init::<B, Student<B>>();
    let mut log = Vec::new();
    let mut start = 0;
    if let Some(c) = checkpoints {
        if let Some(state) = c.load_state()? {
            let rec = Rec::new();
            student = student
                .load_file(c.current().join("student"), &rec, &device)
                .with_context(|| format!("loading {}", c.current().display()))?;
            let o = rec
                .load(c.current().join("optimizer"), &device)
                .with_context(|| format!("loading {}", c.current().display()))?;
            optim = optim.load_record(o);
            start = state.step;
            log = state.log;
        }
    }
    let t = windows.first().map_or(0, Vec::len);
    for step in start..opts.steps {
        if stop_after.is_some_and(|n| step >= n) {
            return Ok((student, log, Stopped::Interrupted));
        }
        let began = Instant::now();
        let idx = batch_indices(windows.len(), opts.batch, opts.seed, step);
        let ids: Vec<i32> = idx
            .iter()
            .flat_map(|&i| windows[i].iter().map(|&x| x as i32))
            .collect();
        let shape = [idx.len(), t];
        let (probs, targets) = teacher_targets(teacher, &ids, shape, &device);
        let tokens = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), &device);
        let out = student.forward(tokens, frozen);
        let ce = (probs * log_softmax(out.logits, 1)).sum_dim(1).mean().neg();
        let mut mse = Tensor::<B, 1>::zeros([1], &device);
        for (s, t) in out.layer_outputs.into_iter().zip(targets) {
            let d = (l2_normalize(s) - t).powi_scalar(2).sum_dim(2).mean();
            mse = mse + d;
        }
        let loss = ce.clone() + mse.clone().mul_scalar(opts.alpha);
        let scalar = |x: Tensor<B, 1>| f64::from(x.into_scalar().elem::<f32>());
        let (loss_v, ce_v, mse_v) = (scalar(loss.clone()), scalar(ce), scalar(mse));
        if !loss_v.is_finite() {
            bail!(
                "distillation diverged at step {} (loss {loss_v}); lower `lr`",
                step + 1
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        let lr = lr_at(opts, step);
        student = optim.step(lr, student, grads);
        let entry = StepLog {
            step: step + 1,
            lr,
            loss: loss_v,
            ce: ce_v,
            mse: mse_v,
            seconds: began.elapsed().as_secs_f64(),
        };
        on_step(&entry);
        log.push(entry);
        let done = step + 1;
        if let Some(c) = checkpoints {
            let due = opts.checkpoint_every > 0 && done.is_multiple_of(opts.checkpoint_every);
            if due || stop_after == Some(done) {
                let state = TrainState {
                    step: done,
                    fingerprint: c.fingerprint.clone(),
                    log: log.clone(),
                };
                c.save(&student, &optim, &state)?;
            }
        }
    }
    Ok((student, log, Stopped::Finished))
}

/// `x / ‖x‖` over the last dimension.
fn l2_normalize<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let n = x.clone().powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-12);
    x / n
}

/// The teacher's next-token distributions `[b·t, vocab]` and its normalized block outputs,
/// as constants on the student's device.
fn teacher_targets<T: LinearBackend, B: Backend>(
    teacher: &Llama<T>,
    ids: &[i32],
    shape: [usize; 2],
    device: &B::Device,
) -> (Tensor<B, 2>, Vec<Tensor<B, 3>>) {
    let tokens =
        Tensor::<T, 2, Int>::from_data(TensorData::new(ids.to_vec(), shape), &teacher.device());
    let (logits, outs) = teacher.forward_with_layer_outputs(tokens);
    let [b, t, v] = logits.dims();
    let move_to = |x: TensorData| x.convert::<f32>();
    let probs = Tensor::<B, 2>::from_data(
        move_to(softmax(logits.reshape([b * t, v]), 1).into_data()),
        device,
    );
    let outs = outs
        .into_iter()
        .map(|h| Tensor::<B, 3>::from_data(move_to(l2_normalize(h).into_data()), device))
        .collect();
    (probs, outs)
}

/// Path of a run's checkpoint directory next to the output: `OUT.onebit-train`.
pub fn checkpoint_dir_for(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "out".into());
    name.push(".onebit-train");
    out.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed run reads its earlier losses back from `state.json`; they must come back
    /// bit-identical, or its log differs from an uninterrupted run's. serde_json's default
    /// float parsing was once off by an ulp on this very value (a real step-1 loss).
    #[test]
    fn the_training_state_reads_back_bit_identical() {
        let losses = [
            f64::from(25.401_691_f32),
            0.1 + 0.2,
            1e-300,
            15.899_795_532_226_563,
        ];
        let state = TrainState {
            step: losses.len(),
            fingerprint: "f".into(),
            log: losses
                .iter()
                .enumerate()
                .map(|(i, &loss)| StepLog {
                    step: i + 1,
                    lr: loss / 7.0,
                    loss,
                    ce: loss / 3.0,
                    mse: loss * 1.1,
                    seconds: 0.5,
                })
                .collect(),
        };
        let back: TrainState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        for (a, b) in state.log.iter().zip(&back.log) {
            for (x, y) in [(a.loss, b.loss), (a.ce, b.ce), (a.mse, b.mse), (a.lr, b.lr)] {
                assert_eq!(x.to_bits(), y.to_bits(), "{x} read back as {y}");
            }
        }
    }
}
