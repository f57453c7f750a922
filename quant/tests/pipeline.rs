//! The layer-sequential pipeline on tiny seeded models: its host-side layer forward equals the
//! runtime's model, RTN through the pipeline equals plain RTN, and GPTQ through the pipeline
//! has lower output error than RTN on the same inputs and a packed result the runtime runs.

use std::path::Path;

use lmq_quant::pipeline::layer::{rms_norm, HostLayer, LayerGeometry};
use lmq_quant::pipeline::{self, PipelineOptions};
use lmq_quant::plan::QuantPlan;
use lmq_quant::recipe::Recipe;
use lmq_quant::rtn;
use lmq_quant::scheme::{QuantScheme, WeightMatrix};
use lmq_runtime::config::{Arch, ModelConfig};
use lmq_runtime::kernels::matmul_f32_nt;
use lmq_runtime::model::Llama;
use lmq_runtime::weights::{tiny_config, MemorySource, WeightSource};
use lmq_runtime::Cpu;

/// Host forward vs burn forward: same f32 math in a different order of operations.
const HOST_LOGITS_REL_TOL: f32 = 1e-4;

fn windows(c: &ModelConfig, n: usize, len: usize, seed: usize) -> Vec<Vec<u32>> {
    (0..n)
        .map(|w| {
            (0..len)
                .map(|i| ((w * 7919 + i * 104_729 + seed * 31) % c.vocab_size) as u32)
                .collect()
        })
        .collect()
}

fn runtime_logits(c: &ModelConfig, src: &dyn WeightSource, ids: &[u32]) -> Vec<f32> {
    let model = Llama::<Cpu>::load(c, src, Path::new("<test>"), &Default::default()).unwrap();
    model.logits_of(ids)
}

fn host_logits(c: &ModelConfig, src: &dyn WeightSource, ids: &[u32]) -> Vec<f32> {
    let d = c.hidden_size;
    let embed = src.load_f32("model.embed_tokens.weight").unwrap();
    let mut x: Vec<f32> = ids
        .iter()
        .flat_map(|&i| embed[i as usize * d..][..d].to_vec())
        .collect();
    let g = LayerGeometry::new(c, ids.len());
    for i in 0..c.num_layers {
        x = HostLayer::load(src, c, i).unwrap().forward(&g, &x);
    }
    let xn = rms_norm(
        &x,
        &src.load_f32("model.norm.weight").unwrap(),
        c.rms_norm_eps as f32,
    );
    let head = if c.tie_word_embeddings {
        embed
    } else {
        src.load_f32("lm_head.weight").unwrap()
    };
    matmul_f32_nt(&xn, &head, ids.len(), d, c.vocab_size)
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-6f32, |a, b| a.max(b.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() / scale < tol, "{what} at {i}: {a} vs {b}");
    }
}

#[test]
fn host_layer_stack_matches_runtime_forward() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let src = MemorySource::random(&c, 11);
        let ids = &windows(&c, 1, 23, 0)[0];
        assert_close(
            &host_logits(&c, &src, ids),
            &runtime_logits(&c, &src, ids),
            HOST_LOGITS_REL_TOL,
            &format!("{arch:?}"),
        );
    }
}

fn plan(c: &ModelConfig, src: &dyn WeightSource, pass: &str) -> QuantPlan {
    let text = format!(
        "calibration: {{source: tokens:x.i32, num_samples: 4, seqlen: 16}}\nstages:\n  - passes:\n      - {pass}\n"
    );
    let recipe = Recipe::parse(&text, Path::new("<test>.yaml")).unwrap();
    QuantPlan::from_recipe(&recipe, src, c.tie_word_embeddings).unwrap()
}

