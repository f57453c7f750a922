//! AWQ (activation-aware weight quantization, Lin et al. 2023) as pure functions over plain
//! arrays; the pipeline (`pipeline::awq_layer`) supplies activations and the loss of the
//! block that consumes the scaled linears.
//!
//! For linears that read the same input `x` (a "mapping": q/k/v after the attention norm,
//! gate/up after the MLP norm, down after up), AWQ multiplies each input channel `j` of the
//! weights by `s_j` and divides the producer of `x` (the norm's weight, or the previous
//! linear's row `j`) by `s_j`, so the float model computes exactly the same function while
//! salient channels (large `|x_j|`) get a finer quantization grid. `s` is searched on a grid
//! of exponents `r ∈ {0, 1/n, …, (n−1)/n}`:
//! `s = x_mean^r / (w_mean^(1−r) + 1e-4)` ("duo scaling", llm-compressor's default) or
//! `s = x_mean^r`, normalized by `sqrt(max·min)`, keeping the `s` whose fake-quantized block
//! output is closest to the float one. Then a clipping search shrinks each (row, group)'s
//! range where that lowers the linear's output error (AutoAWQ's `auto_clip`).

use rayon::prelude::*;

use crate::scheme::{compute_qparams, dequantize_value, min_max, quantize_value, QuantScheme};

/// Default number of exponents tried in the scale search.
pub const DEFAULT_GRID: usize = 20;
/// Default number of shrink steps of the clipping grid (step 1/20 of the range).
pub const DEFAULT_CLIP_GRID: usize = 20;
/// Default largest fraction of a group's range that clipping may remove.
pub const DEFAULT_MAX_SHRINK: f32 = 0.5;
/// Default number of calibration tokens the searches compare block outputs on (whole
/// windows spread evenly over the set; the channel means use every token but the
/// `sink_tokens`).
pub const DEFAULT_SEARCH_TOKENS: usize = 4096;

/// AWQ's knobs, as the recipe gives them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AwqOptions {
    /// Exponents tried in the scale search.
    pub grid: usize,
    /// Divide by `w_mean^(1−r)` as well (llm-compressor's `duo_scaling`).
    pub duo_scaling: bool,
    /// Run the clipping search after scaling.
    pub clip: bool,
    /// Steps of the clipping grid.
    pub clip_grid: usize,
    /// Largest fraction of a group's range that clipping may remove.
    pub max_shrink: f32,
    /// Calibration tokens over which block outputs are compared (whole windows spread evenly
    /// over the set): each grid point runs the block once on them, so they bound the
    /// search's cost.
    pub search_tokens: usize,
    /// Tokens at the start of every calibration window left out of the channel means, the
    /// block losses and the clipping Gram matrices (they still run, as context): the
    /// attention sink, where Qwen2.5 writes activations hundreds of times the others',
    /// which otherwise decide both the means and the squared errors.
    pub sink_tokens: usize,
    /// Pass each layer's float outputs (scaled, before its weights are quantized) on as the
    /// next layer's calibration inputs, as AutoAWQ and llm-compressor's AWQModifier do
    /// (which run the whole calibration with quantization off), instead of its quantized
    /// outputs.
    pub float_inputs: bool,
}

impl Default for AwqOptions {
    fn default() -> Self {
        Self {
            grid: DEFAULT_GRID,
            duo_scaling: true,
            clip: true,
            clip_grid: DEFAULT_CLIP_GRID,
            max_shrink: DEFAULT_MAX_SHRINK,
            search_tokens: DEFAULT_SEARCH_TOKENS,
            sink_tokens: 0,
            float_inputs: false,
        }
    }
}

/// Running mean of `|x_j|` per input channel, accumulated in f64 over any number of
/// `[tokens, n]` batches.
#[derive(Debug, Clone)]
pub struct ChannelAbsMean {
    sum: Vec<f64>,
    tokens: usize,
}

impl ChannelAbsMean {
    /// An empty accumulator for `n` channels.
    pub fn new(n: usize) -> Self {
        Self {
            sum: vec![0.0; n],
            tokens: 0,
        }
    }

    /// Channels accumulated.
    pub fn channels(&self) -> usize {
        self.sum.len()
    }

