//! SmoothQuant on one decoder layer: per-channel activation ranges at the two norm outputs
//! (and, with `smooth_down`, at down_proj's input; every calibration window run through the
//! float layer), the scales of [`crate::smoothquant`] at a fixed `α` or the one a per-layer
//! search picks, folded along [`super::mappings`].

use serde::Serialize;

use super::awq_layer::{block_outputs, group_of, search_windows, sq_diff};
use super::layer::{HostLayer, LayerGeometry};
use super::mappings::{divide, fold, linear, linear_mut, Mapping, MAPPINGS};
use crate::awq::scaled_fake_quantize;
use crate::plan::{AlphaSearch, SmoothPlan};
use crate::smoothquant::{
    fake_quantize_per_token, search_alpha, smoothing_scales, weight_channel_range, ChannelRange,
};

/// What SmoothQuant did to one mapping of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct SmoothReport {
    pub mapping: &'static str,
    /// The strength applied (`None`: the search left the channels alone).
    pub alpha: Option<f32>,
    /// Largest / median activation range before and after smoothing: how much flatter the
    /// channels became for per-token int8.
    pub outlier_ratio_before: f32,
    pub outlier_ratio_after: f32,
    /// With `alpha_search`: the simulated block's output error (sum of squares on the
    /// search tokens) without smoothing and at the chosen `α`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_unsmoothed: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
}

fn outlier_ratio(v: &[f32]) -> f32 {
    let mut s = v.to_vec();
    s.sort_by(f32::total_cmp);
    let med = s[s.len() / 2];
    if med > 0.0 {
        s[s.len() - 1] / med
    } else {
        f32::INFINITY
    }
}

/// The output error of mapping `mi`'s block when its linears are rounded as the later passes
/// will round them after smoothing by `s` (weights `Q(W·diag(s))`, and, for W8A8 linears,
/// inputs `Q(x / s)` per token), against the float block's `reference`.
#[allow(clippy::too_many_arguments)]
fn simulated_loss(
    layer: &HostLayer,
    cand: &mut HostLayer,
    g: &LayerGeometry,
    mi: usize,
    search: &AlphaSearch,
    inputs: &[Vec<f32>],
    reference: &[Vec<f32>],
    s: &[f32],
) -> f64 {
    let m = &MAPPINGS[mi];
    let mut int8_input = None;
    for &r in m.balance {
        let lin = linear(layer, r);
        let (scheme, a8) = search.schemes[&lin.name];
        // The balance linears share this input; one of them at W8A8 rounds it for all.
        int8_input = int8_input.or(a8);
        linear_mut(cand, r).weight =
            scaled_fake_quantize(&lin.weight, lin.inp, group_of(&scheme, lin.inp), s, &scheme);
    }
    let cols = s.len();
    let rounded: Vec<Vec<f32>>;
    let inputs = if let Some(mode) = int8_input {
        rounded = inputs
            .iter()
            .map(|a| {
                let mut x = a.clone();
                x.chunks_exact_mut(cols).for_each(|row| divide(row, s));
                let mut q = fake_quantize_per_token(&x, cols, mode);
                for row in q.chunks_exact_mut(cols) {
                    row.iter_mut().zip(s).for_each(|(v, sv)| *v *= sv);
                }
                q
            })
            .collect();
        &rounded
    } else {
        inputs
    };
    block_outputs(cand, g, mi, inputs)
        .iter()
        .zip(reference)
        .map(|(a, b)| sq_diff(a, b))
        .sum()
}

/// Whether `plan` may rescale every linear of `m`.
fn targeted(layer: &HostLayer, m: &Mapping, plan: &SmoothPlan) -> bool {
    m.balance
        .iter()
        .all(|&r| plan.targets.contains(&linear(layer, r).name))
}

/// Smooths `layer` in place for the windows `x` (the layer's inputs). Returns the reports
/// and the names of the tensors changed.
pub fn smooth_layer(
    layer: &mut HostLayer,
    g: &LayerGeometry,
    x: &[Vec<f32>],
    plan: &SmoothPlan,
    prefix: &str,
) -> (Vec<SmoothReport>, Vec<String>) {
    let search_at = match &plan.search {
        Some(s) => search_windows(x, g.hidden, s.tokens),
        None => Vec::new(),
    };
    let mut attn = ChannelRange::new(g.hidden);
    let mut mlp = ChannelRange::new(g.hidden);
    let mut down = ChannelRange::new(g.ffn);
    // The search windows' inputs of mappings 0 (q/k/v), 2 (gate/up) and 3 (down).
    let mut kept: [Vec<Vec<f32>>; 4] = Default::default();
    for (wi, xw) in x.iter().enumerate() {
        let xn = layer.attn_norm(g, xw);
        attn.add(&xn);
        let h = layer.attn_residual(xw, &layer.attention(g, &xn));
        let hn = layer.mlp_norm(g, &h);
        let act = plan.alpha_down.is_some().then(|| layer.mlp_act(&hn));
        if let Some(a) = &act {
            down.add(a);
        }
        mlp.add(&hn);
        if search_at.contains(&wi) {
            kept[0].push(xn);
            kept[2].push(hn);
            if let Some(a) = act {
                kept[3].push(a);
            }
        }
    }
    // The norm mappings (SmoothQuant's), and up → down when asked.
    let mut mappings = vec![
        (0, attn.range(), plan.alpha_attention),
        (2, mlp.range(), plan.alpha_mlp),
    ];
    if let Some(a) = plan.alpha_down {
        mappings.push((3, down.range(), a));
    }
    let mut reports = Vec::new();
    let mut changed = Vec::new();
    let mut cand = plan.search.as_ref().map(|_| layer.clone());
    for (mi, range, alpha) in mappings {
        let m = &MAPPINGS[mi];
        if !targeted(layer, m, plan) {
            continue;
        }
        let cols = linear(layer, m.balance[0]).inp;
        let weights: Vec<&[f32]> = m
            .balance
            .iter()
            .map(|&r| linear(layer, r).weight.as_slice())
            .collect();
        let w_range = weight_channel_range(&weights, cols);
        let (alpha, s, losses) = match (&plan.search, cand.as_mut()) {
            (Some(search), Some(cand)) => {
                let reference = block_outputs(layer, g, mi, &kept[mi]);
                let c = search_alpha(&range, &w_range, search.grid, |s| {
                    simulated_loss(layer, cand, g, mi, search, &kept[mi], &reference, s)
                });
                (c.alpha, c.scales, Some((c.loss_unsmoothed, c.loss)))
            }
            _ => (Some(alpha), smoothing_scales(&range, &w_range, alpha), None),
        };
        let after: Vec<f32> = range.iter().zip(&s).map(|(a, s)| a / s).collect();
        reports.push(SmoothReport {
            mapping: m.name,
            alpha,
            outlier_ratio_before: outlier_ratio(&range),
            outlier_ratio_after: outlier_ratio(&after),
            loss_unsmoothed: losses.map(|l| l.0),
            loss: losses.map(|l| l.1),
        });
        if alpha.is_some() {
            changed.extend(fold(layer, m, &s, prefix));
            if let Some(cand) = cand.as_mut() {
                // Later mappings' blocks see the smoothed weights, as the quantizer will.
                *cand = layer.clone();
            }
        }
    }
    (reports, changed)
}
