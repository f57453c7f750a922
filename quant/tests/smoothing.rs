//! AWQ and SmoothQuant through the calibrated pipeline. Scaling alone (no quantization, no clipping) must
//! leave the float model's function unchanged: every mapping's fold (norm weight, v_proj and
//! up_proj rows, their biases) is checked by comparing the runtime's logits of the smoothed
//! checkpoint with the original's, on tiny seeded models (all four mappings, with biases) and
//! on the first layer of the real SmolLM2. With quantization, AWQ's block errors are at
//! most plain rounding's, and below it where activations have outliers (real SmolLM2).

use std::path::{Path, PathBuf};

use lmq_calibration::{build, Source};
use lmq_quant::pipeline::{self, CalibratedModel, PipelineOptions};
use lmq_quant::plan::QuantPlan;
use lmq_quant::recipe::Recipe;
use lmq_runtime::assets::{ensure, Asset};
use lmq_runtime::checkpoint::Checkpoint;
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::model::Llama;
use lmq_runtime::packed::ActQuant;
use lmq_runtime::weights::{tiny_config, MemorySource, WeightSource};
use lmq_runtime::Cpu;

/// Scaling by `s` then `1/s` in f32 changes each weight by a few ulps; logits move by about
/// that, relative to their scale.
const INVARIANCE_REL_TOL: f32 = 1e-4;

fn logits(c: &ModelConfig, src: &dyn WeightSource, ids: &[u32]) -> Vec<f32> {
    let model = Llama::<Cpu>::load(c, src, Path::new("<test>"), &Default::default()).unwrap();
    model.logits_of(ids)
}

/// max |a − b| / max |a|.
fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

fn plan_for(text: &str, src: &dyn WeightSource, tied: bool) -> QuantPlan {
    let recipe = Recipe::parse(text, Path::new("<test>.yaml")).unwrap();
    QuantPlan::from_recipe(&recipe, src, tied).unwrap()
}

/// The original tensors with the pipeline's changed floats put in their place.
fn smoothed(src: &dyn WeightSource, model: &CalibratedModel) -> MemorySource {
    let mut out = MemorySource::default();
    for name in src.names() {
        let shape = src.shape(&name).unwrap();
        let data = match model.floats.get(&name) {
            Some(v) => v.clone(),
            None => src.load_f32(&name).unwrap(),
        };
        out.insert(&name, shape, data);
    }
    out
}

fn windows(c: &ModelConfig, n: usize, len: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|w| {
            (0..len)
                .map(|i| ((w * 7919 + i * 104_729) % c.vocab_size) as u32)
                .collect()
        })
        .collect()
}

/// Runs a scaling-only plan through the pipeline on four windows and checks that the
/// smoothed checkpoint computes the original logits.
fn run_scaling_only(
    c: &ModelConfig,
    src: &MemorySource,
    plan: &QuantPlan,
    what: &str,
) -> CalibratedModel {
    let model = pipeline::run(
        c,
        src,
        plan,
        &windows(c, 4, 24),
        PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let ids = &windows(c, 1, 20)[0];
    let d = rel_diff(
        &logits(c, src, ids),
        &logits(c, &smoothed(src, &model), ids),
    );
    assert!(d < INVARIANCE_REL_TOL, "{what}: logits moved by {d:e}");
    model
}

const SCALE_ONLY: &str = "calibration: {source: tokens:x.i32, num_samples: 4, seqlen: 24}\n\
     stages:\n  - passes:\n      - awq: {scheme: W4A16, group_size: 8, clip: false}\n";

#[test]
fn awq_scaling_alone_keeps_tiny_models_logits_on_every_mapping() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        // Multi-head attention so the v→o fold exists too; Qwen2 brings q/k/v biases.
        let c = ModelConfig {
            num_kv_heads: 4,
            ..tiny_config(arch)
        };
        let mut src = MemorySource::random(&c, 21);
        // Salient input channels, the case AWQ scales for.
        for l in 0..c.num_layers {
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                let name = format!("model.layers.{l}.{norm}.weight");
                let mut w = src.load_f32(&name).unwrap();
                for j in (0..w.len()).step_by(7) {
                    w[j] *= 12.0;
                }
                src.insert(&name, vec![w.len()], w);
            }
        }
        let plan = plan_for(SCALE_ONLY, &src, c.tie_word_embeddings);
        assert!(plan.linears.is_empty());
        let model = run_scaling_only(&c, &src, &plan, &format!("{arch:?}"));
        let mappings: Vec<_> = model
            .layers
            .iter()
            .flat_map(|l| &l.awq.as_ref().unwrap().mappings)
            .collect();
        assert_eq!(
            mappings.len(),
            4 * c.num_layers,
            "{arch:?}: all four mappings"
        );
        assert!(
            mappings.iter().filter(|m| m.ratio.is_some()).count() >= 4,
            "{arch:?}: scaling should win somewhere: {mappings:?}"
        );
        for m in &mappings {
            assert!(m.loss_awq <= m.loss_rtn, "{m:?}");
        }
        // Every norm and every producer/balance linear changed is written as a float.
        assert!(model
            .floats
            .contains_key("model.layers.0.input_layernorm.weight"));
        if arch == Arch::Qwen2 && mappings[1].ratio.is_some() {
            assert!(model
                .floats
                .contains_key("model.layers.0.self_attn.v_proj.bias"));
        }
    }
}