    /// Adds the rows of `x` (`[t, n]`).
    pub fn add(&mut self, x: &[f32]) {
        let n = self.sum.len();
        assert_eq!(x.len() % n, 0, "input is not a whole number of rows");
        for row in x.chunks_exact(n) {
            for (s, v) in self.sum.iter_mut().zip(row) {
                *s += v.abs() as f64;
            }
        }
        self.tokens += x.len() / n;
    }

    /// The mean over every row added (zeros when none were).
    pub fn mean(&self) -> Vec<f32> {
        let t = self.tokens.max(1) as f64;
        self.sum.iter().map(|s| (s / t) as f32).collect()
    }
}

/// Per input channel, the mean over all rows of the balance linears of `|w|` relative to
/// its quantization group's largest `|w|`: how large a channel's weights are where the grid
/// is drawn. `weights` are `[rows_i, cols]` matrices sharing `cols`; `group` is the group
/// size (`cols` for per-channel schemes).
pub fn weight_channel_mean(weights: &[&[f32]], cols: usize, group: usize) -> Vec<f32> {
    assert!(
        group > 0 && cols.is_multiple_of(group),
        "group must divide cols"
    );
    let mut sum = vec![0.0f64; cols];
    let mut rows = 0usize;
    for w in weights {
        assert_eq!(w.len() % cols, 0, "weight is not [rows, cols]");
        for row in w.chunks_exact(cols) {
            for (sg, wg) in sum.chunks_exact_mut(group).zip(row.chunks_exact(group)) {
                let amax = wg.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1e-6;
                for (s, v) in sg.iter_mut().zip(wg) {
                    *s += (v.abs() / amax) as f64;
                }
            }
            rows += 1;
        }
    }
    sum.iter()
        .map(|s| (s / rows.max(1) as f64) as f32)
        .collect()
}

/// The candidate scales for exponent `ratio`, normalized so `max·min = 1`.
pub fn scales_for_ratio(x_mean: &[f32], w_mean: Option<&[f32]>, ratio: f32) -> Vec<f32> {
    let mut s: Vec<f32> = match w_mean {
        Some(wm) => x_mean
            .iter()
            .zip(wm)
            .map(|(x, w)| (x.powf(ratio) / (w.powf(1.0 - ratio) + 1e-4)).max(1e-4))
            .collect(),
        None => x_mean.iter().map(|x| x.powf(ratio).max(1e-4)).collect(),
    };
    let (lo, hi) = min_max(&s);
    let norm = (hi * lo).sqrt();
    if norm.is_finite() && norm > 0.0 {
        s.iter_mut().for_each(|v| *v /= norm);
    }
    s
}

/// Round-to-nearest of every contiguous group of `group` values of every row (the same
/// min-max grid as `rtn::quantize`), dequantized: what a quantizer makes of `w`.
pub fn fake_quantize(w: &[f32], cols: usize, group: usize, scheme: &QuantScheme) -> Vec<f32> {
    let mut out = w.to_vec();
    out.par_chunks_mut(cols).for_each(|row| {
        for g in row.chunks_mut(group) {
            fake_quantize_group(g, scheme);
        }
    });
    out
}

/// One group quantized and dequantized in place.
fn fake_quantize_group(g: &mut [f32], scheme: &QuantScheme) {
    let (lo, hi) = min_max(g);
    let (scale, zero) = compute_qparams(lo, hi, scheme);
    for v in g.iter_mut() {
        *v = dequantize_value(quantize_value(*v, scale, zero, scheme), scale, zero);
    }
}

/// The weight an unscaled input sees after scaling by `s` and quantizing: `Q(W·diag(s))·
/// diag(1/s)`. The scale search compares block outputs computed with these.
pub fn scaled_fake_quantize(
    w: &[f32],
    cols: usize,
    group: usize,
    s: &[f32],
    scheme: &QuantScheme,
) -> Vec<f32> {
    assert_eq!(s.len(), cols);
    let scaled = scale_columns(w, cols, s);
    let mut q = fake_quantize(&scaled, cols, group, scheme);
    q.par_chunks_mut(cols).for_each(|row| {
        for (v, sv) in row.iter_mut().zip(s) {
            *v /= sv;
        }
    });
    q
}

