//! The layer-sequential calibration pipeline: calibration windows are embedded once, then
//! each decoder layer in turn collects the statistics its passes need from the activations
//! that actually reach it (outputs of the already-quantized layers before it), quantizes its
//! linears in true-sequential order (q/k/v → o → gate/up → down, each group seeing inputs
//! recomputed through the groups quantized before it) and passes its quantized outputs on.
//! Peak memory is the calibration activations (two `[tokens, hidden]` buffers) plus one
//! layer's weights and Hessians; the model itself is read one layer at a time.

pub mod awq_layer;
pub mod hessian;
pub mod layer;
pub mod mappings;
pub mod smooth_layer;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use lmq_runtime::config::ModelConfig;
use lmq_runtime::packed::PackedLinear;
use lmq_runtime::weights::WeightSource;
use serde::Serialize;

use crate::device::QuantDevice;
use crate::gptq;
use crate::plan::{LinearMethod, QuantPlan};
use crate::rtn;
use crate::scheme::WeightMatrix;
use awq_layer::{awq_layer, AwqLayerReport};
use hessian::{relative_output_error, HessianAccumulator};
use layer::{HostLayer, LayerGeometry, LinearGroup};
use smooth_layer::{smooth_layer, SmoothReport};

/// Largest MLP activation buffer (`[tokens, ffn]` f32) kept between computing down_proj's
/// Hessian and the layer's outputs; beyond it gate/up are recomputed instead.
const ACT_CACHE_BYTES: usize = 2 << 30;

/// Pipeline switches that do not change the quantized result (beyond round-off).
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// Also round each calibrated linear with RTN (same scheme) and report its output error
    /// beside GPTQ's, on the same Hessian: the per-layer evidence that calibration helps.
    pub compare_rtn: bool,
    /// Where the Hessian sums, GPTQ's column loop and the layers' linear products (the
    /// calibration forwards, AWQ's and SmoothQuant's block outputs) run (`None`: the host).
    pub device: Option<Arc<dyn QuantDevice>>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            compare_rtn: true,
            device: None,
        }
    }
}

impl PipelineOptions {
    /// An empty Hessian accumulator where this run computes them.
    fn accumulator(&self, n: usize) -> HessianAccumulator {
        match &self.device {
            Some(d) => HessianAccumulator::on_device(n, d.as_ref()),
            None => HessianAccumulator::new(n),
        }
    }
}

/// What happened to one linear.
#[derive(Debug, Clone, Serialize)]
pub struct LinearReport {
    pub name: String,
    pub method: &'static str,
    /// ‖(W−Ŵ)X‖² / ‖WX‖² on this layer's calibration inputs (absent without a Hessian).
    pub rel_output_error: Option<f64>,
    /// The same for plain RTN at the same scheme, when compared.
    pub rtn_rel_output_error: Option<f64>,
    /// GPTQ's own loss estimate (llm-compressor's logged "error").
    pub gptq_loss: Option<f64>,
    pub dampening_used: Option<f64>,
    pub retries: u32,
    pub dead_columns: usize,
    pub seconds: f64,
}

/// One decoder layer's reports.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub index: usize,
    pub seconds: f64,
    pub linears: Vec<LinearReport>,
    /// What AWQ chose, when the recipe has an `awq` pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awq: Option<AwqLayerReport>,
    /// What SmoothQuant did, when the recipe has a `smoothquant` pass.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoothquant: Vec<SmoothReport>,
}