/// `sink_tokens` leaves each window's first tokens out of AWQ's means and losses (they still
/// run as context): the function stays the same and every plain-rounding block loss shrinks
/// by the left-out rows' share.
#[test]
fn awq_sink_tokens_drop_the_first_rows_from_the_losses_and_keep_the_function() {
    let c = tiny_config(Arch::Qwen2);
    let src = MemorySource::random(&c, 29);
    let with = SCALE_ONLY.replace("clip: false}", "clip: false, sink_tokens: 1}");
    let plan0 = plan_for(SCALE_ONLY, &src, c.tie_word_embeddings);
    let plan1 = plan_for(&with, &src, c.tie_word_embeddings);
    assert_eq!(plan1.awq.as_ref().unwrap().options.sink_tokens, 1);
    let m0 = run_scaling_only(&c, &src, &plan0, "sink 0");
    let m1 = run_scaling_only(&c, &src, &plan1, "sink 1");
    let losses = |m: &CalibratedModel| -> Vec<f64> {
        m.layers
            .iter()
            .flat_map(|l| &l.awq.as_ref().unwrap().mappings)
            .map(|m| m.loss_rtn)
            .collect()
    };
    let (l0, l1) = (losses(&m0), losses(&m1));
    assert_eq!(l0.len(), l1.len());
    for (a, b) in l0.iter().zip(&l1) {
        assert!(b < a && *b > 0.0, "sink 1 {b} against sink 0 {a}");
    }
}

#[test]
fn smoothquant_alone_keeps_tiny_models_logits() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let mut src = MemorySource::random(&c, 33);
        for l in 0..c.num_layers {
            let name = format!("model.layers.{l}.post_attention_layernorm.weight");
            let mut w = src.load_f32(&name).unwrap();
            w[3] *= 30.0;
            src.insert(&name, vec![w.len()], w);
        }
        let text = "calibration: {source: tokens:x.i32, num_samples: 4, seqlen: 24}\n\
                    stages:\n  - passes:\n      - smoothquant: {alpha: 0.8, smooth_down: true, \
                    mapping_alpha: {input_layernorm: 0.5, up_proj: 0.6}}\n";
        let plan = plan_for(text, &src, c.tie_word_embeddings);
        let sp = plan.smoothquant.as_ref().unwrap();
        assert_eq!(
            (sp.alpha_attention, sp.alpha_mlp, sp.alpha_down),
            (0.5, 0.8, Some(0.6))
        );
        let model = run_scaling_only(&c, &src, &plan, &format!("{arch:?}"));
        for l in &model.layers {
            assert_eq!(l.smoothquant.len(), 3, "{arch:?}");
            let mlp = &l.smoothquant[1];
            assert!(
                mlp.outlier_ratio_after < mlp.outlier_ratio_before,
                "{arch:?}: {mlp:?}"
            );
        }
        assert!(model
            .floats
            .contains_key("model.layers.1.post_attention_layernorm.weight"));
        for t in ["mlp.up_proj.weight", "mlp.down_proj.weight"] {
            assert!(
                model.floats.contains_key(&format!("model.layers.1.{t}")),
                "{t}"
            );
        }
    }
}

#[test]
fn awq_needs_a_scheme_for_linears_nobody_quantizes() {
    let c = tiny_config(Arch::Llama);
    let src = MemorySource::random(&c, 1);
    let text = "calibration: {source: tokens:x.i32, num_samples: 4, seqlen: 24}\n\
                stages:\n  - passes:\n      - awq: {}\n      - rtn: {scheme: W4A16, group_size: 8, \
                targets: ['re:.*mlp.*']}\n";
    let recipe = Recipe::parse(text, Path::new("<test>.yaml")).unwrap();
    let err = QuantPlan::from_recipe(&recipe, &src, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<test>.yaml") && err.contains("self_attn") && err.contains("scheme"),
        "{err}"
    );
}

fn calib_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/calib-smollm2-hellaswag-128x512-seed0.i32")
}