/// `W·diag(s)`: each input column multiplied by its scale (the balance linears' side of the
/// fold).
pub fn scale_columns(w: &[f32], cols: usize, s: &[f32]) -> Vec<f32> {
    let mut out = w.to_vec();
    out.par_chunks_mut(cols).for_each(|row| {
        for (v, sv) in row.iter_mut().zip(s) {
            *v *= sv;
        }
    });
    out
}

/// The outcome of a scale search.
#[derive(Debug, Clone)]
pub struct ScaleSearch {
    /// The exponent chosen.
    pub ratio: f32,
    /// Its scales.
    pub scales: Vec<f32>,
    /// Block loss with no scaling (plain round-to-nearest).
    pub loss_unscaled: f64,
    /// Block loss at the chosen scales (≤ `loss_unscaled` unless every scaling was worse, in
    /// which case the scales are all 1).
    pub loss: f64,
}

/// Tries every exponent on the grid and keeps the scales whose `loss` (block output error
/// with the balance linears fake-quantized at those scales) is lowest; scales of 1 (no
/// smoothing) compete too, so AWQ never does worse than RTN on the search tokens.
pub fn search_scales(
    x_mean: &[f32],
    w_mean: Option<&[f32]>,
    grid: usize,
    mut loss: impl FnMut(&[f32]) -> f64,
) -> ScaleSearch {
    let ones = vec![1.0f32; x_mean.len()];
    let loss_unscaled = loss(&ones);
    let mut best = ScaleSearch {
        ratio: f32::NAN,
        scales: ones,
        loss_unscaled,
        loss: loss_unscaled,
    };
    for i in 0..grid.max(1) {
        let ratio = i as f32 / grid.max(1) as f32;
        let s = scales_for_ratio(x_mean, w_mean, ratio);
        let l = loss(&s);
        if l < best.loss {
            best = ScaleSearch {
                ratio,
                scales: s,
                loss_unscaled,
                loss: l,
            };
        }
    }
    best
}

/// What clipping did to one linear.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipReport {
    /// Σ over (row, group) of the output error before clipping.
    pub loss_before: f64,
    /// The same after.
    pub loss_after: f64,
    /// Groups whose range was shrunk.
    pub clipped_groups: usize,
}