/// Progress of a pipeline run, for a progress bar.
#[derive(Debug)]
pub enum PipelineEvent<'a> {
    /// Calibration windows embedded; layers start.
    Start { layers: usize, tokens: usize },
    /// Work inside a layer (a short description).
    Stage { layer: usize, what: &'a str },
    /// A layer is done.
    LayerDone(&'a LayerReport),
}

/// The result: every quantized linear packed, the float tensors a pass changed, and the
/// reports.
#[derive(Debug)]
pub struct CalibratedModel {
    pub packed: HashMap<String, PackedLinear>,
    /// Unquantized tensors whose values differ from the checkpoint's (AWQ's folded scales).
    pub floats: HashMap<String, Vec<f32>>,
    pub layers: Vec<LayerReport>,
    pub calibration_tokens: usize,
    pub seconds: f64,
}

/// Runs the plan's quantization on the model (`config`, `weights`) with the calibration
/// `windows` (token ids, each a window evaluated from position 0).
pub fn run(
    config: &ModelConfig,
    weights: &dyn WeightSource,
    plan: &QuantPlan,
    windows: &[Vec<u32>],
    opts: PipelineOptions,
    progress: &mut dyn FnMut(PipelineEvent),
) -> Result<CalibratedModel> {
    let started = Instant::now();
    let c = config;
    let d = c.hidden_size;
    if let Some(name) = plan
        .linears
        .keys()
        .find(|n| !n.starts_with("model.layers.") && *n != "lm_head.weight")
    {
        bail!("{name}: the calibrated pipeline quantizes decoder-layer linears and lm_head only");
    }
    if windows.is_empty() && plan.needs_calibration() {
        bail!("no calibration windows");
    }
    let longest = windows.iter().map(Vec::len).max().unwrap_or(0);
    if longest > c.max_position_embeddings {
        bail!(
            "calibration windows of {longest} tokens exceed the model's context of {}",
            c.max_position_embeddings
        );
    }
    let geom = LayerGeometry::new(c, longest.max(1));

    // Embed all windows.
    let embed = weights
        .load_f32("model.embed_tokens.weight")
        .context("loading model.embed_tokens.weight")?;
    let mut x: Vec<Vec<f32>> = Vec::with_capacity(windows.len());
    for (wi, w) in windows.iter().enumerate() {
        let mut rows = Vec::with_capacity(w.len() * d);
        for &id in w {
            let id = id as usize;
            if id >= c.vocab_size {
                bail!(
                    "calibration window {wi}: token id {id} is outside the vocabulary ({})",
                    c.vocab_size
                );
            }
            rows.extend_from_slice(&embed[id * d..(id + 1) * d]);
        }
        x.push(rows);
    }
    let tied_head = c.tie_word_embeddings.then_some(embed);
    let tokens: usize = windows.iter().map(Vec::len).sum();
    // Layers after the last one with a quantized linear need no calibration (unless lm_head
    // is quantized, which needs the final hidden states).
    let layer_of = |n: &str| -> Option<usize> {
        n.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let run_layers = if plan.method("lm_head.weight").is_some() {
        c.num_layers
    } else {
        plan.linears
            .keys()
            .chain(plan.awq.iter().flat_map(|a| a.schemes.keys()))
            .chain(plan.smoothquant.iter().flat_map(|s| s.targets.iter()))
            .filter_map(|n| layer_of(n))
            .max()
            .map_or(0, |m| m + 1)
    };
    progress(PipelineEvent::Start {
        layers: run_layers,
        tokens,
    });

    let mut packed = HashMap::new();
    let mut floats = HashMap::new();
    let mut layers = Vec::with_capacity(c.num_layers);
    for li in 0..run_layers {
        let t0 = Instant::now();
        let mut layer = HostLayer::load(weights, c, li)?;
        layer.set_device(opts.device.clone());
        let mut reports = Vec::new();
        let mut stage = |what: &str| progress(PipelineEvent::Stage { layer: li, what });
        let prefix = format!("model.layers.{li}");
        let mut changed = BTreeSet::new();
        let smooth_report = match &plan.smoothquant {
            Some(s) => {
                stage("smoothquant");
                let (r, names) = smooth_layer(&mut layer, &geom, &x, s, &prefix);
                changed.extend(names);
                r
            }
            None => Vec::new(),
        };
        let awq_report = match &plan.awq {
            Some(a) => {
                stage("awq");
                let (r, names) = awq_layer(&mut layer, &geom, &x, a, &prefix)?;
                changed.extend(names);
                Some(r)
            }
            None => None,
        };
        // The scaled float layer, when the next layer is to be calibrated on its outputs.
        let float_layer = plan
            .awq
            .as_ref()
            .filter(|a| a.options.float_inputs)
            .map(|_| layer.clone());

        stage("q/k/v");
        quantize_group(
            &mut layer,
            LinearGroup::Qkv,
            plan,
            &opts,
            &mut packed,
            &mut reports,
            |l, sink| x.iter().for_each(|xw| sink(&l.attn_norm(&geom, xw))),
        )?;
        stage("attention");
        let mut buf: Vec<Vec<f32>> = x
            .iter()
            .map(|xw| layer.attention(&geom, &layer.attn_norm(&geom, xw)))
            .collect();
        stage("o_proj");
        quantize_group(
            &mut layer,
            LinearGroup::AttnOut,
            plan,
            &opts,
            &mut packed,
            &mut reports,
            |_, sink| buf.iter().for_each(|a| sink(a)),
        )?;
        for (b, xw) in buf.iter_mut().zip(&x) {
            *b = layer.attn_residual(xw, b);
        }
        let h = buf;
        stage("gate/up");
        quantize_group(
            &mut layer,
            LinearGroup::MlpIn,
            plan,
            &opts,
            &mut packed,
            &mut reports,
            |l, sink| h.iter().for_each(|hw| sink(&l.mlp_norm(&geom, hw))),
        )?;
        stage("down_proj");
        // SiLU(gate)·up does not depend on down_proj: keep it for the outputs when it fits
        // the budget instead of running gate/up a second time.
        let keep_act = tokens * c.intermediate_size * 4 <= ACT_CACHE_BYTES;
        let mut acts: Vec<Vec<f32>> = Vec::new();
        quantize_group(
            &mut layer,
            LinearGroup::MlpOut,
            plan,
            &opts,
            &mut packed,
            &mut reports,
            |l, sink| {
                for hw in &h {
                    let a = l.mlp_act(&l.mlp_norm(&geom, hw));
                    sink(&a);
                    if keep_act {
                        acts.push(a);
                    }
                }
            },
        )?;
        stage("outputs");
        match &float_layer {
            Some(fl) => {
                drop(acts);
                drop(h);
                for xw in x.iter_mut() {
                    *xw = fl.forward(&geom, xw);
                }
            }
            None => {
                for (wi, (xw, hw)) in x.iter_mut().zip(&h).enumerate() {
                    *xw = match acts.get(wi) {
                        Some(a) => layer.mlp_residual(hw, a),
                        None => layer.mlp_residual(hw, &layer.mlp_act(&layer.mlp_norm(&geom, hw))),
                    };
                }
                drop(acts);
            }
        }
        drop(float_layer);
        for name in changed {
            if plan.method(&name).is_none() {
                let v = layer
                    .tensor(&prefix, &name)
                    .with_context(|| format!("{name}: changed by a pass but not in the layer"))?;
                floats.insert(name, v.to_vec());
            }
        }
        let report = LayerReport {
            index: li,
            seconds: t0.elapsed().as_secs_f64(),
            linears: reports,
            awq: awq_report,
            smoothquant: smooth_report,
        };
        progress(PipelineEvent::LayerDone(&report));
        layers.push(report);
    }

    if let Some(method) = plan.method("lm_head.weight") {
        let mut head = layer::HostLinear {
            name: "lm_head.weight".into(),
            weight: match tied_head {
                Some(e) => e,
                None => weights.load_f32("lm_head.weight")?,
            },
            bias: None,
            out: c.vocab_size,
            inp: d,
            device: opts.device.clone(),
        };
        let norm = weights.load_f32("model.norm.weight")?;
        let h = method.needs_hessian().then(|| {
            let mut acc = opts.accumulator(d);
            let hopts = method.hessian_options().unwrap_or_default();
            for xw in &x {
                acc.add_with(&layer::rms_norm(xw, &norm, geom.eps), &hopts);
            }
            acc.finish()
        });
        let mut reports = Vec::new();
        let h32 = h.as_deref().map(to_f32);
        quantize_linear(
            &mut head,
            method,
            h.as_deref().zip(h32.as_deref()),
            &opts,
            &mut packed,
            &mut reports,
        )?;
        layers.push(LayerReport {
            index: c.num_layers,
            seconds: reports[0].seconds,
            linears: reports,
            awq: None,
            smoothquant: Vec::new(),
        });
    }
    Ok(CalibratedModel {
        packed,
        floats,
        layers,
        calibration_tokens: tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Quantizes the planned linears of one group; the Hessian (shared by the group, since its
/// linears read the same input) is accumulated only if a method needs it.
fn quantize_group(
    layer: &mut HostLayer,
    group: LinearGroup,
    plan: &QuantPlan,
    opts: &PipelineOptions,
    packed: &mut HashMap<String, PackedLinear>,
    reports: &mut Vec<LinearReport>,
    inputs: impl FnOnce(&HostLayer, &mut dyn FnMut(&[f32])),
) -> Result<()> {
    let methods: Vec<Option<LinearMethod>> = layer
        .group_mut(group)
        .iter()
        .map(|l| plan.method(&l.name).copied())
        .collect();
    let hessian = if methods.iter().flatten().any(LinearMethod::needs_hessian) {
        let n = layer.group_mut(group)[0].inp;
        let mut acc = opts.accumulator(n);
        let hopts = methods
            .iter()
            .flatten()
            .find_map(LinearMethod::hessian_options)
            .unwrap_or_default();
        if let Some(other) = methods
            .iter()
            .flatten()
            .filter_map(LinearMethod::hessian_options)
            .find(|o| *o != hopts)
        {
            bail!(
                "linears reading the same input need the same Hessian options: {hopts:?} vs {other:?}"
            );
        }
        inputs(layer, &mut |xw| acc.add_with(xw, &hopts));
        Some(acc.finish())
    } else {
        None
    };
    // The f32 copy the error figures use, made once for the whole group.
    let h32 = hessian.as_deref().map(to_f32);
    for (lin, method) in layer.group_mut(group).into_iter().zip(methods) {
        if let Some(m) = method {
            let h = hessian.as_deref().zip(h32.as_deref());
            quantize_linear(lin, &m, h, opts, packed, reports)?;
        }
    }
    Ok(())
}

fn to_f32(h: &[f64]) -> Vec<f32> {
    h.iter().map(|v| *v as f32).collect()
}

/// Quantizes one linear in place (its weight becomes the dequantized result, which is what
/// later groups and layers are calibrated through) and stores its packed form. `hessian` is
/// the f64 Hessian GPTQ factors and its f32 copy for the output-error figures.
fn quantize_linear(
    lin: &mut layer::HostLinear,
    method: &LinearMethod,
    hessian: Option<(&[f64], &[f32])>,
    opts: &PipelineOptions,
    packed: &mut HashMap<String, PackedLinear>,
    reports: &mut Vec<LinearReport>,
) -> Result<()> {
    let t0 = Instant::now();
    let wm = WeightMatrix::new(&lin.name, &lin.weight, lin.out, lin.inp)?;
    let scheme = method.scheme();
    let (quantized, dequantized, gptq_info) = match method {
        LinearMethod::Rtn(s) => {
            let q = rtn::quantize(&wm, s)?;
            let dq = rtn::dequantize(&q)?;
            (q, dq, None)
        }
        LinearMethod::Gptq(o, _) => {
            let (h, _) = hessian.context("GPTQ without a Hessian")?;
            let r = match &opts.device {
                Some(d) => d.gptq(&wm, h, o)?,
                None => gptq::quantize(&wm, h, o)?,
            };
            let info = (r.loss, r.dampening_used, r.retries, r.dead_columns);
            (r.quantized, r.dequantized, Some(info))
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    let h32 = hessian.map(|(_, h)| h);
    let rel = h32.map(|h| relative_output_error(&lin.weight, &dequantized, h, lin.out, lin.inp));
    let rtn_rel = match (h32, opts.compare_rtn && method.needs_hessian()) {
        (Some(h), true) => {
            let dq = rtn::dequantize(&rtn::quantize(&wm, &scheme)?)?;
            Some(relative_output_error(&lin.weight, &dq, h, lin.out, lin.inp))
        }
        _ => None,
    };
    let p = quantized
        .to_packed()
        .with_context(|| format!("packing {}", lin.name))?;
    packed.insert(lin.name.clone(), p);
    lin.weight = dequantized;
    reports.push(LinearReport {
        name: lin.name.clone(),
        method: method.kind(),
        rel_output_error: rel,
        rtn_rel_output_error: rtn_rel,
        gptq_loss: gptq_info.map(|i| i.0),
        dampening_used: gptq_info.map(|i| i.1),
        retries: gptq_info.map_or(0, |i| i.2),
        dead_columns: gptq_info.map_or(0, |i| i.3),
        seconds,
    });
    Ok(())
}