fn smollm2_windows(ckpt: &Checkpoint, n: usize, len: usize) -> Vec<Vec<u32>> {
    let full = build(&Source::Tokens(calib_file()), &ckpt.tokenizer, n, 512, 0).unwrap();
    full.windows.iter().map(|w| w[..len].to_vec()).collect()
}

#[test]
fn awq_on_smollm2_scales_without_changing_the_function_and_beats_rounding() {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let c = &ckpt.config;
    let src = &*ckpt.weights;
    let calib = smollm2_windows(&ckpt, 4, 128);
    let layers = "targets: ['re:model\\.layers\\.0\\..*']";

    // Scaling only: the smoothed float model computes the same logits.
    let text = format!(
        "calibration: {{source: tokens:x.i32, num_samples: 4, seqlen: 128}}\nstages:\n  \
         - passes:\n      - awq: {{scheme: W4A16_ASYM, group_size: 64, clip: false, {layers}}}\n"
    );
    let plan = plan_for(&text, src, true);
    let model = pipeline::run(
        c,
        src,
        &plan,
        &calib,
        PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(model.layers.len(), 1);
    let awq: Vec<_> = model
        .layers
        .iter()
        .map(|l| l.awq.as_ref().unwrap())
        .collect();
    for a in &awq {
        // SmolLM2 has grouped-query attention: no v→o fold.
        assert_eq!(a.mappings.len(), 3, "{a:?}");
        assert!(a.skipped.iter().any(|s| s.contains("v_proj")), "{a:?}");
    }
    // Real activations have outlier channels: scaling lowers the attention block's error a
    // lot (×0.2–0.4 measured on the full set).
    for a in &awq {
        let qkv = &a.mappings[0];
        assert!(
            qkv.ratio.is_some() && qkv.loss_awq < 0.7 * qkv.loss_rtn,
            "{qkv:?}"
        );
    }
    let ids: Vec<u32> = calib[0][..64].to_vec();
    let d = rel_diff(
        &logits(c, src, &ids),
        &logits(c, &smoothed(src, &model), &ids),
    );
    assert!(d < INVARIANCE_REL_TOL, "logits moved by {d:e}");
}

#[test]
fn smoothquant_alpha_search_needs_the_quantizing_pass_it_simulates() {
    let c = tiny_config(Arch::Llama);
    let src = MemorySource::random(&c, 2);
    let text = "calibration: {source: tokens:x.i32, num_samples: 4, seqlen: 24}\n\
                stages:\n  - passes:\n      - smoothquant: {alpha_search: {grid: 4}}\n      \
                - rtn: {scheme: W8A8, targets: ['re:.*mlp.*']}\n";
    let recipe = Recipe::parse(text, Path::new("<test>.yaml")).unwrap();
    let err = QuantPlan::from_recipe(&recipe, &src, true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("<test>.yaml") && err.contains("self_attn") && err.contains("alpha search"),
        "{err}"
    );
}

#[test]
fn smoothquant_alpha_search_on_smollm2_picks_per_mapping_and_lowers_w8a8_block_error() {
    let ckpt = Checkpoint::open_gguf(&ensure(Asset::SmolLm2).unwrap()).unwrap();
    let c = &ckpt.config;
    let src = &*ckpt.weights;
    let calib = smollm2_windows(&ckpt, 4, 128);
    let layers = "targets: ['re:model\\.layers\\.0\\..*']";
    let text = format!(
        "calibration: {{source: tokens:x.i32, num_samples: 4, seqlen: 128}}\nstages:\n  \
         - passes:\n      - smoothquant: {{smooth_down: true, alpha_search: {{grid: 10, tokens: \
         512}}, {layers}}}\n      - rtn: {{scheme: W8A8, {layers}}}\n"
    );
    let plan = plan_for(&text, src, true);
    let search = plan.smoothquant.as_ref().unwrap().search.as_ref().unwrap();
    assert_eq!(
        search.schemes.len(),
        7,
        "every layer-0 linear, simulated as W8A8"
    );
    assert!(search
        .schemes
        .values()
        .all(|(_, int8_act)| *int8_act == Some(ActQuant::Symmetric)));
    let model = pipeline::run(
        c,
        src,
        &plan,
        &calib,
        PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let reports = &model.layers[0].smoothquant;
    assert_eq!(reports.len(), 3, "{reports:?}");
    for r in reports {
        let (l, l0) = (r.loss.unwrap(), r.loss_unsmoothed.unwrap());
        assert!(l <= l0, "{r:?}");
    }
    // Layer 0's attention input has outlier channels that per-token int8 flattens badly:
    // smoothing at the chosen α cuts the block's error severalfold (×0.18 on 4096 tokens).
    let qkv = &reports[0];
    assert!(
        qkv.alpha.is_some() && qkv.loss.unwrap() < 0.5 * qkv.loss_unsmoothed.unwrap(),
        "{qkv:?}"
    );
}
