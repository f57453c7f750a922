//! AWQ on one decoder layer: the Llama/Qwen2 mappings (which linears share an input, what
//! produces that input, which block consumes them) as data, the statistics and block losses
//! from the layer's calibration inputs, and the fold of the chosen scales into the layer.
//! The math lives in [`crate::awq`]; this file only feeds it.

use anyhow::Result;
use lmq_runtime::kernels::dense_f32::gram_acc_f32;
use serde::Serialize;

use super::layer::{HostLayer, LayerGeometry};
use super::mappings::{divide, fold, linear, linear_mut, unfoldable, Role, MAPPINGS, NO_CLIP};
use crate::awq::{
    clip_search, scaled_fake_quantize, search_scales, weight_channel_mean, ChannelAbsMean,
};
use crate::plan::AwqPlan;
use crate::scheme::QuantScheme;

/// One mapping's search result.
#[derive(Debug, Clone, Serialize)]
pub struct MappingReport {
    pub mapping: &'static str,
    /// The exponent chosen (absent when no scaling beat plain rounding).
    pub ratio: Option<f32>,
    /// Block output error (sum of squares on the search tokens) with plain rounding.
    pub loss_rtn: f64,
    /// The same at the chosen scales.
    pub loss_awq: f64,
}

/// One linear's clipping result (errors as `tr(δ·H·δᵀ)` per group, summed).
#[derive(Debug, Clone, Serialize)]
pub struct ClipLinearReport {
    pub name: String,
    pub loss_before: f64,
    pub loss_after: f64,
    pub clipped_groups: usize,
}

/// What AWQ did to one layer.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AwqLayerReport {
    pub mappings: Vec<MappingReport>,
    pub clips: Vec<ClipLinearReport>,
    /// Mappings left out, and why (shapes that do not allow a fold, linears not targeted).
    pub skipped: Vec<String>,
}

/// Calibration activations at each mapping's input: channel means over every window and
/// full copies for the search windows.
struct Inputs {
    mean: [ChannelAbsMean; 4],
    search: [Vec<Vec<f32>>; 4],
}

/// Windows whose tokens the searches use: enough whole windows for `tokens`, spread evenly.
pub(super) fn search_windows(x: &[Vec<f32>], hidden: usize, tokens: usize) -> Vec<usize> {
    let n = x.len();
    let mut picked = Vec::new();
    let mut have = 0;
    let per = x.first().map_or(1, |w| (w.len() / hidden).max(1));
    let k = tokens.div_ceil(per).clamp(1, n.max(1));
    for i in 0..k {
        let w = i * n / k;
        if picked.last() != Some(&w) {
            picked.push(w);
            have += x[w].len() / hidden;
        }
        if have >= tokens {
            break;
        }
    }
    picked
}

/// The rows of a window `[t, n]` after its first `sink` tokens.
fn after_sink(a: &[f32], n: usize, sink: usize) -> &[f32] {
    &a[(sink * n).min(a.len())..]
}

/// Runs every window through the float layer once, collecting each mapping input's channel
/// means (without each window's first `sink` tokens), and keeps the search windows' inputs.
fn collect_inputs(
    layer: &HostLayer,
    g: &LayerGeometry,
    x: &[Vec<f32>],
    search: &[usize],
    sink: usize,
) -> Inputs {
    let mut inputs = Inputs {
        mean: [
            ChannelAbsMean::new(g.hidden),
            ChannelAbsMean::new(layer.o.inp),
            ChannelAbsMean::new(g.hidden),
            ChannelAbsMean::new(g.ffn),
        ],
        search: Default::default(),
    };
    for (wi, xw) in x.iter().enumerate() {
        let xn = layer.attn_norm(g, xw);
        let ctx = layer.attention(g, &xn);
        let h = layer.attn_residual(xw, &ctx);
        let hn = layer.mlp_norm(g, &h);
        let act = layer.mlp_act(&hn);
        let keep = search.contains(&wi);
        for (k, a) in [xn, ctx, hn, act].into_iter().enumerate() {
            inputs.mean[k].add(after_sink(&a, inputs.mean[k].channels(), sink));
            if keep {
                inputs.search[k].push(a);
            }
        }
    }
    inputs
}

pub(super) fn sq_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (*x - *y) as f64;
            d * d
        })
        .sum()
}

/// Output of the block consuming mapping `m` on the search inputs, for layer weights `l`:
/// attention (through o_proj) for q/k/v, o_proj for v→o, the MLP (through down_proj) for
/// gate/up, down_proj for up→down.
pub(super) fn block_outputs(
    l: &HostLayer,
    g: &LayerGeometry,
    m: usize,
    inputs: &[Vec<f32>],
) -> Vec<Vec<f32>> {
    inputs
        .iter()
        .map(|a| match m {
            0 => {
                let ctx = l.attention(g, a);
                l.o.apply(&ctx, ctx.len() / l.o.inp)
            }
            1 => l.o.apply(a, a.len() / l.o.inp),
            2 => {
                let act = l.mlp_act(a);
                l.down.apply(&act, act.len() / l.down.inp)
            }
            _ => l.down.apply(a, a.len() / l.down.inp),
        })
        .collect()
}

pub(super) fn group_of(s: &QuantScheme, cols: usize) -> usize {
    s.group_size.unwrap_or(cols)
}

