//! OneBit through `quantize`'s library entry on the real SmolLM2, cut to its first
//! [`LAYERS`] decoder layers, with a few 64-token steps: the default test run stays short and
//! its training checkpoints (student, AdamW moments) stay tens of MB rather than GB, which a
//! CI disk does not always have. A run interrupted after one step and rerun resumes from
//! its checkpoint and reaches the same losses as an uninterrupted run; the written checkpoint
//! loads in the runtime as 1-bit linears and computes finite logits; the interrupted run
//! leaves no output directory and the finished one no checkpoint directory.

use std::path::Path;

use lmq_quant::convert::ConvertOptions;
use lmq_quant::onebit::distill::checkpoint_dir_for;
use lmq_quant::onebit::run::quantize_onebit;
use lmq_quant::recipe::{FloatDtype, Recipe};
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::device::DeviceSpec;
use lmq_runtime::model::{HostWeight, Llama};
use lmq_runtime::weights::{DequantizedSource, MemorySource, WeightSource};
use lmq_runtime::Cpu;

fn losses(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("loss.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(2).unwrap().to_owned())
        .collect()
}

/// Decoder layers kept from SmolLM2's 30.
const LAYERS: usize = 2;

/// `ckpt` with only its first `layers` decoder layers (weights and config); embeddings, the
/// final norm and the head as they are.
fn first_layers(mut ckpt: Checkpoint, layers: usize) -> Checkpoint {
    let mut kept = MemorySource::default();
    for name in ckpt.weights.names() {
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split('.').next())
            .map(|i| i.parse::<usize>().unwrap());
        if layer.is_none_or(|l| l < layers) {
            let shape = ckpt.weights.shape(&name).unwrap();
            kept.insert(&name, shape, ckpt.weights.load_f32(&name).unwrap());
        }
    }
    assert!(ckpt.config.num_layers > layers);
    ckpt.config.num_layers = layers;
    ckpt.weights = Box::new(kept);
    ckpt
}

#[test]
fn real_onebit_run_resumes_to_the_same_losses_and_loads_as_one_bit() {
    let ckpt = first_layers(
        Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap(),
        LAYERS,
    );
    // Training text: this repository's README (never the evaluation text).
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = format!(
        "calibration: {{source: \"text:{}\", num_samples: 4, seqlen: 64, seed: 0}}\n\
         onebit: {{steps: 3, batch: 1, warmup: 1, lr: 0.001, checkpoint_every: 0}}\n",
        readme.display()
    );
    let recipe = Recipe::parse(&text, Path::new("onebit-test.yaml")).unwrap();
    let opts = ConvertOptions {
        dtype: FloatDtype::F32,
        force: false,
        recipe: Some(text.clone()),
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));

    let (_, report) = quantize_onebit(&ckpt, &recipe, &a, &opts, DeviceSpec::Cpu, None)
        .unwrap()
        .expect("finished");
    assert_eq!(report.steps_this_run, 3);
    assert!(!checkpoint_dir_for(&a).exists(), "checkpoints left behind");

    let stopped = quantize_onebit(&ckpt, &recipe, &b, &opts, DeviceSpec::Cpu, Some(1)).unwrap();
    assert!(stopped.is_none());
    assert!(!b.exists(), "an interrupted run wrote its output");
    assert!(checkpoint_dir_for(&b).join("current/state.json").exists());
    let (_, resumed) = quantize_onebit(&ckpt, &recipe, &b, &opts, DeviceSpec::Cpu, None)
        .unwrap()
        .expect("finished");
    assert_eq!(resumed.steps_this_run, 2, "resumed after the first step");
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(losses(&a).len(), 3);

    let out = Checkpoint::open(a.to_str().unwrap()).unwrap();
    assert_eq!(out.config.num_layers, LAYERS);
    let model =
        Llama::<Cpu>::load(&out.config, &*out.weights, &out.path, &Default::default()).unwrap();
    assert!(matches!(
        model.layers[0].mlp.down_proj.weight,
        HostWeight::OneBit(_)
    ));
    let ids = out
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    assert!(model.logits_of(&ids).iter().all(|v| v.is_finite()));

    // Through the wrappers too: the boxed source itself, and `--dequantize`'s view (where
    // the 1-bit linears stay 1-bit).
    let prefix = "model.layers.1.self_attn.o_proj";
    let boxed: &dyn WeightSource = &out.weights;
    assert!(boxed.load_onebit(prefix).unwrap().is_some());
    let deq = DequantizedSource::new(out.weights);
    assert!(deq.load_onebit(prefix).unwrap().is_some());
}