fn run(c: &ModelConfig, src: &dyn WeightSource, plan: &QuantPlan) -> pipeline::CalibratedModel {
    pipeline::run(
        c,
        src,
        plan,
        &windows(c, 4, 24, 1),
        PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn rtn_through_the_pipeline_is_plain_rtn() {
    let c = tiny_config(Arch::Qwen2);
    let src = MemorySource::random(&c, 5);
    let m = run(
        &c,
        &src,
        &plan(
            &c,
            &src,
            "rtn: {bits: 4, group_size: 16, ignore: [lm_head]}",
        ),
    );
    assert_eq!(m.packed.len(), 7 * c.num_layers);
    let scheme = QuantScheme {
        bits: 4,
        group_size: Some(16),
        symmetric: true,
    };
    for (name, p) in &m.packed {
        let shape = src.shape(name).unwrap();
        let w = src.load_f32(name).unwrap();
        let q = rtn::quantize(
            &WeightMatrix::new(name, &w, shape[0], shape[1]).unwrap(),
            &scheme,
        )
        .unwrap();
        assert_eq!(p.dequantize_ref(), rtn::dequantize(&q).unwrap(), "{name}");
    }
    // No Hessian was needed, so none was reported.
    assert!(m
        .layers
        .iter()
        .flat_map(|l| &l.linears)
        .all(|r| r.rel_output_error.is_none()));
}

#[test]
fn gptq_through_the_pipeline_beats_rtn_per_linear() {
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let src = MemorySource::random(&c, 9);
        for pass in [
            "gptq: {bits: 3, group_size: 16, ignore: [lm_head]}",
            "gptq: {bits: 4, group_size: channel, symmetric: false, act_order: true, ignore: [lm_head]}",
            "gptq: {bits: 4, group_size: 16, act_order: true, ignore: [lm_head]}",
        ] {
            let m = run(&c, &src, &plan(&c, &src, pass));
            assert_eq!(m.packed.len(), 7 * c.num_layers);
            let (mut g_sum, mut r_sum) = (0.0, 0.0);
            for r in m.layers.iter().flat_map(|l| &l.linears) {
                let (g, rt) = (r.rel_output_error.unwrap(), r.rtn_rel_output_error.unwrap());
                assert!(g.is_finite() && g > 0.0, "{pass} {}: {g}", r.name);
                assert!(g <= rt * 1.05, "{arch:?} {pass} {}: GPTQ {g} vs RTN {rt}", r.name);
                g_sum += g;
                r_sum += rt;
            }
            assert!(g_sum < 0.9 * r_sum, "{arch:?} {pass}: GPTQ {g_sum} vs RTN {r_sum}");
        }
    }
}

#[test]
fn pipeline_rejects_out_of_vocabulary_calibration() {
    let c = tiny_config(Arch::Llama);
    let src = MemorySource::random(&c, 5);
    let plan = plan(&c, &src, "gptq: {bits: 4, group_size: 16}");
    let bad = vec![vec![1, 2, c.vocab_size as u32]];
    let e = pipeline::run(
        &c,
        &src,
        &plan,
        &bad,
        PipelineOptions::default(),
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

/// Codes allowed to differ between the host pipeline and the same pipeline with its Hessians
/// and GPTQ loop on a burn device: the sums run in other orders, so a weight on a rounding
/// edge can land on the other side (and later layers then see slightly other inputs).
const DEVICE_CODE_MISMATCH_MAX: f64 = 0.02;
/// Relative difference allowed between the two runs' per-linear output errors.
const DEVICE_ERROR_REL_TOL: f64 = 0.05;

#[test]
fn gptq_on_a_burn_device_matches_the_host_pipeline() {
    use lmq_quant::device::BurnDevice;
    use std::sync::Arc;
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let src = MemorySource::random(&c, 9);
        for pass in [
            "gptq: {bits: 4, group_size: 16, act_order: true, static_groups: true, ignore: [lm_head]}",
            "gptq: {bits: 8, group_size: channel, symmetric: false, ignore: [lm_head]}",
        ] {
            let plan = plan(&c, &src, pass);
            let host = run(&c, &src, &plan);
            let device = pipeline::run(
                &c,
                &src,
                &plan,
                &windows(&c, 4, 24, 1),
                PipelineOptions {
                    device: Some(Arc::new(BurnDevice::<Cpu>::new(Default::default(), "flex"))),
                    ..PipelineOptions::default()
                },
                &mut |_| {},
            )
            .unwrap();
            let (mut differ, mut total) = (0usize, 0usize);
            for (name, p) in &host.packed {
                let q = &device.packed[name];
                let (a, b) = (p.dequantize_ref(), q.dequantize_ref());
                differ += a.iter().zip(&b).filter(|(x, y)| x != y).count();
                total += a.len();
            }
            let frac = differ as f64 / total as f64;
            assert!(
                frac <= DEVICE_CODE_MISMATCH_MAX,
                "{arch:?} {pass}: {differ} of {total} weights differ"
            );
            let reports = |m: &pipeline::CalibratedModel| -> Vec<(String, f64)> {
                m.layers
                    .iter()
                    .flat_map(|l| &l.linears)
                    .map(|r| (r.name.clone(), r.rel_output_error.unwrap()))
                    .collect()
            };
            for ((n, a), (_, b)) in reports(&host).iter().zip(reports(&device)) {
                assert!(
                    (a - b).abs() <= DEVICE_ERROR_REL_TOL * a,
                    "{arch:?} {pass} {n}: output error host {a} vs device {b}"
                );
            }
        }
    }
}

/// AWQ's searches (scales, then clipping) and the calibration forwards with their linear
/// products on a burn device choose what the host chooses: the same exponent for every
/// mapping and block errors within round-off.
#[test]
fn awq_on_a_burn_device_matches_the_host_pipeline() {
    use lmq_quant::device::BurnDevice;
    use std::sync::Arc;
    for arch in [Arch::Llama, Arch::Qwen2] {
        let c = tiny_config(arch);
        let src = MemorySource::random(&c, 9);
        let text = "calibration: {source: tokens:x.i32, num_samples: 4, seqlen: 16}\nstages:\n  - \
             passes:\n      - awq: {scheme: W4A16_ASYM, group_size: 16}\n      - rtn: {scheme: \
             W4A16_ASYM, group_size: 16, ignore: [lm_head]}\n";
        let recipe = Recipe::parse(text, Path::new("<test>.yaml")).unwrap();
        let plan = QuantPlan::from_recipe(&recipe, &src, c.tie_word_embeddings).unwrap();
        let host = run(&c, &src, &plan);
        let device = pipeline::run(
            &c,
            &src,
            &plan,
            &windows(&c, 4, 24, 1),
            PipelineOptions {
                device: Some(Arc::new(BurnDevice::<Cpu>::new(Default::default(), "flex"))),
                ..PipelineOptions::default()
            },
            &mut |_| {},
        )
        .unwrap();
        for (lh, ld) in host.layers.iter().zip(&device.layers) {
            let (ah, ad) = (lh.awq.as_ref().unwrap(), ld.awq.as_ref().unwrap());
            assert_eq!(ah.mappings.len(), ad.mappings.len());
            for (mh, md) in ah.mappings.iter().zip(&ad.mappings) {
                assert_eq!(
                    mh.ratio, md.ratio,
                    "{arch:?} layer {} {}",
                    lh.index, mh.mapping
                );
                assert!(
                    (mh.loss_awq - md.loss_awq).abs() <= DEVICE_ERROR_REL_TOL * mh.loss_awq,
                    "{arch:?} layer {} {}: {} vs {}",
                    lh.index,
                    mh.mapping,
                    mh.loss_awq,
                    md.loss_awq
                );
            }
        }
        let (mut differ, mut total) = (0usize, 0usize);
        for (name, p) in &host.packed {
            let (a, b) = (p.dequantize_ref(), device.packed[name].dequantize_ref());
            differ += a.iter().zip(&b).filter(|(x, y)| x != y).count();
            total += a.len();
        }
        assert!(
            differ as f64 <= DEVICE_CODE_MISMATCH_MAX * total as f64,
            "{arch:?}: {differ} of {total} weights differ"
        );
    }
}

/// `float_inputs: true` calibrates every layer on the float model's activations, as AutoAWQ
/// and llm-compressor do: AWQ + RTN then searches exactly what AWQ alone (no quantizer, so
/// nothing quantized is passed on) searches, layer for layer, and without it the layers
/// after the first see different inputs.
#[test]
fn awq_float_inputs_calibrate_on_the_float_model() {
    let c = tiny_config(Arch::Qwen2);
    let src = MemorySource::random(&c, 13);
    let awq = |extra: &str, rtn: bool| {
        let quantizer = match rtn {
            true => "\n      - rtn: {scheme: W4A16_ASYM, group_size: 16, ignore: [lm_head]}",
            false => "",
        };
        let text = format!(
            "calibration: {{source: tokens:x.i32, num_samples: 4, seqlen: 16}}\nstages:\n  - \
             passes:\n      - awq: {{scheme: W4A16_ASYM, group_size: 16, clip: false{extra}}}\
             {quantizer}\n"
        );
        let recipe = Recipe::parse(&text, Path::new("<test>.yaml")).unwrap();
        let plan = QuantPlan::from_recipe(&recipe, &src, c.tie_word_embeddings).unwrap();
        run(&c, &src, &plan)
    };
    let losses = |m: &pipeline::CalibratedModel| -> Vec<Vec<(Option<f32>, f64, f64)>> {
        m.layers
            .iter()
            .filter_map(|l| l.awq.as_ref())
            .map(|a| {
                a.mappings
                    .iter()
                    .map(|m| (m.ratio, m.loss_rtn, m.loss_awq))
                    .collect()
            })
            .collect()
    };
    let alone = losses(&awq("", false));
    let float = losses(&awq(", float_inputs: true", true));
    let quantized = losses(&awq("", true));
    assert!(alone.len() >= 2 && alone[0].len() >= 2, "{alone:?}");
    assert_eq!(float, alone, "float inputs: the float model's statistics");
    assert_eq!(
        quantized[0], alone[0],
        "the first layer's inputs are the embeddings"
    );
    assert_ne!(
        quantized[1], alone[1],
        "later layers see the quantized layers' outputs"
    );
}