/// Applies AWQ to `layer` in place: for each mapping whose linears the plan targets, the
/// scale search, then the fold (`1/s` into the producer, `s` into the linears); then the
/// clipping search on every targeted linear but q/k. Returns the report and the names of
/// every tensor changed (norm weights, linear weights, biases), which the caller writes
/// from the layer unless it quantizes them.
pub fn awq_layer(
    layer: &mut HostLayer,
    g: &LayerGeometry,
    x: &[Vec<f32>],
    plan: &AwqPlan,
    layer_prefix: &str,
) -> Result<(AwqLayerReport, Vec<String>)> {
    let opts = plan.options;
    let scheme_of = |l: &HostLayer, r: Role| plan.schemes.get(&linear(l, r).name).copied();
    let mut report = AwqLayerReport::default();
    let mut changed = Vec::new();
    let search = search_windows(x, g.hidden, opts.search_tokens);
    let sink = opts.sink_tokens;
    let inputs = collect_inputs(layer, g, x, &search, sink);
    let mut applied: [Option<Vec<f32>>; 4] = Default::default();

    for (mi, m) in MAPPINGS.iter().enumerate() {
        if m.balance.iter().any(|&r| scheme_of(layer, r).is_none()) {
            report
                .skipped
                .push(format!("{}: not every linear is targeted", m.name));
            continue;
        }
        if let Some(why) = unfoldable(layer, m) {
            report.skipped.push(why);
            continue;
        }
        let cols = linear(layer, m.balance[0]).inp;
        let first_scheme = scheme_of(layer, m.balance[0]).expect("checked above");
        let weights: Vec<&[f32]> = m
            .balance
            .iter()
            .map(|&r| linear(layer, r).weight.as_slice())
            .collect();
        let w_mean = opts
            .duo_scaling
            .then(|| weight_channel_mean(&weights, cols, group_of(&first_scheme, cols)));
        let x_mean = inputs.mean[mi].mean();
        let reference = block_outputs(layer, g, mi, &inputs.search[mi]);
        let mut cand = layer.clone();
        let result = search_scales(&x_mean, w_mean.as_deref(), opts.grid, |s| {
            for &r in m.balance {
                let sc = scheme_of(layer, r).expect("checked above");
                let lin = linear(layer, r);
                linear_mut(&mut cand, r).weight =
                    scaled_fake_quantize(&lin.weight, lin.inp, group_of(&sc, lin.inp), s, &sc);
            }
            block_outputs(&cand, g, mi, &inputs.search[mi])
                .iter()
                .zip(&reference)
                .map(|(a, b)| sq_diff(after_sink(a, g.hidden, sink), after_sink(b, g.hidden, sink)))
                .sum()
        });
        drop(cand);
        report.mappings.push(MappingReport {
            mapping: m.name,
            ratio: (!result.ratio.is_nan()).then_some(result.ratio),
            loss_rtn: result.loss_unscaled,
            loss_awq: result.loss,
        });
        if result.ratio.is_nan() {
            continue;
        }
        changed.extend(fold(layer, m, &result.scales, layer_prefix));
        applied[mi] = Some(result.scales);
    }

    if opts.clip {
        // Each linear's input on the search windows, as the scaled layer now sees it.
        let layer_ref = &*layer;
        let targets: Vec<(Role, usize)> = [
            (Role::V, 0),
            (Role::O, 1),
            (Role::Gate, 2),
            (Role::Up, 2),
            (Role::Down, 3),
        ]
        .into_iter()
        .filter(|(r, _)| !NO_CLIP.contains(r) && scheme_of(layer_ref, *r).is_some())
        .collect();
        let mut grams: [Option<Vec<f32>>; 4] = Default::default();
        for &(r, k) in &targets {
            if grams[k].is_none() {
                let n = linear(layer, r).inp;
                grams[k] = Some(input_gram(
                    &inputs.search[k],
                    n,
                    applied[k].as_deref(),
                    sink,
                ));
            }
        }
        for (r, k) in targets {
            let sc = scheme_of(layer, r).expect("filtered above");
            let h = grams[k].as_deref().expect("computed above");
            let lin = linear_mut(layer, r);
            changed.push(lin.name.clone());
            let c = clip_search(
                &mut lin.weight,
                lin.inp,
                group_of(&sc, lin.inp),
                h,
                &sc,
                opts.clip_grid,
                opts.max_shrink,
            );
            report.clips.push(ClipLinearReport {
                name: lin.name.clone(),
                loss_before: c.loss_before,
                loss_after: c.loss_after,
                clipped_groups: c.clipped_groups,
            });
        }
    }
    Ok((report, changed))
}

/// Gram matrix `Σ aᵀa` of the search windows' inputs `a` `[t, n]` after their first `sink`
/// tokens, each divided by the scales folded into its producer (`None`: not scaled): exactly
/// the inputs the scaled layer computes, since every fold is linear in the channel.
fn input_gram(inputs: &[Vec<f32>], n: usize, scales: Option<&[f32]>, sink: usize) -> Vec<f32> {
    let mut h = vec![0.0f32; n * n];
    for a in inputs {
        let mut a = after_sink(a, n, sink).to_vec();
        if let Some(s) = scales {
            for row in a.chunks_exact_mut(n) {
                divide(row, s);
            }
        }
        gram_acc_f32(&a, a.len() / n, n, &mut h);
    }
    h
}
