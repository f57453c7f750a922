//! SmoothQuant on one decoder layer: per-channel activation ranges at the two norm outputs
//! (and, with `smooth_down`, at down_proj's input; every calibration window run through the
//! float layer), the scales of [`crate::smoothquant`], folded along [`super::mappings`].

use serde::Serialize;

use super::layer::{HostLayer, LayerGeometry};
use super::mappings::{fold, linear, MAPPINGS};
use crate::plan::SmoothPlan;
use crate::smoothquant::{smoothing_scales, weight_channel_range, ChannelRange};

/// What SmoothQuant did to one mapping of one layer.
#[derive(Debug, Clone, Serialize)]
pub struct SmoothReport {
    pub mapping: &'static str,
    pub alpha: f32,
    /// Largest / median activation range before and after smoothing: how much flatter the
    /// channels became for per-token int8.
    pub outlier_ratio_before: f32,
    pub outlier_ratio_after: f32,
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

/// Smooths `layer` in place for the windows `x` (the layer's inputs). Returns the reports
/// and the names of the tensors changed.
pub fn smooth_layer(
    layer: &mut HostLayer,
    g: &LayerGeometry,
    x: &[Vec<f32>],
    plan: &SmoothPlan,
    prefix: &str,
) -> (Vec<SmoothReport>, Vec<String>) {
    let mut attn = ChannelRange::new(g.hidden);
    let mut mlp = ChannelRange::new(g.hidden);
    let mut down = ChannelRange::new(g.ffn);
    for xw in x {
        let xn = layer.attn_norm(g, xw);
        attn.add(&xn);
        let h = layer.attn_residual(xw, &layer.attention(g, &xn));
        let hn = layer.mlp_norm(g, &h);
        if plan.alpha_down.is_some() {
            down.add(&layer.mlp_act(&hn));
        }
        mlp.add(&hn);
    }
    // The norm mappings (SmoothQuant's), and up → down when asked.
    let mut mappings = vec![
        (&MAPPINGS[0], attn.range(), plan.alpha_attention),
        (&MAPPINGS[2], mlp.range(), plan.alpha_mlp),
    ];
    if let Some(a) = plan.alpha_down {
        mappings.push((&MAPPINGS[3], down.range(), a));
    }
    let mut reports = Vec::new();
    let mut changed = Vec::new();
    for (m, range, alpha) in mappings {
        if m.balance
            .iter()
            .any(|&r| !plan.targets.contains(&linear(layer, r).name))
        {
            continue;
        }
        let cols = linear(layer, m.balance[0]).inp;
        let weights: Vec<&[f32]> = m
            .balance
            .iter()
            .map(|&r| linear(layer, r).weight.as_slice())
            .collect();
        let s = smoothing_scales(&range, &weight_channel_range(&weights, cols), alpha);
        let after: Vec<f32> = range.iter().zip(&s).map(|(a, s)| a / s).collect();
        reports.push(SmoothReport {
            mapping: m.name,
            alpha,
            outlier_ratio_before: outlier_ratio(&range),
            outlier_ratio_after: outlier_ratio(&after),
        });
        changed.extend(fold(layer, m, &s, prefix));
    }
    (reports, changed)
}
