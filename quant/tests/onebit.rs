//! OneBit on tiny seeded models (Llama with tied embeddings, Qwen2 with q/k/v biases): the
//! trainable student computes what the runtime computes from the exported 1-bit weights;
//! distillation lowers the loss; an interrupted run resumes to the same losses as an
//! uninterrupted one; recipes are checked.

use std::path::Path;

use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use lmq_quant::onebit::distill::{distill, CheckpointDir, DistillOptions, Stopped};
use lmq_quant::onebit::init::{exported_source, svid_student};
use lmq_quant::onebit::student::{Frozen, Student};
use lmq_quant::recipe::Recipe;
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::model::Llama;
use lmq_runtime::weights::{tiny_config, MemorySource};
use lmq_runtime::Cpu;

type Train = Autodiff<Cpu>;

/// Student (burn ops, dense ±1 matmul) vs runtime (sign-sum kernel): f32 sums in different
/// orders through a few layers.
const STUDENT_RUNTIME_REL_TOL: f32 = 1e-4;

fn model(arch: Arch) -> (ModelConfig, MemorySource) {
    let c = tiny_config(arch);
    let src = MemorySource::random(&c, 5);
    (c, src)
}

fn windows(c: &ModelConfig, n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|w| {
            (0..len)
                .map(|i| ((w * 7919 + i * 104_729 + (i * i) % 13) % c.vocab_size) as u32)
                .collect()
        })
        .collect()
}

fn student<B: Backend>(c: &ModelConfig, src: &MemorySource, norm: bool) -> (Student<B>, Frozen<B>) {
    let (s, f, _) = svid_student::<B>(
        c,
        src,
        Path::new("<test>"),
        norm,
        &Default::default(),
        |_| {},
    )
    .unwrap();
    (s, f)
}

fn student_logits<B: Backend>(s: &Student<B>, f: &Frozen<B>, ids: &[u32]) -> Vec<f32> {
    let ids: Vec<i32> = ids.iter().map(|&x| x as i32).collect();
    let n = ids.len();
    let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), &Default::default());
    s.forward(t, f)
        .logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() / scale < tol, "{what} at {i}: {a} vs {b}");
    }
}

fn options(steps: usize) -> DistillOptions {
    DistillOptions {
        steps,
        batch: 2,
        lr: 5e-3,
        warmup: 2,
        checkpoint_every: 3,
        ..DistillOptions::default()
    }
}

#[test]
fn student_computes_what_the_runtime_runs_from_exported_weights() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        for norm in [false, true] {
            let (c, src) = model(arch);
            let (s, f) = student::<Cpu>(&c, &src, norm);
            let ids = &windows(&c, 1, 12)[0];
            let want = student_logits(&s, &f, ids);
            let exported = exported_source(&s, &src);
            let rt = Llama::<Cpu>::load(&c, &exported, Path::new("<test>"), &Default::default())
                .unwrap();
            assert_close(
                &rt.logits_of(ids),
                &want,
                STUDENT_RUNTIME_REL_TOL,
                &format!("{arch:?} norm={norm}"),
            );
            // And the 1-bit model is not the original one.
            let orig = Llama::<Cpu>::load(&c, &src, Path::new("<test>"), &Default::default())
                .unwrap()
                .logits_of(ids);
            let diff = orig
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(diff > 1e-3, "{arch:?}: 1-bit logits equal the f32 ones");
        }
    }
}