/// AutoAWQ's clipping search with the exact output error: for each (row, group) of `w`
/// (`[rows, cols]`), tries `max = amax·(1 − k/clip_grid)` for `k < max_shrink·clip_grid`,
/// clamps the group to `[−max, max]`, fake-quantizes it, and keeps the clamp with the lowest
/// `δᵀ·H_gg·δ` (δ the group's weight error, `H_gg` the group's diagonal block of the input
/// Gram matrix `h`, `[cols, cols]`). `w` is clamped in place.
pub fn clip_search(
    w: &mut [f32],
    cols: usize,
    group: usize,
    h: &[f32],
    scheme: &QuantScheme,
    clip_grid: usize,
    max_shrink: f32,
) -> ClipReport {
    assert_eq!(h.len(), cols * cols);
    assert!(cols.is_multiple_of(group));
    let steps = ((max_shrink * clip_grid as f32) as usize).max(1);
    let per_row: Vec<(f64, f64, usize)> = w
        .par_chunks_mut(cols)
        .map(|row| {
            let (mut before, mut after, mut clipped) = (0.0f64, 0.0f64, 0usize);
            let mut trial = vec![0.0f32; group];
            let mut best_w = vec![0.0f32; group];
            for (gi, wg) in row.chunks_mut(group).enumerate() {
                let c0 = gi * group;
                let err = |q: &[f32], orig: &[f32]| -> f64 {
                    let mut e = 0.0f64;
                    for a in 0..group {
                        let da = (orig[a] - q[a]) as f64;
                        if da == 0.0 {
                            continue;
                        }
                        let hrow = &h[(c0 + a) * cols + c0..][..group];
                        let mut acc = 0.0f64;
                        for (b, hv) in hrow.iter().enumerate() {
                            acc += *hv as f64 * (orig[b] - q[b]) as f64;
                        }
                        e += da * acc;
                    }
                    e
                };
                let amax = wg.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let mut best = f64::INFINITY;
                let mut best_k = 0;
                for k in 0..steps {
                    let max = amax * (1.0 - k as f32 / clip_grid as f32);
                    for (t, v) in trial.iter_mut().zip(wg.iter()) {
                        *t = v.clamp(-max, max);
                    }
                    fake_quantize_group(&mut trial, scheme);
                    let e = err(&trial, wg);
                    if k == 0 {
                        before += e;
                    }
                    if e < best {
                        best = e;
                        best_k = k;
                        best_w.copy_from_slice(&trial);
                    }
                }
                after += best;
                if best_k > 0 {
                    clipped += 1;
                    let max = amax * (1.0 - best_k as f32 / clip_grid as f32);
                    wg.iter_mut().for_each(|v| *v = v.clamp(-max, max));
                }
            }
            (before, after, clipped)
        })
        .collect();
    ClipReport {
        loss_before: per_row.iter().map(|r| r.0).sum(),
        loss_after: per_row.iter().map(|r| r.1).sum(),
        clipped_groups: per_row.iter().map(|r| r.2).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::test_support::TestRng;
    use crate::rtn;
    use crate::scheme::WeightMatrix;

    fn randn(n: usize, seed: u64, sd: f64) -> Vec<f32> {
        let mut r = TestRng::new(seed);
        (0..n).map(|_| (r.normal() * sd) as f32).collect()
    }

    /// Gram matrix `XᵀX` of `x` `[t, n]` in f64, rounded to f32.
    fn gram(x: &[f32], n: usize) -> Vec<f32> {
        let mut h = vec![0.0f64; n * n];
        for row in x.chunks_exact(n) {
            for a in 0..n {
                for b in 0..n {
                    h[a * n + b] += row[a] as f64 * row[b] as f64;
                }
            }
        }
        h.iter().map(|v| *v as f32).collect()
    }

    /// ‖(W − Q)·Xᵀ‖², directly.
    fn output_error(w: &[f32], q: &[f32], x: &[f32], n: usize) -> f64 {
        let mut e = 0.0f64;
        for xr in x.chunks_exact(n) {
            for (wr, qr) in w.chunks_exact(n).zip(q.chunks_exact(n)) {
                let d: f64 = wr
                    .iter()
                    .zip(qr)
                    .zip(xr)
                    .map(|((a, b), v)| (*a as f64 - *b as f64) * *v as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    const W4G16_ASYM: QuantScheme = QuantScheme {
        bits: 4,
        group_size: Some(16),
        symmetric: false,
    };

    #[test]
    fn fake_quantize_equals_rtn_round_trip() {
        let (rows, cols) = (8, 64);
        let w = randn(rows * cols, 1, 0.05);
        let fq = fake_quantize(&w, cols, 16, &W4G16_ASYM);
        let q = rtn::quantize(
            &WeightMatrix::new("w", &w, rows, cols).unwrap(),
            &W4G16_ASYM,
        )
        .unwrap();
        assert_eq!(fq, rtn::dequantize(&q).unwrap());
    }

    #[test]
    fn unit_scales_give_plain_rtn_and_scaling_is_undone_for_the_input() {
        let (rows, cols) = (4, 32);
        let w = randn(rows * cols, 2, 0.05);
        let ones = vec![1.0; cols];
        assert_eq!(
            scaled_fake_quantize(&w, cols, 16, &ones, &W4G16_ASYM),
            fake_quantize(&w, cols, 16, &W4G16_ASYM)
        );
        // At 8 bits the effective weight is the original one to within the grid step.
        let s: Vec<f32> = (0..cols).map(|j| 0.5 + j as f32 / cols as f32).collect();
        let w8 = QuantScheme {
            bits: 8,
            group_size: None,
            symmetric: true,
        };
        let eff = scaled_fake_quantize(&w, cols, cols, &s, &w8);
        for (row_w, row_e) in w.chunks(cols).zip(eff.chunks(cols)) {
            let amax = row_w
                .iter()
                .zip(&s)
                .fold(0.0f32, |m, (v, sv)| m.max((v * sv).abs()));
            for ((a, b), sv) in row_w.iter().zip(row_e).zip(&s) {
                assert!((a - b).abs() <= amax / 127.0 / sv * 0.51, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn scales_are_normalized_and_ratio_zero_without_duo_is_identity() {
        let x = [0.1f32, 1.0, 10.0, 3.0];
        let s = scales_for_ratio(&x, None, 0.0);
        assert!(s.iter().all(|v| (*v - 1.0).abs() < 1e-6));
        let s = scales_for_ratio(&x, Some(&[0.5, 0.5, 0.5, 0.5]), 0.5);
        let (lo, hi) = min_max(&s);
        assert!((lo * hi - 1.0).abs() < 1e-5);
        // Larger activations get larger scales.
        assert!(s[2] > s[3] && s[3] > s[1] && s[1] > s[0]);
    }

    #[test]
    fn weight_channel_mean_is_relative_to_each_groups_max() {
        // One row, two groups of two: |w| / amax per group.
        let w = [1.0f32, -2.0, 0.5, 0.25];
        let m = weight_channel_mean(&[&w], 4, 2);
        let want = [0.5, 1.0, 1.0, 0.5];
        for (a, b) in m.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{m:?}");
        }
    }

    /// Inputs with a few salient channels (×20), the case AWQ exists for.
    fn salient_inputs(t: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut x = randn(t * n, seed, 1.0);
        for row in x.chunks_exact_mut(n) {
            for j in (0..n).step_by(13) {
                row[j] *= 20.0;
            }
        }
        x
    }

    #[test]
    fn scale_search_lowers_the_output_error_below_rtn_on_salient_channels() {
        let (rows, cols, t) = (32, 64, 256);
        let w = randn(rows * cols, 3, 0.05);
        let x = salient_inputs(t, cols, 4);
        let mut xm = ChannelAbsMean::new(cols);
        xm.add(&x);
        let wm = weight_channel_mean(&[&w], cols, 16);
        let r = search_scales(&xm.mean(), Some(&wm), DEFAULT_GRID, |s| {
            output_error(
                &w,
                &scaled_fake_quantize(&w, cols, 16, s, &W4G16_ASYM),
                &x,
                cols,
            )
        });
        let rtn_err = output_error(&w, &fake_quantize(&w, cols, 16, &W4G16_ASYM), &x, cols);
        assert!((r.loss_unscaled - rtn_err).abs() <= 1e-9 * rtn_err);
        assert!(r.ratio > 0.0, "a scaling should win, got {r:?}");
        assert!(r.loss < 0.8 * rtn_err, "AWQ {} vs RTN {rtn_err}", r.loss);
    }

    #[test]
    fn clip_search_error_is_the_direct_output_error_and_never_grows() {
        let (rows, cols, t) = (16, 64, 300);
        // Heavy-tailed weights: a clipped range pays off.
        let mut w = randn(rows * cols, 5, 0.05);
        for (i, v) in w.iter_mut().enumerate() {
            if i % 37 == 0 {
                *v *= 6.0;
            }
        }
        let x = randn(t * cols, 6, 1.0);
        let h = gram(&x, cols);
        let orig = w.clone();
        let rep = clip_search(&mut w, cols, 16, &h, &W4G16_ASYM, 20, 0.5);
        // The before figure is RTN's output error; H is a Gram matrix, so errors of
        // different groups of one row add up only through off-diagonal blocks: compare on a
        // block-diagonal basis by quantizing one group at a time.
        let before_direct: f64 = (0..cols / 16)
            .map(|g| {
                let mut q = orig.clone();
                for row in q.chunks_mut(cols) {
                    fake_quantize_group(&mut row[g * 16..(g + 1) * 16], &W4G16_ASYM);
                }
                output_error(&orig, &q, &x, cols)
            })
            .sum();
        assert!(
            (rep.loss_before - before_direct).abs() <= 1e-4 * before_direct,
            "{} vs {before_direct}",
            rep.loss_before
        );
        assert!(rep.loss_after <= rep.loss_before);
        assert!(rep.clipped_groups > 0, "{rep:?}");
        // Clamping only shrinks magnitudes.
        assert!(w.iter().zip(&orig).all(|(a, b)| a.abs() <= b.abs()));
        // And the output error of the clamped-then-quantized weight beats plain RTN's.
        let q_clip = fake_quantize(&w, cols, 16, &W4G16_ASYM);
        let q_rtn = fake_quantize(&orig, cols, 16, &W4G16_ASYM);
        assert!(output_error(&orig, &q_clip, &x, cols) < output_error(&orig, &q_rtn, &x, cols));
    }
}