#[test]
fn distillation_lowers_the_loss_and_the_trained_model_still_matches_the_runtime() {
    let (c, src) = model(Arch::Qwen2);
    let teacher = Llama::<Cpu>::load(&c, &src, Path::new("<t>"), &Default::default()).unwrap();
    let (s, f) = student::<Train>(&c, &src, true);
    let data = windows(&c, 8, 16);
    let (trained, log, stopped) = distill(
        &teacher,
        s,
        &f,
        &data,
        &options(30),
        None,
        None,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(stopped, Stopped::Finished);
    assert_eq!(log.len(), 30);
    let first: f64 = log[..3].iter().map(|s| s.loss).sum::<f64>() / 3.0;
    let last: f64 = log[27..].iter().map(|s| s.loss).sum::<f64>() / 3.0;
    assert!(last < 0.8 * first, "loss {first} -> {last}");

    let inner = trained.valid();
    let (_, fi) = student::<Cpu>(&c, &src, true);
    let ids = &data[0];
    let exported = exported_source(&inner, &src);
    let rt = Llama::<Cpu>::load(&c, &exported, Path::new("<t>"), &Default::default()).unwrap();
    assert_close(
        &rt.logits_of(ids),
        &student_logits(&inner, &fi, ids),
        STUDENT_RUNTIME_REL_TOL,
        "trained",
    );
}

#[test]
fn an_interrupted_run_resumes_to_the_same_losses() {
    let (c, src) = model(Arch::Llama);
    let teacher = Llama::<Cpu>::load(&c, &src, Path::new("<t>"), &Default::default()).unwrap();
    let data = windows(&c, 6, 16);
    let opts = options(8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| CheckpointDir {
        dir: tmp.path().join(name),
        fingerprint: "run".into(),
    };

    let (s, f) = student::<Train>(&c, &src, true);
    let (_, whole, _) = distill(
        &teacher,
        s,
        &f,
        &data,
        &opts,
        Some(&dir("a")),
        None,
        &mut |_| {},
    )
    .unwrap();

    // Stopped after 4 steps (between checkpoints at 3 and 6: it checkpoints on the way out).
    let (s, f) = student::<Train>(&c, &src, true);
    let (_, part, stopped) = distill(
        &teacher,
        s,
        &f,
        &data,
        &opts,
        Some(&dir("b")),
        Some(4),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(stopped, Stopped::Interrupted);
    assert_eq!(part.len(), 4);
    // A fresh process: a new SVID student, then the checkpoint.
    let (s, f) = student::<Train>(&c, &src, true);
    let mut resumed_steps = vec![];
    let (_, resumed, stopped) = distill(
        &teacher,
        s,
        &f,
        &data,
        &opts,
        Some(&dir("b")),
        None,
        &mut |s| resumed_steps.push(s.step),
    )
    .unwrap();
    assert_eq!(stopped, Stopped::Finished);
    assert_eq!(resumed_steps, vec![5, 6, 7, 8], "resumed where it stopped");
    for (a, b) in whole.iter().zip(&resumed) {
        assert_eq!(a.step, b.step);
        assert_eq!(a.loss, b.loss, "step {}: {} vs {}", a.step, a.loss, b.loss);
    }

    // A checkpoint of another run is refused by name.
    let (s, f) = student::<Train>(&c, &src, true);
    let other = CheckpointDir {
        dir: tmp.path().join("b"),
        fingerprint: "another".into(),
    };
    let err = distill(
        &teacher,
        s,
        &f,
        &data,
        &opts,
        Some(&other),
        None,
        &mut |_| {},
    )
    .expect_err("fingerprint mismatch");
    assert!(format!("{err:#}").contains("different run"), "{err:#}");
}

#[test]
fn onebit_recipes_are_checked() {
    let parse = |t: &str| Recipe::parse(t, Path::new("r.yaml"));
    assert!(parse("onebit: {steps: 0}\n").is_ok());
    let e = parse("onebit: {steps: 5}\n").unwrap_err().to_string();
    assert!(
        e.contains("r.yaml") && e.contains("onebit.steps") && e.contains("calibration"),
        "{e}"
    );
    let e = parse("onebit: {steps: 0, stepz: 3}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("stepz"), "{e}");
    let e = parse("onebit: {steps: 0, alpha: -1}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("alpha") && e.contains(">= 0"), "{e}");
    let e = parse("onebit: {steps: 0}\nstages:\n  - passes:\n      - rtn: {scheme: W4A16}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1") && e.contains("stages"), "{e}");
}
